//! An environment's identity: the project name plus the folder it lives in.
//!
//! Two checkouts of one project (same name, different folders, as on a CI runner) get
//! different identities, so they never see or touch each other's machines: Compose's classic
//! collision, avoided. The identity is written on every resource as labels.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use envrig_provider_api::hash::{hex, sha256_hex};
use envrig_provider_api::labels;
use sha2::{Digest, Sha256};

use crate::envfile::Name;

/// Who an environment is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub project: Name,
    /// The Envfile's folder, canonicalised.
    pub folder: PathBuf,
    /// The Envfile itself.
    pub envfile: PathBuf,
    /// `sha256(project NUL folder [NUL instance])`, 16 hex digits.
    pub env_id: String,
    /// Set for the environment of one `envrig run`: it has an identity of its own, so
    /// parallel runs in one checkout never collide.
    pub instance: Option<String>,
}

impl Identity {
    pub fn new(project: &Name, folder: &Path, envfile: &Path, instance: Option<&str>) -> Identity {
        let folder = folder
            .canonicalize()
            .unwrap_or_else(|_| folder.to_path_buf());
        let mut h = Sha256::new();
        h.update(project.as_str().as_bytes());
        h.update([0]);
        h.update(folder.to_string_lossy().as_bytes());
        if let Some(i) = instance {
            h.update([0]);
            h.update(i.as_bytes());
        }
        let env_id = hex(&h.finalize())[..16].to_string();
        Identity {
            project: project.clone(),
            folder,
            // Canonical, so `gc` can still tell whether it exists when a folder on the way
            // (`-f ../x/Envfile`) goes.
            envfile: envfile
                .canonicalize()
                .unwrap_or_else(|_| envfile.to_path_buf()),
            env_id,
            instance: instance.map(str::to_string),
        }
    }

    /// The short form of the id shown to people and used in resource names.
    pub fn short_id(&self) -> &str {
        &self.env_id[..8]
    }

    /// The engine-side name of a machine's resource: `shop-3f2a9c1b-web-1`. Only validated
    /// names reach it, so it is always a valid container or domain name.
    pub fn resource_name(&self, machine: &Name, generation: u32) -> String {
        format!(
            "{}-{}-{}-{generation}",
            self.project,
            self.short_id(),
            machine
        )
    }

    /// The labels of a machine's resources, except the config hash and provider.
    pub fn labels(
        &self,
        machine: &Name,
        generation: u32,
        created: &str,
    ) -> BTreeMap<String, String> {
        let mut l = BTreeMap::from([
            (labels::ENV.to_string(), self.env_id.clone()),
            (labels::PROJECT.to_string(), self.project.to_string()),
            (
                labels::FOLDER.to_string(),
                self.folder.to_string_lossy().into_owned(),
            ),
            (
                labels::ENVFILE.to_string(),
                self.envfile.to_string_lossy().into_owned(),
            ),
            (labels::MACHINE.to_string(), machine.to_string()),
            (labels::GENERATION.to_string(), generation.to_string()),
            (labels::VERSION.to_string(), crate::VERSION.to_string()),
            (labels::CREATED.to_string(), created.to_string()),
            (labels::HOST.to_string(), host_token()),
        ]);
        if let Some(i) = &self.instance {
            l.insert(labels::INSTANCE.to_string(), i.clone());
        }
        l
    }
}

/// A new instance id for `envrig run`: `run-` and 8 hex digits, unique on this host.
pub fn new_instance_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let seed = format!("{nanos}:{}:{}", std::process::id(), owner_token());
    format!("run-{}", &sha256_hex(seed.as_bytes())[..8])
}

/// This host and namespace: `MACHINE_ID/MNT_NS/PID_NS`. Paths and pids mean something only
/// within one of these, so `gc` leaves resources of another alone (a CI job container that
/// shares the Docker socket sees neither the host's folders nor its processes).
pub fn host_token() -> String {
    let machine = std::fs::read_to_string("/etc/machine-id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    let ns = |n: &str| {
        std::fs::read_link(format!("/proc/self/ns/{n}"))
            .ok()
            .map(|p| {
                p.to_string_lossy()
                    .trim_start_matches(n)
                    .trim_matches([':', '[', ']'])
                    .to_string()
            })
            .unwrap_or_default()
    };
    format!("{machine}/{}/{}", ns("mnt"), ns("pid"))
}

/// Whether `id` is an instance id as [`new_instance_id`] makes them.
pub fn valid_instance_id(id: &str) -> bool {
    id.strip_prefix("run-").is_some_and(|rest| {
        !rest.is_empty() && rest.len() <= 36 && rest.chars().all(|c| c.is_ascii_alphanumeric())
    })
}

fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
}

/// A process's start time in clock ticks since boot (field 22 of `/proc/PID/stat`).
fn start_time(pid: &str) -> Option<String> {
    proc_stat(pid).map(|(_, start)| start)
}

/// The state letter (field 3) and start time (field 22) of a process, from `/proc/PID/stat`.
fn proc_stat(pid: &str) -> Option<(char, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

fn parse_stat(stat: &str) -> Option<(char, String)> {
    // The command name (field 2) is in parentheses and may hold spaces: skip past it.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.nth(18)?.to_string()))
}

/// This process, as `BOOT_ID:PID:START_TIME`: survives PID reuse and reboots.
pub fn owner_token() -> String {
    let pid = std::process::id().to_string();
    format!(
        "{}:{pid}:{}",
        boot_id().unwrap_or_default(),
        start_time(&pid).unwrap_or_default()
    )
}

/// Whether the process named by an [`owner_token`] still runs. When it cannot tell (a token
/// from another format), it says yes: `gc` never removes what may still be in use.
pub fn owner_alive(token: &str) -> bool {
    let mut parts = token.splitn(3, ':');
    let (Some(boot), Some(pid), Some(start)) = (parts.next(), parts.next(), parts.next()) else {
        return true;
    };
    if pid.is_empty() || !pid.chars().all(|c| c.is_ascii_digit()) {
        return true;
    }
    if let Some(now) = boot_id()
        && !boot.is_empty()
        && now != boot
    {
        return false;
    }
    // A zombie (`Z`) or dying (`X`) process is dead, though its entry lingers until its parent
    // (or a slow PID 1) reaps it.
    match proc_stat(pid) {
        Some(('Z' | 'X' | 'x', _)) => false,
        Some((_, t)) => start.is_empty() || t == start,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_give_state_and_start_even_with_odd_command_names() {
        let line =
            "4242 (envrig (run) x) Z 1 4242 4242 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 987654 0 0";
        assert_eq!(parse_stat(line), Some(('Z', "987654".to_string())));
        assert_eq!(parse_stat("1 (a) S 0"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn same_name_in_two_folders_gives_two_identities() {
        let name = Name::parse("shop").unwrap();
        let a = Identity::new(
            &name,
            Path::new("/nonexistent/a/shop"),
            Path::new("/nonexistent/a/shop/Envfile"),
            None,
        );
        let b = Identity::new(
            &name,
            Path::new("/nonexistent/b/shop"),
            Path::new("/nonexistent/b/shop/Envfile"),
            None,
        );
        let run = Identity::new(
            &name,
            Path::new("/nonexistent/a/shop"),
            Path::new("/nonexistent/a/shop/Envfile"),
            Some("run-1"),
        );
        assert_ne!(a.env_id, run.env_id, "a run has an identity of its own");
        assert_ne!(a.env_id, b.env_id);
        assert_eq!(a.env_id.len(), 16);
        let web = Name::parse("web").unwrap();
        assert_eq!(
            a.resource_name(&web, 1),
            format!("shop-{}-web-1", &a.env_id[..8])
        );
        let again = Identity::new(
            &name,
            Path::new("/nonexistent/a/shop"),
            Path::new("/nonexistent/a/shop/Envfile"),
            None,
        );
        assert_eq!(a, again, "the identity is stable");
    }

    #[test]
    fn owner_tokens_tell_live_processes_from_dead_ones() {
        let me = owner_token();
        assert!(owner_alive(&me), "{me}");
        let parts: Vec<&str> = me.split(':').collect();
        assert!(
            !owner_alive(&format!("{}:{}:1", parts[0], parts[1])),
            "same pid, other start time: reused"
        );
        assert!(
            !owner_alive(&format!("{}:4194304999:1", parts[0])),
            "no such pid"
        );
        assert!(
            !owner_alive(&format!("other-boot:{}:{}", parts[1], parts[2])),
            "another boot"
        );
        assert!(owner_alive("not a token"), "unknown formats are kept");
        let host = host_token();
        assert_eq!(host.split('/').count(), 3, "{host}");
        assert!(host.split('/').all(|p| !p.is_empty()), "{host}");
        assert_eq!(host, host_token(), "stable");
        assert_ne!(new_instance_id(), new_instance_id());
    }
}
