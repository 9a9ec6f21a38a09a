//! An environment's private network on each engine its machines are on, and, in an
//! environment of several providers on this host, one network they share: the provider
//! that can share its network ([`envrig_provider_api::Capabilities::shares_network`], a
//! bridge of this host with a DNS server) makes it first, the others make theirs on its
//! bridge ([`NetworkSpec::join`]), and each of their machines is named in its DNS once it
//! runs, so that every machine reaches every other by name.

use envrig_provider_api::{NetworkSpec, Provider, SharedNetwork};

use super::context::{Context, provider_at};
use super::error::OpError;
use super::placement::Placed;
use super::project::Project;
use crate::engines::LOCAL;
use crate::envfile::Machine;

/// Creates the environment's private network on every provider that needs it.
pub(super) async fn ensure_networks(
    ctx: &Context,
    project: &Project,
    selected: &[&Machine],
    placed: &Placed,
) -> Result<(), OpError> {
    let Some(name) = project.network_name() else {
        return Ok(());
    };
    // Each engine the machines are on, once; a network spanning a cluster once, through
    // its manager.
    let mut groups: Vec<(String, String, bool)> = Vec::new();
    for m in selected {
        if !ctx
            .registry
            .capabilities(&m.provider)
            .is_some_and(|c| c.private_network)
        {
            continue;
        }
        let through = placed.span_through(&m.provider);
        let span = through.is_some();
        let engine = through.unwrap_or_else(|| placed.engine(m));
        if !groups
            .iter()
            .any(|(p, e, _)| *p == m.provider && *e == engine)
        {
            groups.push((m.provider.clone(), engine, span));
        }
    }
    let spec = NetworkSpec {
        name: name.clone(),
        labels: project.network_labels(),
        subnet: project.envfile.network.subnet.map(|s| s.to_string()),
        subnet_pool: std::env::var("ENVRIG_SUBNET_POOL")
            .ok()
            .filter(|s| !s.is_empty()),
        domain: Some(format!("{}.envrig.internal", project.envfile.project.name)),
        span: false,
        join: None,
    };
    let name = &name;
    let make = |provider: String, engine: String, spec: NetworkSpec| async move {
        let p = provider_at(ctx, &provider, &engine).await?;
        p.ensure_network(&spec)
            .await
            .map_err(|e| OpError::provider(format!("cannot create the network `{name}`"), e))?;
        Ok::<_, OpError>(p)
    };
    // The sharing provider's network first; the others join it.
    let sharer = sharing(ctx, &groups);
    let mut join: Option<SharedNetwork> = None;
    if let Some(i) = sharer {
        let (provider, engine, _) = groups[i].clone();
        let p = make(provider, engine, spec.clone()).await?;
        join = p.shared_network(&spec).await.map_err(|e| {
            OpError::provider(format!("cannot share the network `{}`", spec.name), e)
        })?;
    }
    for (i, (provider, engine, span)) in groups.into_iter().enumerate() {
        if Some(i) == sharer {
            continue;
        }
        let spec = NetworkSpec {
            span,
            join: join.clone().filter(|_| !span),
            ..spec.clone()
        };
        make(provider, engine, spec).await?;
    }
    Ok(())
}

/// Which of the providers' networks the others join: there are several providers, all on
/// this host's engines, and one can share its network.
fn sharing(ctx: &Context, groups: &[(String, String, bool)]) -> Option<usize> {
    let several = groups.iter().any(|(p, _, _)| *p != groups[0].0);
    if !several || groups.iter().any(|(_, e, span)| *span || e != LOCAL) {
        return None;
    }
    groups.iter().position(|(p, _, _)| {
        ctx.registry
            .capabilities(p)
            .is_some_and(|c| c.shares_network)
    })
}

/// Names machine `m` (resource `id` of provider `p`, running) in the DNS of the network
/// another provider of the environment shares, when it joined one. `Err`: what to warn of
/// (its neighbours of that provider will not find it by name).
pub(super) async fn name_on_shared(
    ctx: &Context,
    project: &Project,
    m: &Machine,
    p: &dyn Provider,
    id: &str,
) -> Result<(), String> {
    let Some(network) = project.network_name() else {
        return Ok(());
    };
    let Some(owner) = project
        .envfile
        .machines
        .iter()
        .map(|o| &o.provider)
        .find(|o| {
            **o != m.provider
                && ctx
                    .registry
                    .capabilities(o)
                    .is_some_and(|c| c.shares_network)
        })
    else {
        return Ok(());
    };
    let fail = |e: String| format!("its neighbours on `{owner}` may not find it by name: {e}");
    let Some(address) = p
        .shared_address(id)
        .await
        .map_err(|e| fail(e.to_string()))?
    else {
        return Ok(());
    };
    let owner_p = provider_at(ctx, owner, LOCAL)
        .await
        .map_err(|e| fail(e.to_string()))?;
    owner_p
        .name_on_network(&network, &address, &super::spec::aliases(m))
        .await
        .map_err(|e| fail(e.to_string()))
}
