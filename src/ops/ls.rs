//! `ls`: every environment on this host, from the engines' labels alone (no Envfile needed).

use std::collections::{BTreeMap, BTreeSet};

use envrig_provider_api::{Selector, labels};
use serde::Serialize;

use super::context::Context;
use super::error::OpError;
use crate::plan::Observed;

/// One environment found on the engines.
#[derive(Debug, Clone, Serialize)]
pub struct EnvRow {
    pub env_id: String,
    pub project: String,
    pub folder: String,
    pub envfile: String,
    /// Whether the Envfile the resources name still exists.
    pub envfile_exists: bool,
    pub providers: Vec<String>,
    /// The engines its machines are on (`local`, or endpoints' names).
    pub engines: Vec<String>,
    /// Machine name → state.
    pub machines: BTreeMap<String, String>,
    /// The oldest resource's creation time.
    pub created: Option<String>,
    /// The earliest expiry of its machines (`ttl`), when any has one.
    pub expires: Option<String>,
    /// For the environment of an `envrig run`: its instance id.
    pub instance: Option<String>,
}

pub async fn ls(ctx: &Context) -> Result<Vec<EnvRow>, OpError> {
    let mut envs: BTreeMap<String, EnvRow> = BTreeMap::new();
    let (engines, _) = super::context::running_engines(ctx).await?;
    let all = Selector::all_envrig();
    let lists = futures_util::future::join_all(engines.iter().map(|e| e.p.list(&all))).await;
    for (e, infos) in engines.iter().zip(lists) {
        let name = e.provider.as_str();
        let infos = match infos {
            Ok(v) => v,
            Err(err) => {
                ctx.reporter.event(
                    None,
                    super::report::Phase::Warning,
                    &format!("skipping the {name} engine `{}`: {err}", e.name),
                );
                continue;
            }
        };
        for info in infos {
            let Some(env_id) = info.labels.get(labels::ENV).cloned() else {
                continue;
            };
            let Some(o) = Observed::from_info(name, &e.name, info) else {
                continue;
            };
            let label = |k: &str| o.labels.get(k).cloned().unwrap_or_default();
            let row = envs.entry(env_id.clone()).or_insert_with(|| {
                let envfile = label(labels::ENVFILE);
                EnvRow {
                    env_id,
                    project: label(labels::PROJECT),
                    folder: label(labels::FOLDER),
                    envfile_exists: !envfile.is_empty() && std::path::Path::new(&envfile).is_file(),
                    envfile,
                    providers: Vec::new(),
                    engines: Vec::new(),
                    machines: BTreeMap::new(),
                    created: None,
                    expires: None,
                    instance: o.labels.get(labels::INSTANCE).cloned(),
                }
            });
            if !row.providers.contains(&o.provider) {
                row.providers.push(o.provider.clone());
            }
            if !row.engines.contains(&o.engine) {
                row.engines.push(o.engine.clone());
                row.engines.sort();
            }
            let state = o.state.as_str().to_string();
            // Several resources of one machine (generations, duplicates): show the best state.
            row.machines
                .entry(o.machine.clone())
                .and_modify(|s| {
                    if state == "running" {
                        *s = state.clone();
                    }
                })
                .or_insert(state);
            if !o.created.is_empty() && row.created.as_ref().is_none_or(|c| o.created < *c) {
                row.created = Some(o.created.clone());
            }
            if let Some(e) = o.labels.get(labels::EXPIRES)
                && row.expires.as_ref().is_none_or(|x| e < x)
            {
                row.expires = Some(e.clone());
            }
        }
    }
    let mut rows: Vec<EnvRow> = envs.into_values().collect();
    rows.sort_by(|a, b| (&a.project, &a.folder).cmp(&(&b.project, &b.folder)));
    for r in &mut rows {
        r.providers = r
            .providers
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
    }
    Ok(rows)
}
