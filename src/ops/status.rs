//! `status`: one row per machine, from the engines' labels (the state cache is not read).

use serde::Serialize;

use super::context::Context;
use super::error::OpError;
use super::observe::observe;
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
    let observed = observe(ctx, project).await?;
    // Nothing is resolved: status compares settings, not fingerprints.
    let desired = desired(project, &Resolved::default(), &selected);
    let rows = plan::status(&desired, &observed, machines.is_empty());
    Ok(StatusReport {
        project: project.identity.project.to_string(),
        env_id: project.identity.env_id.clone(),
        folder: project.identity.folder.to_string_lossy().into_owned(),
        envfile: project.envfile.path.to_string_lossy().into_owned(),
        machines: rows,
    })
}
