//! What every operation shares ([`Context`]: the registry, the reporter, cancellation) and
//! how it reaches providers through it.

use std::sync::Arc;

use envrig_provider_api::{Provider, ProviderError};

use super::error::OpError;
use super::project::Project;
use super::report::{Phase, Reporter};
use crate::providers::Registry;

/// Shared by every operation.
pub struct Context {
    pub registry: Registry,
    pub reporter: Arc<dyn Reporter>,
    /// Becomes true on Ctrl-C / SIGTERM: start no new work, let in-flight calls finish.
    pub cancel: tokio::sync::watch::Receiver<bool>,
}

impl Context {
    pub fn new(
        registry: Registry,
        reporter: Arc<dyn Reporter>,
        cancel: tokio::sync::watch::Receiver<bool>,
    ) -> Context {
        Context {
            registry,
            reporter,
            cancel,
        }
    }

    pub fn cancelled(&self) -> bool {
        *self.cancel.borrow()
    }

    /// Resolves when the operation is interrupted.
    pub async fn interrupted(&self) {
        let mut rx = self.cancel.clone();
        let _ = rx.wait_for(|c| *c).await;
    }
}

/// Every provider of this build whose engine answers, for commands that look at the whole
/// host (`ls`, `gc`): an engine that is not running here has nothing of ours, so it is
/// skipped with a warning; when none answers, that is the error.
pub async fn running_providers(
    ctx: &Context,
) -> Result<Vec<(&'static str, Arc<dyn Provider>)>, OpError> {
    let mut out = Vec::new();
    let mut last = None;
    let names: Vec<String> = ctx.registry.names().map(str::to_string).collect();
    for name in &names {
        match ctx.registry.get(name).await {
            Ok(p) => out.push((p.name(), p)),
            Err(e @ ProviderError::Unavailable { .. }) => {
                ctx.reporter.event(
                    None,
                    Phase::Warning,
                    &format!("skipping the {name} provider: {e}"),
                );
                last = Some(OpError::provider(
                    format!("cannot use the {name} provider"),
                    e,
                ));
            }
            Err(e) => {
                return Err(OpError::provider(
                    format!("cannot use the {name} provider"),
                    e,
                ));
            }
        }
    }
    match (out.is_empty(), last) {
        (true, Some(e)) => Err(e),
        _ => Ok(out),
    }
}

/// The providers `project` uses that this host has (a provider no plugin provides has
/// nothing of it), connected, with their names, in the project's order.
pub(super) async fn used_providers(
    ctx: &Context,
    project: &Project,
) -> Result<Vec<(String, Arc<dyn Provider>)>, OpError> {
    let mut out = Vec::new();
    for name in project.provider_names() {
        if ctx.registry.capabilities(&name).is_some() {
            let p = provider(ctx, &name).await?;
            out.push((name, p));
        }
    }
    Ok(out)
}

/// Connects to the provider called `name`.
pub async fn provider(ctx: &Context, name: &str) -> Result<Arc<dyn Provider>, OpError> {
    ctx.registry
        .get(name)
        .await
        .map_err(|e| OpError::provider(format!("cannot use the {name} provider"), e))
}
