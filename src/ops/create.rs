//! Creating a machine's resource of one generation from its spec (fetching its base when
//! the engine does not have it), and starting it: what `up` does for a new machine, and
//! for a new generation (see `generations`).

use std::sync::Arc;

use envrig_provider_api::{Provider, ProviderError, labels};

use super::context::Context;
use super::project::Project;
use super::report::Phase;
use super::resolved::Resolved;
use super::session::Session;
use super::spec::machine_spec;
use super::time::now_rfc3339;
use crate::envfile::Machine;

/// One machine being made in an `up`: what creating it, switching its generations and
/// building one beside another need.
#[derive(Clone, Copy)]
pub(super) struct Job<'a> {
    pub ctx: &'a Context,
    pub session: &'a Session,
    pub project: &'a Project,
    pub resolved: &'a Resolved,
    pub p: &'a Arc<dyn Provider>,
    pub m: &'a Machine,
    /// The engine `p` is connected to (written on what is created).
    pub engine: &'a str,
}

/// Creates the machine's resource of `generation`, fetching its base when missing; not
/// started.
pub(super) async fn create(
    job: Job<'_>,
    generation: u32,
    candidate: bool,
) -> Result<
    (
        envrig_provider_api::MachineInfo,
        envrig_provider_api::MachineSpec,
    ),
    String,
> {
    let Job {
        ctx,
        project,
        resolved,
        p,
        m,
        engine,
        ..
    } = job;
    let name = m.name.as_str();
    let mut spec = machine_spec(project, resolved, m, generation, &now_rfc3339());
    spec.labels
        .insert(labels::ENGINE.to_string(), engine.to_string());
    spec.labels
        .insert(labels::RESERVES.to_string(), super::placement::reserves(m));
    if candidate {
        // Beside the generation that serves: no host ports, no names on the network.
        spec.resource_name.push_str("-next");
        spec.handover = false;
        spec.ports.clear();
        if let Some(n) = &mut spec.network {
            n.aliases.clear();
        }
        spec.labels.insert(
            envrig_provider_api::labels::CANDIDATE.to_string(),
            "1".to_string(),
        );
    }
    let what = if engine == crate::engines::LOCAL {
        "creating".to_string()
    } else {
        format!("creating on `{engine}`")
    };
    ctx.reporter.event(Some(name), Phase::Create, &what);
    match p.create(&spec).await {
        Ok(info) => Ok((info, spec)),
        Err(ProviderError::NotFound { .. }) => {
            // The base is missing: fetch it (with progress), then create again.
            ctx.reporter
                .event(Some(name), Phase::Pull, &format!("fetching {}", spec.base));
            let reporter = ctx.reporter.clone();
            let mut progress = |pr: envrig_provider_api::PullProgress| reporter.pull(name, &pr);
            p.ensure_base(&spec.base, &mut progress)
                .await
                .map_err(|e| format!("cannot fetch `{}`: {e}", spec.base))?;
            p.create(&spec)
                .await
                .map(|info| (info, spec))
                .map_err(|e| format!("cannot create it: {e}"))
        }
        Err(e) => Err(format!("cannot create it: {e}")),
    }
}

/// Creates the machine's resource of `generation` and starts it; returns its id.
pub(super) async fn create_and_start(job: Job<'_>, generation: u32) -> Result<String, String> {
    let Job { ctx, p, m, .. } = job;
    let (info, spec) = create(job, generation, false).await?;
    ctx.reporter
        .event(Some(m.name.as_str()), Phase::Start, "starting");
    let note = p
        .start_created(&info.id, &spec)
        .await
        .map_err(|e| format!("created {} but cannot start it: {e}", info.resource_name))?;
    if let Some(note) = note {
        ctx.reporter
            .event(Some(m.name.as_str()), Phase::Start, &note);
    }
    Ok(info.id)
}
