//! The team's layer cache: baked layers kept in a registry (`[project] cache =
//! "REGISTRY/REPOSITORY"`, or `ENVRIG_CACHE`), so that a fingerprint provisioned on one host
//! is not provisioned again on another. Before a machine is created, a layer of its
//! fingerprint missing here is pulled from the cache; a layer baked here (or found here)
//! is pushed when asked (`up --push`, `cache_push = true`, `ENVRIG_CACHE_PUSH=1`).
//!
//! The core only names the place: `REPOSITORY:<provider>-<fingerprint>[-w|-wn]`. Moving
//! the layer is the provider's (`Provider::pull_baked`, `push_baked`), which checks what
//! it receives; credentials come from where the container tools keep them, never from the
//! Envfile.

use std::sync::Arc;
use std::time::Instant;

use envrig_provider_api::{Provider, ProviderError};

use super::context::Context;
use super::error::OpError;
use super::project::Project;
use super::report::Phase;
use crate::envfile::values::parse_cache;

/// Where layers are pulled from and whether baked ones are pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    /// `REGISTRY/REPOSITORY`.
    pub repository: String,
    pub push: bool,
}

/// The cache `up` uses: `ENVRIG_CACHE` when set (empty: none), else the Envfile's; pushing
/// when `push` (`--push`), `cache_push = true` or `ENVRIG_CACHE_PUSH` is `1`/`true`.
pub fn setting(project: &Project, push: bool) -> Result<Option<Cache>, OpError> {
    let repository = match std::env::var("ENVRIG_CACHE") {
        Ok(v) if v.is_empty() => None,
        Ok(v) => Some(parse_cache(&v).map_err(|e| OpError::Usage(format!("ENVRIG_CACHE: {e}")))?),
        Err(_) => project.envfile.project.cache.clone(),
    };
    let asked = push;
    let push = push
        || project.envfile.project.cache_push
        || std::env::var("ENVRIG_CACHE_PUSH").is_ok_and(|v| v == "1" || v == "true");
    match repository {
        Some(repository) => Ok(Some(Cache { repository, push })),
        // `cache_push` or ENVRIG_CACHE_PUSH with the cache turned off: nothing to push to.
        None if asked => Err(OpError::Usage(
            "pushing layers needs a cache: set `[project] cache = \"REGISTRY/REPOSITORY\"` or ENVRIG_CACHE".into(),
        )),
        None => Ok(None),
    }
}

/// The registry reference of the layer `layer` of `provider` in `cache`.
pub fn reference(cache: &Cache, provider: &str, layer: &str) -> String {
    let tag = layer
        .strip_prefix(envrig_provider_api::labels::BAKED_NAME_PREFIX)
        .unwrap_or(layer);
    format!("{}:{provider}-{tag}", cache.repository)
}

/// Pulls `layer` from the cache onto `p`'s engine; whether it is there now. What refuses
/// is said for `machine` and is no failure: the machine is provisioned instead.
pub async fn pull(
    ctx: &Context,
    p: &Arc<dyn Provider>,
    cache: &Cache,
    machine: &str,
    layer: &str,
    base: &str,
) -> bool {
    let at = reference(cache, p.name(), layer);
    let started = Instant::now();
    match p.pull_baked(&at, layer, base).await {
        Ok(true) => {
            ctx.reporter.event(
                Some(machine),
                Phase::Done,
                &format!(
                    "pulled layer {layer} from the cache ({at}) in {:.1}s",
                    started.elapsed().as_secs_f64()
                ),
            );
            true
        }
        Ok(false) => false,
        Err(e @ ProviderError::NotSupported { .. }) => {
            ctx.reporter.event(
                Some(machine),
                Phase::Warning,
                &format!("not using the layer cache: {e}"),
            );
            false
        }
        Err(e) => {
            ctx.reporter.event(
                Some(machine),
                Phase::Warning,
                &format!("the cache's layer {at} is not used ({e}); provisioning here"),
            );
            false
        }
    }
}

/// Pushes `layer` from `p`'s engine to the cache. A failure is said, never fatal: the
/// machine is there either way.
pub async fn push(ctx: &Context, p: &Arc<dyn Provider>, cache: &Cache, machine: &str, layer: &str) {
    let at = reference(cache, p.name(), layer);
    let started = Instant::now();
    match p.push_baked(layer, &at).await {
        Ok(()) => ctx.reporter.event(
            Some(machine),
            Phase::Done,
            &format!(
                "pushed layer {layer} to the cache ({at}) in {:.1}s",
                started.elapsed().as_secs_f64()
            ),
        ),
        Err(e) => ctx.reporter.event(
            Some(machine),
            Phase::Warning,
            &format!("cannot push layer {layer} to {at}: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_is_tagged_by_provider_and_fingerprint() {
        let c = Cache {
            repository: "127.0.0.1:5000/team/cache".into(),
            push: false,
        };
        assert_eq!(
            reference(&c, "docker", "envrig-baked-0123456789abcdef"),
            "127.0.0.1:5000/team/cache:docker-0123456789abcdef"
        );
        assert_eq!(
            reference(&c, "libvirt", "envrig-baked-0123456789abcdef-wn"),
            "127.0.0.1:5000/team/cache:libvirt-0123456789abcdef-wn"
        );
    }
}
