//! `status`: one row per machine, from the engines' labels (the state cache is not read).

use serde::Serialize;

use super::context::Context;
use super::error::OpError;
use super::observe::observe_all;
use super::project::Project;
use super::resolved::Resolved;
use super::spec::desired;
use crate::plan::{self, StatusRow};

/// The status of one environment, as `status --json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub project: String,
    pub env_id: String,
    pub folder: String,
    pub envfile: String,
    pub machines: Vec<StatusRow>,
}

pub async fn status(
    ctx: &Context,
    project: &Project,
    machines: &[String],
) -> Result<StatusReport, OpError> {
    let selected = project.select(machines, false)?;
    let (observed, down) = observe_all(ctx, project).await?;
    // Nothing is resolved: status compares settings, not fingerprints.
    let desired = desired(project, &Resolved::default(), &selected);
    let mut rows = plan::status(&desired, &observed, machines.is_empty());
    if !down.is_empty() {
        // Machines not seen whose last known engine does not answer: unreachable, not gone
        // (the cache, read only here, remembers where they were).
        let cache = project.state.read();
        for r in rows.iter_mut().filter(|r| r.state == "not-created") {
            let Some(rec) = cache.machines.get(&r.machine) else {
                continue;
            };
            if let Some(u) = down
                .iter()
                .find(|u| u.provider == rec.provider && u.engine == rec.engine)
            {
                r.state = "unreachable".into();
                r.engine = Some(u.engine.clone());
                r.id = Some(rec.id.clone());
                r.reason = Some(u.reason.clone());
            }
        }
    }
    Ok(StatusReport {
        project: project.identity.project.to_string(),
        env_id: project.identity.env_id.clone(),
        folder: project.identity.folder.to_string_lossy().into_owned(),
        envfile: project.envfile.path.to_string_lossy().into_owned(),
        machines: rows,
    })
}
