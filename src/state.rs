//! The per-project state folder, `.envrig/` beside the Envfile.
//!
//! It is only a cache: the engines' labels are the truth, and every command works when the
//! folder is deleted. Writes are atomic (a temporary file renamed into place) and made under
//! an exclusive lock, which the kernel releases when its holder dies, so a crashed envrig
//! never leaves a lock that others wait on forever.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The cache's format version.
const FORMAT: u32 = 1;

/// What the last command saw of each machine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StateCache {
    pub format: u32,
    pub env_id: String,
    pub project: String,
    pub machines: BTreeMap<String, MachineRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineRecord {
    pub provider: String,
    /// The engine it is on (`local`: the provider's local engine).
    #[serde(default = "local_engine")]
    pub engine: String,
    pub id: String,
    pub resource_name: String,
    pub generation: u32,
    pub config: String,
    pub state: String,
    /// What provisioning ran on this resource; `None` when unknown (then the record inside
    /// the machine is read).
    #[serde(default)]
    pub provisioned: Option<crate::provision::Record>,
}

fn local_engine() -> String {
    crate::engines::LOCAL.to_string()
}

/// The `.envrig/` folder of one project.
#[derive(Debug, Clone)]
pub struct StateDir {
    pub path: PathBuf,
}

/// An exclusive hold on a project's state; released on drop (or when the process dies).
#[derive(Debug)]
pub struct StateLock {
    file: File,
    /// The previous holder died while holding it (its engine calls may still be running).
    pub previous_crashed: Option<String>,
}

/// What a lock file says when its holder let go cleanly.
const RELEASED: &str = "released";

impl Drop for StateLock {
    fn drop(&mut self) {
        // Best effort: a holder that dies skips this, which is how the next one knows.
        let _ = self.file.set_len(0);
        let _ = self.file.rewind();
        let _ = self.file.write_all(RELEASED.as_bytes());
    }
}

impl StateDir {
    pub fn new(envfile_dir: &Path) -> StateDir {
        StateDir {
            path: envfile_dir.join(".envrig"),
        }
    }

    /// A state folder at an explicit path (the environment of one `envrig run`).
    pub fn at(path: PathBuf) -> StateDir {
        StateDir { path }
    }

    /// Removes the folder (after its environment was destroyed).
    pub fn remove(&self) -> std::io::Result<()> {
        match std::fs::remove_dir_all(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn ensure(&self) -> std::io::Result<()> {
        if !self.path.is_dir() {
            std::fs::create_dir_all(&self.path)?;
        }
        // Keep the cache and generated keys out of version control without asking.
        if let Some(top) = self
            .path
            .ancestors()
            .find(|a| a.file_name().is_some_and(|n| n == ".envrig"))
        {
            let ignore = top.join(".gitignore");
            if !ignore.exists() {
                std::fs::write(ignore, "*\n")?;
            }
        }
        Ok(())
    }

    /// Takes the exclusive lock, calling `waiting` once if another process holds it.
    pub fn lock(&self, waiting: impl FnOnce(&str)) -> std::io::Result<StateLock> {
        self.ensure()?;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.path.join("lock"))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                waiting(holder.trim());
                file.lock()?;
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        let mut before = String::new();
        file.rewind()?;
        let _ = file.read_to_string(&mut before);
        let before = before.trim();
        let previous_crashed = before.starts_with("pid ").then(|| before.to_string());
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "pid {}", std::process::id())?;
        // The cache a killed holder was writing.
        envrig_provider_api::work::sweep(&self.path);
        Ok(StateLock {
            file,
            previous_crashed,
        })
    }

    /// Takes the lock if nobody holds it; `None` when another process does. Never creates
    /// the folder.
    pub fn try_lock(&self) -> std::io::Result<Option<StateLock>> {
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path.join("lock"))
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !self.path.is_dir() {
                    return Err(e);
                }
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(self.path.join("lock"))?
            }
            Err(e) => return Err(e),
        };
        match file.try_lock() {
            Ok(()) => Ok(Some(StateLock {
                file,
                previous_crashed: None,
            })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }

    /// Reads the cache; a missing or unreadable one is an empty cache (it is only a cache).
    pub fn read(&self) -> StateCache {
        std::fs::read(self.path.join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<StateCache>(&b).ok())
            .filter(|s| s.format == FORMAT)
            .unwrap_or_default()
    }

    /// Replaces the cache atomically. Needs the lock.
    pub fn write(&self, _lock: &StateLock, state: &StateCache) -> std::io::Result<()> {
        self.ensure()?;
        let mut state = state.clone();
        state.format = FORMAT;
        // Written under this process's work name and renamed: what a killed envrig left is
        // recognised and swept by the next lock holder.
        let tmp = self
            .path
            .join(envrig_provider_api::work::name("state.json"));
        let mut text = serde_json::to_vec_pretty(&state)?;
        text.push(b'\n');
        // No fsync: the rename keeps the file whole if envrig dies, and after a power loss
        // the engines (the truth) rebuild whatever the cache lost.
        let written = std::fs::write(&tmp, &text)
            .and_then(|_| std::fs::rename(&tmp, self.path.join("state.json")));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_round_trips_and_tolerates_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::new(dir.path());
        assert_eq!(sd.read(), StateCache::default());
        let lock = sd.lock(|_| panic!("nobody else holds it")).unwrap();
        let mut s = StateCache {
            env_id: "abc".into(),
            project: "p".into(),
            ..StateCache::default()
        };
        s.machines.insert(
            "web".into(),
            MachineRecord {
                provider: "docker".into(),
                engine: "local".into(),
                id: "123".into(),
                resource_name: "p-abc-web-1".into(),
                generation: 1,
                config: "c".into(),
                state: "running".into(),
                provisioned: None,
            },
        );
        sd.write(&lock, &s).unwrap();
        assert_eq!(sd.read().machines, s.machines);
        std::fs::write(sd.path.join("state.json"), "{ not json").unwrap();
        assert_eq!(
            sd.read(),
            StateCache::default(),
            "a corrupt cache reads as empty"
        );
        assert_eq!(
            std::fs::read_to_string(sd.path.join(".gitignore")).unwrap(),
            "*\n"
        );
    }

    #[test]
    fn a_holder_that_died_is_noticed_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::new(dir.path());
        let first = sd.lock(|_| {}).unwrap();
        assert_eq!(first.previous_crashed, None);
        drop(first);
        assert_eq!(
            sd.lock(|_| {}).unwrap().previous_crashed,
            None,
            "a clean release"
        );
        // A holder killed mid-way leaves its pid behind (the kernel drops its flock).
        std::fs::write(sd.path.join("lock"), "pid 4194304").unwrap();
        let next = sd.lock(|_| {}).unwrap();
        assert_eq!(next.previous_crashed.as_deref(), Some("pid 4194304"));
        drop(next);
        assert_eq!(sd.lock(|_| {}).unwrap().previous_crashed, None);
    }

    #[test]
    fn a_second_locker_waits_and_is_told() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::new(dir.path());
        let first = sd.lock(|_| {}).unwrap();
        let sd2 = sd.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            let _l = sd2
                .lock(|holder| tx.send(holder.to_string()).unwrap())
                .unwrap();
        });
        let holder = rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        assert_eq!(holder, format!("pid {}", std::process::id()));
        drop(first);
        t.join().unwrap();
    }
}
