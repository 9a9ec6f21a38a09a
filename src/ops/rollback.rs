//! `rollback [MACHINE...]`: switches machines back to their previous kept generation. The
//! generation left is removed: the Envfile still describes it, so the next `up` of an
//! immutable environment builds it again (from its baked layer, quickly); to stay on the
//! older one, change the Envfile back.

use std::time::Duration;

use envrig_provider_api::labels;
use serde::Serialize;

use super::{Context, OpError, Phase, Project, Session, observe, provider};
use crate::plan::current;

/// One machine switched back.
#[derive(Debug, Clone, Serialize)]
pub struct RolledBack {
    pub machine: String,
    pub from: u32,
    pub to: u32,
    pub id: String,
}

pub async fn rollback(
    ctx: &Context,
    project: &Project,
    machines: &[String],
) -> Result<Vec<RolledBack>, OpError> {
    let selected = project.select(machines, false)?;
    let session = Session::open(ctx, project).await?;
    let observed = observe(ctx, project).await?;
    // Every machine must have somewhere to go back to before anything moves.
    let mut work = Vec::new();
    for m in &selected {
        let name = m.name.as_str();
        let Some(cur) = current(name, &observed).0 else {
            if machines.is_empty() {
                continue;
            }
            return Err(OpError::NotRunning {
                machine: name.to_string(),
                state: "not created".into(),
            });
        };
        let prev = observed
            .iter()
            .filter(|o| {
                o.machine == name
                    && o.generation < cur.generation
                    && !o.labels.contains_key(labels::CANDIDATE)
            })
            .max_by_key(|o| o.generation);
        match prev {
            Some(prev) => work.push((name, cur.clone(), prev.clone())),
            None if machines.is_empty() => {}
            None => {
                return Err(OpError::Usage(format!(
                    "`{name}` has no kept generation to roll back to (generation {} is its only one; `keep` in [project] says how many are kept)",
                    cur.generation
                )));
            }
        }
    }
    if work.is_empty() {
        return Err(OpError::Usage(
            "no machine has a kept generation to roll back to".into(),
        ));
    }
    let mut done = Vec::new();
    let mut failures = Vec::new();
    for (name, cur, prev) in work {
        let p = provider(ctx, &cur.provider).await?;
        ctx.reporter.event(
            Some(name),
            Phase::Stop,
            &format!(
                "rolling back: generation {} -> {}",
                cur.generation, prev.generation
            ),
        );
        let t0 = std::time::Instant::now();
        if let Err(e) = p.stop_for_handover(&cur.id, Duration::from_secs(30)).await {
            failures.push((
                name.to_string(),
                format!("cannot stop generation {}: {e}", cur.generation),
            ));
            continue;
        }
        if let Err(e) = p.start(&prev.id).await {
            let back = p.start(&cur.id).await;
            failures.push((
                name.to_string(),
                format!(
                    "generation {} cannot start ({e}); {}",
                    prev.generation,
                    if back.is_ok() {
                        format!("generation {} runs again", cur.generation)
                    } else {
                        "and the newer one cannot start again either".to_string()
                    }
                ),
            ));
            continue;
        }
        ctx.reporter.event(
            Some(name),
            Phase::Done,
            &format!(
                "generation {} runs again (switched in {} ms)",
                prev.generation,
                t0.elapsed().as_millis()
            ),
        );
        if let Err(e) = p.remove(&cur.id).await {
            ctx.reporter.event(
                Some(name),
                Phase::Warning,
                &format!("cannot remove generation {}: {e}", cur.generation),
            );
        }
        done.push(RolledBack {
            machine: name.to_string(),
            from: cur.generation,
            to: prev.generation,
            id: prev.id.clone(),
        });
    }
    session.refresh(&observe(ctx, project).await?)?;
    if !failures.is_empty() {
        return Err(OpError::Machines {
            total: selected.len(),
            failures,
        });
    }
    Ok(done)
}
