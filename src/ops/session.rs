//! A mutating command's hold on a project ([`Session`]): the project lock, and the state
//! cache it keeps current.

use super::context::Context;
use super::error::OpError;
use super::observe::observe;
use super::project::Project;
use super::report::Phase;
use crate::plan::Observed;
use crate::state::{StateCache, StateDir, StateLock};

/// A mutating command's hold on a project: the lock, and the state cache it keeps current.
pub struct Session {
    lock: StateLock,
    dir: StateDir,
    cache: std::sync::Mutex<StateCache>,
    /// The cache was this environment's when opened: it knows where its machines were.
    known: bool,
}

impl Session {
    /// Takes the project's lock (off the async threads: it may wait for another process)
    /// and reads the cache.
    pub async fn open(ctx: &Context, project: &Project) -> Result<Session, OpError> {
        let dir = project.state.clone();
        let reporter = ctx.reporter.clone();
        let d = dir.clone();
        let lock =
            tokio::task::spawn_blocking(move || d.lock(|holder| reporter.waiting_for_lock(holder)))
                .await
                .map_err(|e| OpError::Io {
                    context: "cannot take the state lock".into(),
                    source: std::io::Error::other(e),
                })?
                .map_err(|source| OpError::Io {
                    context: format!("cannot lock {}", project.state.path.display()),
                    source,
                })?;
        if let Some(holder) = &lock.previous_crashed {
            ctx.reporter.event(
                None,
                Phase::Warning,
                &format!("the previous envrig on this environment ({holder}) stopped mid-way; waiting for its engine calls to settle"),
            );
            settle(ctx, project).await?;
        }
        let mut cache = dir.read();
        let known = cache.env_id == project.identity.env_id;
        if !known {
            cache = StateCache {
                env_id: project.identity.env_id.clone(),
                project: project.identity.project.to_string(),
                ..StateCache::default()
            };
        }
        Ok(Session {
            lock,
            dir,
            cache: std::sync::Mutex::new(cache),
            known,
        })
    }

    fn write(&self, cache: &StateCache) -> Result<(), OpError> {
        self.dir
            .write(&self.lock, cache)
            .map_err(|source| OpError::Io {
                context: format!("cannot write {}", self.dir.path.display()),
                source,
            })
    }

    fn with<T>(&self, f: impl FnOnce(&mut StateCache) -> T) -> Result<T, OpError> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let t = f(&mut cache);
        self.write(&cache)?;
        Ok(t)
    }

    /// Rewrites the machines from what the engines report now, keeping what is known of the
    /// provisioning of resources that are still the same.
    pub fn refresh(&self, observed: &[Observed]) -> Result<(), OpError> {
        self.refresh_reachable(observed, &[])
    }

    /// As [`Session::refresh`], keeping what the cache knows of machines on engines that
    /// do not answer (they are still there, as far as anyone knows).
    pub fn refresh_reachable(
        &self,
        observed: &[Observed],
        unreachable: &[super::context::Unreachable],
    ) -> Result<(), OpError> {
        self.with(|cache| {
            let mut old = std::mem::take(&mut cache.machines);
            let away = |r: &crate::state::MachineRecord| {
                unreachable
                    .iter()
                    .any(|u| u.provider == r.provider && u.engine == r.engine)
            };
            old.retain(|name, r| {
                let keep = away(r) && !observed.iter().any(|o| &o.machine == name);
                if keep {
                    cache.machines.insert(name.clone(), r.clone());
                }
                !keep
            });
            for o in observed {
                let (cur, _) = crate::plan::current(&o.machine, observed);
                if cur.map(|c| &c.id) != Some(&o.id) {
                    continue;
                }
                let provisioned = old
                    .get(&o.machine)
                    .filter(|r| r.id == o.id)
                    .and_then(|r| r.provisioned.clone());
                cache.machines.insert(
                    o.machine.clone(),
                    crate::state::MachineRecord {
                        provider: o.provider.clone(),
                        engine: o.engine.clone(),
                        id: o.id.clone(),
                        resource_name: o.resource_name.clone(),
                        generation: o.generation,
                        config: o.config.clone(),
                        state: o.state.as_str().to_string(),
                        provisioned,
                    },
                );
            }
        })
    }

    /// The machines the cache places on `provider`'s engine `engine`.
    pub fn machines_on(&self, provider: &str, engine: &str) -> Vec<String> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .machines
            .iter()
            .filter(|(_, r)| r.provider == provider && r.engine == engine)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Whether the cache knew this environment when the session opened (else it cannot say
    /// where any machine was: a fresh checkout, or a deleted `.envrig/`).
    pub fn knows_environment(&self) -> bool {
        self.known
    }

    /// Where the cache says `machine` is (provider, engine), when it knows.
    pub fn placed(&self, machine: &str) -> Option<(String, String)> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .machines
            .get(machine)
            .map(|r| (r.provider.clone(), r.engine.clone()))
    }

    /// What the cache knows ran on resource `id` of `machine`; `None` when it does not know.
    pub fn provisioned(&self, machine: &str, id: &str) -> Option<crate::provision::Record> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .machines
            .get(machine)
            .filter(|r| r.id == id)
            .and_then(|r| r.provisioned.clone())
    }

    /// Records what ran on resource `id` of `machine` (`None`: unknown, e.g. while it runs).
    pub fn set_provisioned(
        &self,
        machine: &str,
        provider: &str,
        id: &str,
        record: Option<crate::provision::Record>,
    ) -> Result<(), OpError> {
        self.with(|cache| {
            let entry = cache
                .machines
                .entry(machine.to_string())
                .or_insert_with(|| crate::state::MachineRecord {
                    provider: provider.to_string(),
                    engine: crate::engines::LOCAL.to_string(),
                    id: id.to_string(),
                    resource_name: String::new(),
                    generation: 1,
                    config: String::new(),
                    state: String::new(),
                    provisioned: None,
                });
            if entry.id != id {
                entry.id = id.to_string();
            }
            entry.provisioned = record;
        })
    }
}

/// Waits (at most 15 s) until the engines look the same for 1.5 s (four looks half a second
/// apart): calls a killed envrig made (a removal, a start, a commit) finish on the engine
/// after it died, and a busy engine may take over a second to begin one.
async fn settle(ctx: &Context, project: &Project) -> Result<(), OpError> {
    let key = |v: &[Observed]| {
        let mut k: Vec<(String, &'static str)> =
            v.iter().map(|o| (o.id.clone(), o.state.as_str())).collect();
        k.sort();
        k
    };
    let mut last = key(&observe(ctx, project).await?);
    let mut same = 0;
    for _ in 0..30 {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let now = key(&observe(ctx, project).await?);
        if now == last {
            same += 1;
            if same >= 3 {
                return Ok(());
            }
        } else {
            same = 0;
        }
        last = now;
    }
    Ok(())
}
