//! What every operation shares ([`Context`]: the registry, the reporter, cancellation) and
//! how it reaches providers through it.

use std::sync::Arc;

use envrig_provider_api::{Provider, ProviderError};

use super::error::OpError;
pub use super::error::Unreachable;
use super::project::Project;
use super::report::{Phase, Reporter};
use crate::engines::{Engines, LOCAL};
use crate::plan::Observed;
use crate::providers::Registry;

/// Shared by every operation.
pub struct Context {
    pub registry: Registry,
    /// The engine endpoints configured (`envrig engine add`); none: the local engines.
    pub engines: Engines,
    pub reporter: Arc<dyn Reporter>,
    /// Becomes true on Ctrl-C / SIGTERM: start no new work, let in-flight calls finish.
    pub cancel: tokio::sync::watch::Receiver<bool>,
}

impl Context {
    pub fn new(
        registry: Registry,
        engines: Engines,
        reporter: Arc<dyn Reporter>,
        cancel: tokio::sync::watch::Receiver<bool>,
    ) -> Context {
        Context {
            registry,
            engines,
            reporter,
            cancel,
        }
    }

    /// The names of `provider`'s engines: its configured endpoints, else its local one.
    pub fn engine_names(&self, provider: &str) -> Vec<String> {
        match self.engines.of(provider) {
            Some(v) => v.into_iter().map(|(n, _)| n.to_string()).collect(),
            None => vec![LOCAL.to_string()],
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

/// A provider connected to one of its engines.
#[derive(Clone)]
pub struct Engine {
    pub provider: String,
    /// `local`, or a configured endpoint's name.
    pub name: String,
    pub p: Arc<dyn Provider>,
}

/// How long connecting to an engine may take before it counts as unreachable.
fn connect_timeout() -> std::time::Duration {
    std::time::Duration::from_millis(
        std::env::var("ENVRIG_ENGINE_TIMEOUT_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10_000),
    )
}

/// `provider` connected to its engine `engine` (`local`: the local one, unless an endpoint
/// of that name is configured).
pub async fn provider_at(
    ctx: &Context,
    provider: &str,
    engine: &str,
) -> Result<Arc<dyn Provider>, OpError> {
    let address = ctx.engines.get(provider, engine).map(|e| e.address());
    if address.is_none() && engine != LOCAL {
        return Err(OpError::Usage(format!(
            "the engine `{engine}` of the {provider} provider is not configured here \
             (`envrig engine ls` lists them; `envrig engine add {engine} URI` adds it)"
        )));
    }
    let at = ctx.registry.get_at(provider, address.as_ref());
    match tokio::time::timeout(connect_timeout(), at).await {
        Ok(r) => r.map_err(|e| {
            OpError::provider(format!("cannot use the {provider} engine `{engine}`"), e)
        }),
        Err(_) => Err(OpError::Unreachable(Unreachable {
            provider: provider.to_string(),
            engine: engine.to_string(),
            reason: format!("no answer within {:?}", connect_timeout()),
        })),
    }
}

/// Where something lives: a provider's engine.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EngineRef {
    pub provider: String,
    pub engine: String,
}

/// The provider connected to the engine `r` names.
pub async fn on(ctx: &Context, r: &EngineRef) -> Result<Arc<dyn Provider>, OpError> {
    provider_at(ctx, &r.provider, &r.engine).await
}

/// The provider and engine that hold `o`.
pub async fn at(ctx: &Context, o: &Observed) -> Result<Arc<dyn Provider>, OpError> {
    provider_at(ctx, &o.provider, &o.engine).await
}

/// Every engine of `providers`, connected at once; those that do not answer apart. With
/// `skip_absent`, a provider whose engine is not installed here is left out quietly.
pub async fn connect_all(
    ctx: &Context,
    providers: &[String],
    skip_absent: bool,
) -> (Vec<Engine>, Vec<Unreachable>) {
    let wanted: Vec<(String, String)> = providers
        .iter()
        .flat_map(|p| ctx.engine_names(p).into_iter().map(move |e| (p.clone(), e)))
        .collect();
    let tries = wanted.iter().map(|(p, e)| async move {
        match provider_at(ctx, p, e).await {
            Ok(c) => Ok(Engine {
                provider: p.clone(),
                name: e.clone(),
                p: c,
            }),
            Err(OpError::Unreachable(u)) => Err(Some(u)),
            Err(OpError::Provider {
                source: ProviderError::NotInstalled { .. },
                ..
            }) if skip_absent => Err(None),
            Err(err) => Err(Some(Unreachable {
                provider: p.clone(),
                engine: e.clone(),
                reason: err.to_string(),
            })),
        }
    });
    let mut up = Vec::new();
    let mut down = Vec::new();
    for r in futures_util::future::join_all(tries).await {
        match r {
            Ok(e) => up.push(e),
            Err(Some(u)) => down.push(u),
            Err(None) => {}
        }
    }
    (up, down)
}

/// Every engine of every provider of this build, for commands that look at the whole
/// host (`ls`, `gc`): those that answer, and those that do not (each said as a warning: a
/// local engine that is not running here has nothing of ours). When none answers, that is
/// the error.
pub async fn running_engines(ctx: &Context) -> Result<(Vec<Engine>, Vec<Unreachable>), OpError> {
    let names: Vec<String> = ctx.registry.names().map(str::to_string).collect();
    let (up, down) = connect_all(ctx, &names, true).await;
    for u in &down {
        ctx.reporter.event(
            None,
            Phase::Warning,
            &format!(
                "skipping the {} engine `{}`: {}",
                u.provider, u.engine, u.reason
            ),
        );
    }
    match (up.is_empty(), down.first()) {
        (true, Some(u)) => Err(OpError::Unreachable(u.clone())),
        _ => Ok((up, down)),
    }
}

/// Every engine of the providers `project` uses that this host has (a provider no plugin
/// provides has nothing of it), connected at once; those that do not answer apart.
pub(super) async fn used_engines(
    ctx: &Context,
    project: &Project,
) -> (Vec<Engine>, Vec<Unreachable>) {
    let names: Vec<String> = project
        .provider_names()
        .into_iter()
        .filter(|n| ctx.registry.capabilities(n).is_some())
        .collect();
    connect_all(ctx, &names, false).await
}

/// Connects to the provider called `name`, on its first engine (its local one when no
/// endpoint of it is configured): for what is not a machine's (bases, boxes, locks).
pub async fn provider(ctx: &Context, name: &str) -> Result<Arc<dyn Provider>, OpError> {
    let first = ctx.engine_names(name).remove(0);
    if first == LOCAL {
        return ctx
            .registry
            .get(name)
            .await
            .map_err(|e| OpError::provider(format!("cannot use the {name} provider"), e));
    }
    provider_at(ctx, name, &first).await
}
