//! The providers built into this binary, looked up by the name an Envfile uses.
//!
//! The core never matches on a provider's name: it asks this registry for "the provider
//! called X" and gets an `Arc<dyn Provider>`. Connections are made lazily, once per process,
//! so a command that needs only Docker never touches libvirt.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use envrig_provider_api::{Capabilities, Provider, ProviderError};
use tokio::sync::OnceCell;

type Connect =
    fn() -> Pin<Box<dyn Future<Output = Result<Arc<dyn Provider>, ProviderError>> + Send>>;

struct Entry {
    name: &'static str,
    capabilities: Capabilities,
    connect: Connect,
    cell: OnceCell<Arc<dyn Provider>>,
}

/// The registry of built-in providers.
pub struct Registry {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| e.name))
            .finish()
    }
}

impl Registry {
    /// Every provider this build has.
    pub fn builtin() -> Registry {
        Registry {
            entries: vec![
                Entry {
                    name: envrig_provider_docker::PROVIDER_NAME,
                    capabilities: envrig_provider_docker::CAPABILITIES,
                    connect: || {
                        Box::pin(async {
                            let p = envrig_provider_docker::DockerProvider::connect().await?;
                            Ok(Arc::new(p) as Arc<dyn Provider>)
                        })
                    },
                    cell: OnceCell::new(),
                },
                Entry {
                    name: envrig_provider_libvirt::PROVIDER_NAME,
                    capabilities: envrig_provider_libvirt::CAPABILITIES,
                    connect: || {
                        Box::pin(async {
                            let p = envrig_provider_libvirt::LibvirtProvider::connect().await?;
                            Ok(Arc::new(p) as Arc<dyn Provider>)
                        })
                    },
                    cell: OnceCell::new(),
                },
            ],
        }
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.entries.iter().map(|e| e.name)
    }

    /// The capabilities of a provider, without connecting; `None` when this build lacks it.
    pub fn capabilities(&self, name: &str) -> Option<Capabilities> {
        self.entries
            .iter()
            .find(|e| e.name == name)
            .map(|e| e.capabilities)
    }

    /// The connected provider called `name`.
    pub async fn get(&self, name: &str) -> Result<Arc<dyn Provider>, ProviderError> {
        let entry = self
            .entries
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| ProviderError::NotSupported {
                provider: "envrig",
                what: format!("the `{name}` provider (this build does not have it)"),
            })?;
        entry
            .cell
            .get_or_try_init(|| (entry.connect)())
            .await
            .cloned()
    }
}
