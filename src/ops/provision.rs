//! Running provisioning steps and readiness checks through the provider trait (exec and
//! upload only), so every provider gets them unchanged; and the `provision` command.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envrig_provider_api::{ExecRequest, Provider};

use super::context::{Context, provider_at};
use super::error::OpError;
use super::guest::{run_quiet, run_streamed, tar_bytes, tar_of};
use super::observe::{observe, runnable};
use super::project::{Project, waves};
use super::report::Phase;
use super::resolved::Resolved;
use super::session::Session;
use crate::envfile::{Machine, Ready, StepKind};
use crate::provision::{self, HashedStep, Mode, Record};

/// Whether the steps hashed now are those the machine's fingerprint was made of (at the
/// start of `up`): a file edited since then is not in its baked layer.
fn same_steps_as_fingerprint(
    resolved: &Resolved,
    machine: &str,
    hashed: &[HashedStep<'_>],
) -> bool {
    let Some(inputs) = resolved.inputs(machine) else {
        return false;
    };
    hashed.iter().all(|h| {
        inputs
            .get(&h.label)
            .is_some_and(|v| h.hash.starts_with(v.as_str()))
    })
}

/// Reads the record kept inside the machine (when the cache does not know).
async fn read_machine_record(p: &dyn Provider, id: &str) -> Record {
    match p.read_file(id, provision::RECORD_PATH).await {
        Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or_default(),
        _ => Record::default(),
    }
}

async fn write_machine_record(p: &dyn Provider, id: &str, record: &Record) -> Result<(), String> {
    let body = serde_json::to_vec_pretty(record).map_err(|e| e.to_string())?;
    // Uploaded at `/` with its whole path: the provider creates missing folders, so no
    // `mkdir` exec is needed.
    let tar = tar_bytes(provision::RECORD_PATH.trim_start_matches('/'), &body, 0o644)
        .map_err(|e| e.to_string())?;
    p.upload(id, "/", tar)
        .await
        .map_err(|e| format!("cannot write the provisioning record: {e}"))
}

/// Runs one step; `Err` carries the message for the user.
async fn run_step(
    ctx: &Context,
    dir: &Path,
    p: &dyn Provider,
    m: &Machine,
    id: &str,
    s: &HashedStep<'_>,
) -> Result<(), String> {
    let machine = m.name.as_str();
    let step = s.step;
    let base = ExecRequest {
        env: step.env.clone(),
        user: step.user.clone(),
        ..ExecRequest::default()
    };
    let argv = match &step.kind {
        StepKind::Shell(text) => vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            String::from_utf8_lossy(&provision::normalise(text.as_bytes())).into_owned(),
        ],
        StepKind::Script { path, args } => {
            let host = dir.join(path);
            let body =
                std::fs::read(&host).map_err(|e| format!("cannot read {}: {e}", host.display()))?;
            let body = provision::normalise(&body);
            let file = Path::new(path)
                .file_name()
                .map_or("script".into(), |f| f.to_string_lossy().into_owned());
            let name = format!("{}-{file}", s.hash);
            let guest = format!("{}/{name}", provision::SCRIPT_DIR);
            let tar = tar_bytes(guest.trim_start_matches('/'), &body, 0o755)
                .map_err(|e| e.to_string())?;
            p.upload(id, "/", tar)
                .await
                .map_err(|e| format!("cannot copy {path} in: {e}"))?;
            provision::script_argv(&format!("{}/{name}", provision::SCRIPT_DIR), &body, args)
        }
        StepKind::File {
            source,
            destination,
        } => {
            let tar = tar_of(&dir.join(source), destination.trim_matches('/'), false)
                .map_err(|e| format!("cannot read {source}: {e}"))?;
            p.upload(id, "/", tar)
                .await
                .map_err(|e| format!("cannot copy {source} to {destination}: {e}"))?;
            match &step.user {
                Some(u) => vec![
                    "chown".to_string(),
                    "-R".to_string(),
                    u.clone(),
                    destination.clone(),
                ],
                None => return Ok(()),
            }
        }
    };
    let req = ExecRequest { argv, ..base };
    let req = if matches!(step.kind, StepKind::File { .. }) {
        ExecRequest { user: None, ..req }
    } else {
        req
    };
    let (code, tail) = run_streamed(ctx, p, machine, id, &req).await?;
    if code == 0 {
        Ok(())
    } else {
        Err(format!(
            "{} (#{}) failed with exit status {code}{tail}",
            s.label,
            step.index + 1
        ))
    }
}

/// Provisions one machine: chooses its steps, runs them in order, records each that ran
/// (inside the machine and in the cache). Returns how many ran.
/// One machine's resource, as provisioning sees it.
pub struct Target<'a> {
    pub provider: &'a Arc<dyn Provider>,
    pub machine: &'a Machine,
    pub id: &'a str,
    /// Just created: nothing has run on it, no need to look.
    pub fresh: bool,
    /// Just created from the baked layer of its fingerprint: what ran is known without
    /// looking (see [`Record::baked`]).
    pub from_layer: bool,
    /// Bake the machine into the layer of its fingerprint once its `once` steps ran: they
    /// run first, then the layer is made, then the `always` steps run, so a layer never holds
    /// what an `always` step did (it runs again on every machine made from the layer).
    pub bake: bool,
}

pub async fn provision_machine(
    ctx: &Context,
    session: &Session,
    project: &Project,
    resolved: &Resolved,
    target: Target<'_>,
    mode: &Mode,
) -> Result<usize, String> {
    let Target {
        provider: p,
        machine: m,
        id,
        fresh,
        from_layer,
        bake,
    } = target;
    if m.provision.is_empty() {
        return Ok(0);
    }
    let machine = m.name.as_str();
    let hashed = provision::hash_steps(&project.envfile.dir, &m.provision)
        .map_err(|e| format!("cannot read a step's files: {e}"))?;
    let mut record = if fresh {
        Some(Record::default())
    } else if from_layer && same_steps_as_fingerprint(resolved, machine, &hashed) {
        Some(Record::baked(&hashed))
    } else {
        session.provisioned(machine, id)
    };
    // Nothing can run when every step is known to have run and none is `always`: decided
    // without touching the machine (the no-op `up` stays fast).
    if let Some(r) = &record
        && provision::choose(&hashed, r, mode).is_empty()
    {
        return Ok(0);
    }
    let mut record = match record.take() {
        Some(r) => r,
        None => read_machine_record(p.as_ref(), id).await,
    };
    let mut to_run = provision::choose(&hashed, &record, mode);
    let bake_at = if bake {
        Some(provision::once_steps_first(&mut to_run))
    } else {
        None
    };
    if to_run.is_empty() {
        session
            .set_provisioned(machine, &m.provider, id, Some(record))
            .map_err(|e| e.to_string())?;
        return Ok(0);
    }
    // While steps run the cache does not claim to know: a crash makes the next run read
    // the record inside the machine, which is written after every step.
    session
        .set_provisioned(machine, &m.provider, id, None)
        .map_err(|e| e.to_string())?;
    let mut ran = 0;
    for (i, t) in to_run.iter().enumerate() {
        if bake_at == Some(i) && i > 0 {
            super::bake::bake(ctx, project, resolved, p, m, id).await;
        }
        if ctx.cancelled() {
            let _ = session.set_provisioned(machine, &m.provider, id, Some(record));
            return Err(format!("interrupted before {}", t.step.label));
        }
        ctx.reporter.event(
            Some(machine),
            Phase::Provision,
            &format!("running {} ({})", t.step.label, t.reason),
        );
        let started = Instant::now();
        if let Err(e) = run_step(ctx, &project.envfile.dir, p.as_ref(), m, id, &t.step).await {
            let _ = session.set_provisioned(machine, &m.provider, id, Some(record));
            return Err(e);
        }
        ran += 1;
        record.ran(&t.step, &hashed);
        write_machine_record(p.as_ref(), id, &record).await?;
        ctx.reporter.event(
            Some(machine),
            Phase::Provision,
            &format!(
                "{} done in {:.1}s",
                t.step.label,
                started.elapsed().as_secs_f64()
            ),
        );
    }
    if bake_at == Some(to_run.len()) && ran > 0 {
        super::bake::bake(ctx, project, resolved, p, m, id).await;
    }
    session
        .set_provisioned(machine, &m.provider, id, Some(record))
        .map_err(|e| e.to_string())?;
    Ok(ran)
}

/// Runs `steps` (a generation's `always` steps, whose files are under `dir`) in order, with
/// no record: what `rollback` does when it starts an older generation. Stops at the first
/// failure.
pub async fn run_always(
    ctx: &Context,
    p: &dyn Provider,
    m: &Machine,
    id: &str,
    dir: &Path,
    steps: &[crate::envfile::Step],
) -> Result<usize, String> {
    let hashed = provision::hash_steps(dir, steps)
        .map_err(|e| format!("cannot read a step's files: {e}"))?;
    let machine = m.name.as_str();
    for s in &hashed {
        if ctx.cancelled() {
            return Err(format!("interrupted before {}", s.label));
        }
        ctx.reporter.event(
            Some(machine),
            Phase::Provision,
            &format!("running {} (run = \"always\")", s.label),
        );
        run_step(ctx, dir, p, m, id, s).await?;
    }
    Ok(hashed.len())
}

/// Runs the readiness check until it passes or its timeout is over.
pub async fn wait_ready(
    ctx: &Context,
    p: &dyn Provider,
    machine: &str,
    id: &str,
    ready: &Ready,
) -> Result<(), String> {
    // A timeout read back from a resource may be anything: past what `Instant` holds, the
    // deadline is "never" (a year on), not a panic.
    let far = Duration::from_secs(365 * 86400);
    let deadline = Instant::now()
        .checked_add(ready.timeout)
        .unwrap_or_else(|| Instant::now() + far);
    let argv = ["/bin/sh", "-c", ready.command.as_str()];
    ctx.reporter.event(
        Some(machine),
        Phase::Ready,
        &format!("waiting until `{}` succeeds", ready.command),
    );
    let started = Instant::now();
    // The last completed attempt; an attempt cut short by the deadline does not replace it.
    let mut last: Option<(i64, String)> = None;
    // Bounded by the deadline; the interval is at least 50ms so a typo cannot spin.
    let interval = ready.interval.max(Duration::from_millis(50));
    loop {
        let attempt = tokio::select! {
            a = tokio::time::timeout(
                deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(10),
                run_quiet(p, id, &argv),
            ) => a,
            _ = ctx.interrupted() => return Err("interrupted while waiting for it to be ready".to_string()),
        };
        match attempt {
            Ok(Ok((0, _))) => {
                ctx.reporter.event(
                    Some(machine),
                    Phase::Ready,
                    &format!("ready after {:.1}s", started.elapsed().as_secs_f64()),
                );
                return Ok(());
            }
            Ok(Ok(r)) => last = Some(r),
            Ok(Err(e)) => last = Some((-1, e)),
            Err(_) => {
                last.get_or_insert((-1, "the check itself did not finish in time".to_string()));
            }
        }
        if ctx.cancelled() {
            return Err("interrupted while waiting for it to be ready".to_string());
        }
        if Instant::now()
            .checked_add(interval)
            .is_none_or(|t| t >= deadline)
        {
            let last = last.unwrap_or((-1, String::new()));
            let output = last.1.trim().lines().last().unwrap_or("").to_string();
            return Err(format!(
                "not ready after {}: the check `{}` last exited with status {}{}",
                humantime::format_duration(ready.timeout),
                ready.command,
                last.0,
                if output.is_empty() {
                    String::new()
                } else {
                    format!(" ({output})")
                }
            ));
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = ctx.interrupted() => return Err("interrupted while waiting for it to be ready".to_string()),
        }
    }
}

/// `envrig provision [MACHINE...] [--force] [--step NAME...]`: runs steps again on running
/// machines, in dependency order. Returns (machine, steps run).
pub async fn provision(
    ctx: &Context,
    project: &Project,
    machines: &[String],
    force: bool,
    steps: &[String],
) -> Result<Vec<(String, usize)>, OpError> {
    let selected = project.select(machines, false)?;
    if !steps.is_empty() {
        let all: Vec<crate::envfile::Step> = selected
            .iter()
            .flat_map(|m| m.provision.iter().cloned())
            .collect();
        let unknown = provision::unknown_step_names(&all, steps);
        if !unknown.is_empty() {
            return Err(OpError::Usage(format!(
                "no step named {} in the machines asked for (`--step` takes a step's `name`)",
                unknown
                    .iter()
                    .map(|u| format!("`{u}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    let mode = if !steps.is_empty() {
        Mode::Only(steps.to_vec())
    } else if force {
        Mode::Force("--force")
    } else {
        Mode::Pending
    };
    let session = Session::open(ctx, project).await?;
    let observed = observe(ctx, project).await?;
    session.refresh(&observed)?;
    let mut targets = Vec::new();
    let mut engines = BTreeMap::new();
    for m in &selected {
        let o = runnable(m.name.as_str(), &observed)?;
        engines.insert(m.name.to_string(), o.engine.clone());
        targets.push((*m, o.id.clone()));
    }
    let mut done = Vec::new();
    let mut failures = Vec::new();
    let order: Vec<&Machine> = targets.iter().map(|(m, _)| *m).collect();
    // Nothing is resolved: steps run again in place, and no layer is baked.
    let resolved = Resolved::default();
    for wave in waves(&order) {
        // A machine whose dependency failed (or was skipped) is skipped, and says so;
        // independent machines go on.
        let (wave, skipped): (Vec<&Machine>, Vec<&Machine>) = wave.into_iter().partition(|m| {
            !m.depends_on.iter().any(|d| {
                failures
                    .iter()
                    .any(|(f, _): &(String, String)| f == d.as_str())
            })
        });
        for m in skipped {
            let dep = m
                .depends_on
                .iter()
                .find(|d| failures.iter().any(|(f, _)| f == d.as_str()))
                .map(|d| d.to_string())
                .unwrap_or_default();
            let e = format!("not provisioned: its dependency `{dep}` failed");
            ctx.reporter.event(Some(m.name.as_str()), Phase::Failed, &e);
            failures.push((m.name.to_string(), e));
        }
        let jobs = wave.iter().map(|m| {
            let id = targets
                .iter()
                .find(|(t, _)| t.name == m.name)
                .map(|(_, id)| id.clone())
                .unwrap_or_default();
            let (session, mode, resolved) = (&session, &mode, &resolved);
            let engine = engines.get(m.name.as_str()).cloned().unwrap_or_default();
            async move {
                let r = match provider_at(ctx, &m.provider, &engine).await {
                    Ok(p) => {
                        // Synced folders that are copies, not live mounts, are copied again
                        // first, so the steps see the host's files.
                        match p.refresh_synced(&id).await {
                            Ok(lines) => {
                                for l in lines {
                                    ctx.reporter
                                        .event(Some(m.name.as_str()), Phase::Warning, &l);
                                }
                                provision_machine(
                                    ctx,
                                    session,
                                    project,
                                    resolved,
                                    Target {
                                        provider: &p,
                                        machine: m,
                                        id: &id,
                                        fresh: false,
                                        from_layer: false,
                                        bake: false,
                                    },
                                    mode,
                                )
                                .await
                                .map(|n| (n, p))
                            }
                            Err(e) => Err(format!("cannot copy its synced folders: {e}")),
                        }
                    }
                    Err(e) => Err(e.to_string()),
                };
                // Provisioned again on purpose: what `drift` compares with from now on.
                let r = match r {
                    Ok((n, p)) => {
                        if n > 0
                            && let Err(e) = p.mark_baseline(&id).await
                        {
                            ctx.reporter.event(
                                Some(m.name.as_str()),
                                Phase::Warning,
                                &format!("cannot record its files for `envrig drift`: {e}"),
                            );
                        }
                        Ok(n)
                    }
                    Err(e) => Err(e),
                };
                (m.name.to_string(), r)
            }
        });
        for (name, r) in futures_util::future::join_all(jobs).await {
            match r {
                Ok(n) => done.push((name, n)),
                Err(e) => {
                    ctx.reporter.event(Some(&name), Phase::Failed, &e);
                    failures.push((name, e));
                }
            }
        }
    }
    if !failures.is_empty() {
        return Err(OpError::Machines {
            total: selected.len(),
            failures,
        });
    }
    Ok(done)
}
