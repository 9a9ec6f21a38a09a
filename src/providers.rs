//! The providers this envrig can use, looked up by the name an Envfile uses.
//!
//! The core never matches on a provider's name: it asks this registry for "the provider
//! called X" and gets an `Arc<dyn Provider>`. The providers that speak the Docker API
//! (Docker, the default, and Podman) are built in (pure Rust); every other
//! provider is a plugin: an executable named `envrig-provider-NAME` in a folder of
//! `ENVRIG_PLUGINS`, beside `envrig`, or on `PATH` (searched in that order, the first found
//! wins; a plugin never replaces a built-in provider). A plugin is
//! started when a command first asks about it (its schema: capabilities and Envfile keys,
//! or the provider itself), once per command; connections to engines are made lazily, once per process, so a
//! command that needs only Docker starts no plugin and loads no engine library.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};

use envrig_provider_api::plugin::Plugin;
// The one crate of providers the core names: built in, the first the default
// (`names-provider` test).
use envrig_provider_api::{Capabilities, EngineAddress, Provider, ProviderError, Schema};
use envrig_provider_docker::{DockerProvider as Builtin, FLAVORS as BUILTINS};
use tokio::sync::OnceCell;

type Connect = Box<
    dyn Fn(
            Option<EngineAddress>,
        )
            -> Pin<Box<dyn Future<Output = Result<Arc<dyn Provider>, ProviderError>> + Send>>
        + Send
        + Sync,
>;

/// The prefix of a plugin's executable name.
pub const PLUGIN_PREFIX: &str = "envrig-provider-";

enum Source {
    Builtin {
        schema: Schema,
        connect: Connect,
    },
    Plugin {
        path: PathBuf,
        /// The started plugin's schema (from its hello), or why it could not start.
        described: OnceLock<Result<Schema, String>>,
        /// The started plugin, until it is connected.
        started: Mutex<Option<Box<Plugin>>>,
    },
}

/// A provider once connected to one engine.
type Connected = OnceCell<Arc<dyn Provider>>;

struct Entry {
    name: String,
    source: Source,
    /// The provider connected to its local engine.
    cell: OnceCell<Arc<dyn Provider>>,
    /// The provider connected to each engine endpoint asked for (a plugin process each).
    at: Mutex<HashMap<EngineAddress, Arc<Connected>>>,
}

/// The providers of this envrig: built-in ones and the plugins found. The first is the
/// default provider, used when neither a machine, the project nor `--provider` names one.
pub struct Registry {
    entries: Vec<Entry>,
    /// The verbosity plugins are started with.
    log: String,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| &e.name))
            .finish()
    }
}

impl Registry {
    /// The built-in providers and the plugins found (`ENVRIG_PLUGINS`, beside this
    /// executable, `PATH`);
    /// plugins are started with verbosity `log` (`warn`, `debug`...).
    pub fn discover(log: &str) -> Registry {
        let mut entries: Vec<Entry> = BUILTINS
            .into_iter()
            .map(|kind| {
                let schema = kind.schema();
                Entry {
                    name: schema.name.clone(),
                    source: Source::Builtin {
                        schema,
                        connect: Box::new(move |engine| {
                            Box::pin(async move {
                                let p = Builtin::connect_flavor(kind, engine.as_ref()).await?;
                                Ok(Arc::new(p) as Arc<dyn Provider>)
                            })
                        }),
                    },
                    cell: OnceCell::new(),
                    at: Mutex::default(),
                }
            })
            .collect();
        let beside = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf));
        let path = std::env::var_os("PATH").unwrap_or_default();
        let first = std::env::var_os("ENVRIG_PLUGINS").unwrap_or_default();
        let dirs = std::env::split_paths(&first)
            .chain(beside)
            .chain(std::env::split_paths(&path));
        for (name, path) in find_plugins(dirs) {
            if entries.iter().any(|e| e.name == name) {
                continue;
            }
            entries.push(Entry {
                name,
                source: Source::Plugin {
                    path,
                    described: OnceLock::new(),
                    started: Mutex::new(None),
                },
                cell: OnceCell::new(),
                at: Mutex::default(),
            });
        }
        Registry {
            entries,
            log: log.to_string(),
        }
    }

    /// The names of the providers, the default one first (no plugin is started).
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.entries.iter().map(|e| e.name.as_str())
    }

    /// The provider used when neither a machine, the project nor `--provider` names one:
    /// the built-in one.
    pub fn default_name(&self) -> &str {
        &self.entries[0].name
    }

    fn entry(&self, name: &str) -> Result<&Entry, ProviderError> {
        self.entries
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| ProviderError::NotSupported {
                provider: "envrig",
                what: format!(
                    "the `{name}` provider (not built in, and no `{PLUGIN_PREFIX}{name}` beside envrig or on PATH)"
                ),
            })
    }

    /// Why `name` is no provider of this envrig, with a did-you-mean; `None` when it is one
    /// (no plugin is started).
    pub fn unknown(&self, name: &str) -> Option<(String, String)> {
        if self.entry(name).is_ok() {
            return None;
        }
        let message = format!(
            "there is no `{name}` provider (not built in, and no `{PLUGIN_PREFIX}{name}` plugin found)"
        );
        let hint = match crate::envfile::did_you_mean(name, self.names()) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!(
                "providers here: {}",
                self.names().collect::<Vec<_>>().join(", ")
            ),
        };
        Some((message, hint))
    }

    /// The capabilities of a provider, without connecting to its engine (a plugin is
    /// started and says them); `None` when there is no such provider or its plugin does
    /// not start ([`Registry::get`] then says why).
    pub fn capabilities(&self, name: &str) -> Option<Capabilities> {
        self.schema(name).map(|s| s.capabilities)
    }

    /// The schema of a provider (name, capabilities, Envfile keys), without connecting to
    /// its engine (a plugin is started and says it in its hello); `None` when there is no
    /// such provider or its plugin does not start ([`Registry::describe`] says why).
    pub fn schema(&self, name: &str) -> Option<&Schema> {
        self.describe(name).ok()
    }

    /// The schema of provider `name`, or why it cannot be used.
    pub fn describe(&self, name: &str) -> Result<&Schema, ProviderError> {
        let entry = self.entry(name)?;
        match &entry.source {
            Source::Builtin { schema, .. } => Ok(schema),
            Source::Plugin {
                path,
                described,
                started,
            } => described
                .get_or_init(|| {
                    let plugin = Plugin::start(path, name, &self.log)?;
                    let schema = plugin.hello().schema.clone();
                    *started.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(plugin));
                    Ok(schema)
                })
                .as_ref()
                .map_err(|message| ProviderError::Unavailable {
                    provider: leak(name),
                    message: format!("its plugin does not start: {message}"),
                    hint: Some(format!(
                        "install what the plugin needs (`ldd {}` names missing libraries), or remove it",
                        path.display()
                    )),
                }),
        }
    }

    /// The connected provider called `name`.
    pub async fn get(&self, name: &str) -> Result<Arc<dyn Provider>, ProviderError> {
        let entry = self.entry(name)?;
        entry
            .cell
            .get_or_try_init(|| async {
                match &entry.source {
                    Source::Builtin { connect, .. } => connect(None).await,
                    Source::Plugin { path, started, .. } => {
                        self.describe(name)?;
                        let plugin = self.plugin(name, path, started)?;
                        Ok(Arc::new(plugin.connect(None).await?) as Arc<dyn Provider>)
                    }
                }
            })
            .await
            .cloned()
    }

    /// A started plugin to connect: the one started to read its schema serves the first
    /// engine asked for, a new one each other engine.
    fn plugin(
        &self,
        name: &str,
        path: &Path,
        started: &Mutex<Option<Box<Plugin>>>,
    ) -> Result<Box<Plugin>, ProviderError> {
        if let Some(p) = started.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Ok(p);
        }
        Plugin::start(path, name, &self.log)
            .map(Box::new)
            .map_err(|e| ProviderError::Unavailable {
                provider: leak(name),
                message: format!("its plugin does not start: {e}"),
                hint: None,
            })
    }

    /// The provider called `name` connected to the engine at `engine`; its local engine
    /// when none. A plugin is started for each endpoint.
    pub async fn get_at(
        &self,
        name: &str,
        engine: Option<&EngineAddress>,
    ) -> Result<Arc<dyn Provider>, ProviderError> {
        let Some(engine) = engine else {
            return self.get(name).await;
        };
        let entry = self.entry(name)?;
        let cell = entry
            .at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(engine.clone())
            .or_default()
            .clone();
        cell.get_or_try_init(|| async {
            match &entry.source {
                Source::Builtin { connect, .. } => connect(Some(engine.clone())).await,
                Source::Plugin { path, started, .. } => {
                    self.describe(name)?;
                    let plugin = self.plugin(name, path, started)?;
                    Ok(Arc::new(plugin.connect(Some(engine)).await?) as Arc<dyn Provider>)
                }
            }
        })
        .await
        .cloned()
    }
}

/// The Envfile is read against the registry (a plugin starts when its schema is asked).
impl crate::envfile::Providers for Registry {
    fn names(&self) -> Vec<&str> {
        Registry::names(self).collect()
    }

    fn schema(&self, name: &str) -> Option<&Schema> {
        Registry::schema(self, name)
    }
}

/// A provider's name for an error, which names it for the life of the process (an error
/// about a plugin is made at most once or twice per command).
fn leak(name: &str) -> &'static str {
    Box::leak(name.to_string().into_boxed_str())
}

/// The plugins in `dirs`, in order: executables named `envrig-provider-NAME` whose NAME is
/// a valid provider name; the first of each name.
fn find_plugins(dirs: impl Iterator<Item = PathBuf>) -> Vec<(String, PathBuf)> {
    use std::os::unix::fs::PermissionsExt;
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    for dir in dirs {
        let Ok(read) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut here: Vec<(String, PathBuf)> = read
            .flatten()
            .filter_map(|e| {
                let file = e.file_name().into_string().ok()?;
                let name = file.strip_prefix(PLUGIN_PREFIX)?;
                let ok = name.starts_with(|c: char| c.is_ascii_lowercase())
                    && name.len() <= 63
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                let path = e.path();
                let meta = std::fs::metadata(&path).ok()?;
                (ok && meta.is_file() && meta.permissions().mode() & 0o111 != 0)
                    .then(|| (name.to_string(), path))
            })
            .collect();
        here.sort();
        for (name, path) in here {
            if !found.iter().any(|(n, _)| *n == name) {
                found.push((name, path));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugins_are_executables_with_valid_names_first_found_first() {
        use std::os::unix::fs::PermissionsExt;
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let make = |dir: &Path, file: &str, mode: u32| {
            let p = dir.join(file);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        make(a.path(), "envrig-provider-libvirt", 0o755);
        make(a.path(), "envrig-provider-notexec", 0o644);
        make(a.path(), "envrig-provider-Bad", 0o755);
        make(a.path(), "envrig-provider-x.d", 0o755);
        make(b.path(), "envrig-provider-libvirt", 0o755);
        make(b.path(), "envrig-provider-podman", 0o755);
        std::fs::create_dir(b.path().join("envrig-provider-dir")).unwrap();
        let found = find_plugins([a.path().to_path_buf(), b.path().to_path_buf()].into_iter());
        assert_eq!(
            found,
            vec![
                (
                    "libvirt".to_string(),
                    a.path().join("envrig-provider-libvirt")
                ),
                (
                    "podman".to_string(),
                    b.path().join("envrig-provider-podman")
                ),
            ]
        );
    }
}
