//! The contract between envrig's core and the engines that run machines.
//!
//! The core plans and orchestrates; a [`Provider`] turns a provider-neutral [`MachineSpec`]
//! into a real resource (a Docker container, a libvirt domain) and reports what exists.
//! Every provider crate under `providers/` implements this one trait and passes the same
//! conformance suite ([`testkit`], behind the `testkit` feature).
//!
//! # Contract
//! - **The engine is the truth.** Every resource a provider creates carries the labels of its
//!   [`MachineSpec`] (Docker labels, libvirt `<metadata>`), and [`Provider::list`] reads them
//!   back. A provider keeps no state of its own between calls.
//! - **Idempotent teardown.** [`Provider::stop`] of a stopped machine and [`Provider::remove`]
//!   of a missing one succeed. [`Provider::purge`] of an environment with nothing left succeeds.
//! - **Not atomic.** [`Provider::create`] may leave a labelled, created-but-not-started resource
//!   behind when it fails half-way; because it is labelled, `destroy` and `gc` find it.
//! - **Semantic errors.** Every engine error is mapped into [`ProviderError`], so the core can
//!   tell "not found" from "engine unreachable" without knowing the engine.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

pub mod drift;
pub mod export;
pub mod hash;
pub mod home;
pub mod labels;
mod network;
pub mod oci;
pub mod plugin;
mod provider;
pub mod registry;
pub mod schema;
pub mod subnet;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod version;
pub mod work;

pub use labels::Selector;
pub use network::{NetworkAttachment, NetworkSpec, SharedNetwork};
pub use provider::Provider;
pub use schema::Schema;

/// A boxed, thread-safe error source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The one error type every provider returns.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The engine cannot be reached at all (daemon down, socket missing, permission denied).
    #[error("the {provider} engine is not reachable: {message}")]
    Unavailable {
        provider: &'static str,
        message: String,
        hint: Option<String>,
    },
    /// This host has no engine of this provider at all (not installed, nothing answers):
    /// it can hold nothing, so commands that look at the whole host pass it by quietly.
    #[error("the {provider} engine is not installed here: {message}")]
    NotInstalled {
        provider: &'static str,
        message: String,
        hint: Option<String>,
    },
    /// A named thing (machine, image, box) does not exist.
    #[error("{what} not found")]
    NotFound { what: String },
    /// The provider cannot do this at all.
    #[error("{what} is not supported by the {provider} provider")]
    NotSupported {
        provider: &'static str,
        what: String,
    },
    /// The engine refused because the resource is in the wrong state or already exists.
    #[error("{message}")]
    Conflict { message: String },
    /// An input from elsewhere (an imported file) is refused as unsafe: `message` says what
    /// it would have done.
    #[error("{message}")]
    Refused { message: String },
    /// Any other engine failure, naming the operation that failed.
    #[error("{provider}: {op} failed: {source}")]
    Engine {
        provider: &'static str,
        op: String,
        #[source]
        source: BoxError,
    },
}

impl ProviderError {
    /// A user-facing next step, when there is one.
    pub fn hint(&self) -> Option<&str> {
        match self {
            ProviderError::Unavailable { hint, .. } | ProviderError::NotInstalled { hint, .. } => {
                hint.as_deref()
            }
            _ => None,
        }
    }
}

pub type Result<T, E = ProviderError> = std::result::Result<T, E>;

/// What a provider can do; `validate` rejects Envfile keys a provider cannot honour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Capabilities {
    /// `command`: the machine's main process can be chosen.
    pub custom_command: bool,
    /// `synced` folders are live (bind mounts, virtiofs, 9p).
    pub live_synced_folders: bool,
    /// `ssh-config` can describe a real SSH endpoint.
    pub ssh: bool,
    /// `exec` can allocate a TTY for interactive shells.
    pub interactive: bool,
    /// Machines of an environment reach each other by name on a private network.
    pub private_network: bool,
    /// The provider keeps a store of bases (`envrig box`).
    pub box_store: bool,
    /// `drift` compares a machine with its base by itself (Docker's diff): a machine on
    /// which no step ran needs no baseline taken.
    pub drift_from_base: bool,
    /// The private network can span the engines of one cluster ([`NetworkSpec::span`]):
    /// an environment's machines may be on several of them and still reach each other by name.
    pub spanning_network: bool,
    /// The private network is on a bridge of the engine's host that another provider's
    /// machines on that host can join ([`crate::Provider::shared_network`]): in an
    /// environment of both, its machines and theirs reach each other by name.
    #[serde(default)]
    pub shares_network: bool,
    /// A baked layer can keep the machine's running memory, and machines made from it start
    /// from that memory instead of booting ([`MachineSpec::warm`]).
    #[serde(default)]
    pub warm_start: bool,
}

/// A base in a provider's own store (`envrig box list`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredBox {
    pub name: String,
    /// Its version, for a box added from a Vagrant box catalog (kept beside its other
    /// versions in the store as `NAME@VERSION`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// sha256 of its disk image.
    pub sha256: String,
    pub size: u64,
    /// Where it was added from.
    pub source: String,
    pub added: String,
    /// Whether it boots a kernel of its own (direct kernel boot).
    pub kernel: bool,
}

/// The lifecycle state of a machine as its engine reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum MachineState {
    /// Created but never started.
    Created,
    Running,
    Paused,
    /// Restarting or otherwise in motion.
    Transitioning,
    /// Being removed (by a command that may have died since): gone in a moment.
    Removing,
    /// Stopped (exited, shut off); the disk is kept.
    Stopped,
    /// The engine considers it broken (Docker's "dead").
    Dead,
    /// Its memory saved to disk and freed (libvirt's managed save): `resume` (or `up`)
    /// brings it back running where it was.
    Suspended,
}

impl MachineState {
    pub fn as_str(self) -> &'static str {
        match self {
            MachineState::Created => "created",
            MachineState::Running => "running",
            MachineState::Paused => "paused",
            MachineState::Transitioning => "transitioning",
            MachineState::Removing => "removing",
            MachineState::Stopped => "stopped",
            MachineState::Dead => "dead",
            MachineState::Suspended => "suspended",
        }
    }

    /// Whether `start` is the way to get this machine running.
    pub fn can_start(self) -> bool {
        matches!(self, MachineState::Created | MachineState::Stopped)
    }

    /// Whether the machine is held where it was (paused, or its memory saved): `resume`
    /// brings it back running.
    pub fn is_suspended(self) -> bool {
        matches!(self, MachineState::Paused | MachineState::Suspended)
    }

    /// Whether commands can be run in the machine.
    pub fn can_exec(self) -> bool {
        self == MachineState::Running
    }
}

impl fmt::Display for MachineState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A forwarded port: `host_ip:host_port` on the host to `guest_port` in the machine.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub struct PortSpec {
    pub host_ip: String,
    /// 0: any free port, chosen by the engine.
    pub host_port: u16,
    pub guest_port: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ip = if self.host_ip.contains(':') {
            format!("[{}]", self.host_ip)
        } else {
            self.host_ip.clone()
        };
        write!(
            f,
            "{ip}:{}->{}/{}",
            self.host_port,
            self.guest_port,
            self.protocol.as_str()
        )
    }
}

/// A host folder made visible inside the machine.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SyncedFolder {
    /// Absolute host path.
    pub host: String,
    /// Absolute guest path.
    pub guest: String,
    pub read_only: bool,
}

/// Everything a provider needs to create one machine. Built by the core from a validated
/// Envfile: every string in it has been checked, so a provider may use names as they are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineSpec {
    /// The engine-side name of the resource (unique per environment, machine and generation).
    pub resource_name: String,
    /// The machine's name in the Envfile.
    pub machine: String,
    /// The provider's reference to the base (a docker image reference, a libvirt box).
    pub base: String,
    pub cpus: Option<u32>,
    pub memory_bytes: Option<u64>,
    pub hostname: String,
    pub env: BTreeMap<String, String>,
    /// The main process (providers with [`Capabilities::custom_command`] only).
    pub command: Option<Vec<String>>,
    pub ports: Vec<PortSpec>,
    pub synced: Vec<SyncedFolder>,
    /// Labels written on every resource created for this machine.
    pub labels: BTreeMap<String, String>,
    /// Provider-specific settings from `[machines.NAME.<provider>]`, already validated.
    pub options: BTreeMap<String, OptionValue>,
    /// The environment's private network, when it has one.
    pub network: Option<NetworkAttachment>,
    /// Generations of this machine replace one another (`immutable`): its host ports and
    /// names should survive from one generation to the next, so that a switch
    /// ([`Provider::stop_for_handover`] of one, [`Provider::start`] of the next) leaves as
    /// short a gap as it can. A provider may keep them on a resource of its own that
    /// outlives generations. Not part of the settings that shape the machine.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub handover: bool,
    /// Start warm ([`Capabilities::warm_start`]): `base` is a baked layer made with
    /// [`crate::labels::WARM`]; a provider restores the memory saved with it, then makes the
    /// machine a new one (its own addresses, names, keys and clock) before anything reaches
    /// it, and boots cold (saying why) when it cannot.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub warm: bool,
}

/// Where an engine is: an endpoint of `envrig engine add` (none: the provider's local
/// engine, as `DOCKER_HOST` or `LIBVIRT_DEFAULT_URI` say).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EngineAddress {
    /// `tcp://198.18.200.11:2375`, `ssh://ci@host`, `qemu+tcp://host/system`...
    pub uri: String,
    /// A folder holding `ca.pem`, `cert.pem` and `key.pem` (as `DOCKER_CERT_PATH`): the
    /// engine is reached over TLS with them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_path: Option<std::path::PathBuf>,
}

/// What an engine says of itself: `envrig engine ls`, and the headroom placement weighs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineInfo {
    /// The engine's own version (`20.10.24`, `libvirt 11.3.0`).
    pub version: String,
    /// CPUs of the host the engine runs machines on.
    pub cpus: u32,
    /// Memory of that host, in bytes.
    pub memory: u64,
    /// The cluster the engine belongs to, when it is part of one (a Docker Swarm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Cluster>,
}

/// An engine's place in a cluster of engines (a Docker Swarm) that shares networks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    /// The cluster's id: engines with the same id share spanning networks.
    pub id: String,
    /// This engine can make cluster-wide networks (a Swarm manager).
    pub manager: bool,
}

/// A provider-specific setting's value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OptionValue {
    Bool(bool),
    Int(i64),
    Str(String),
}

/// A machine as its engine reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineInfo {
    /// The engine's id for the resource (container id, domain UUID).
    pub id: String,
    /// The engine-side name.
    pub resource_name: String,
    pub state: MachineState,
    pub labels: BTreeMap<String, String>,
    /// Ports as published by the engine (may differ from the spec, e.g. random host ports).
    pub ports: Vec<PortSpec>,
}

/// A saved state of one machine: its whole filesystem (and, where the engine can, memory),
/// with the spec it had, so it can be recreated exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The engine's reference (docker: the image id); usable as a [`MachineSpec::base`].
    pub id: String,
    /// The snapshot's name (`s1`).
    pub name: String,
    pub machine: String,
    /// When it was saved (RFC 3339).
    pub created: String,
    /// Whether the machine ran when it was saved (a restore leaves it the same way).
    pub running: bool,
    /// The spec of the machine when it was saved.
    pub spec: MachineSpec,
    /// The labels written on the snapshot.
    pub labels: BTreeMap<String, String>,
}

/// A baked layer on this host: a machine's provisioned state kept as a base.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BakedLayer {
    /// Its base name (usable as [`MachineSpec::base`]).
    pub name: String,
    /// The full fingerprint of the machines it serves.
    pub fingerprint: String,
    /// When it was baked (RFC 3339), when known.
    pub created: String,
}

/// A resource that is not a machine (a network, a volume), as `gc` and `ls` see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OtherResource {
    /// `network`, `volume`.
    pub kind: &'static str,
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// The identity a base resolved to on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseInfo {
    /// The immutable id (docker image ID, box sha256).
    pub id: String,
}

/// The immutable identity of a base on this host, as a lock file pins it: nothing in it
/// names a host path or a time, so two hosts holding the same base agree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseIdentity {
    /// `sha256:...`: the docker image ID, the box disk's sha256.
    pub id: String,
    /// A pulled image's repository digest (`repo@sha256:...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The box's size in bytes (libvirt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// Progress while a base is fetched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PullProgress {
    /// A free-form status line from the engine.
    Status(String),
    /// Bytes done out of total, summed over layers.
    Bytes { done: u64, total: u64 },
}

/// A command to run inside a machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// User name or uid; the machine's default when `None`.
    pub user: Option<String>,
    pub workdir: Option<String>,
    /// As a person's command (`envrig exec`, `ssh MACHINE -- CMD`): run as the machine's
    /// login user when `user` is `None` (the one SSH logs in as; docker: the image's user),
    /// with that user's login environment (HOME, USER, LOGNAME, SHELL, LANG, PATH) and in
    /// their home folder unless `workdir` says otherwise, the same through a guest agent or
    /// SSH. `false` (provisioning, readiness checks): root or `user`, the engine's plain
    /// environment plus `env`.
    pub login: bool,
}

/// What `envrig logs` asks of a machine's log ([`Provider::logs`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRequest {
    /// Go on with what comes until the machine stops or the call is dropped.
    #[serde(default)]
    pub follow: bool,
    /// Only what came at or after this moment, in seconds since the Unix epoch (a log
    /// without times, a VM's serial console, is shown whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<i64>,
    /// Only the last `tail` lines of what there is when the call starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<u64>,
    /// A VM's journal (`journalctl` in the guest) instead of its serial console.
    #[serde(default)]
    pub journal: bool,
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// Where an exec's output goes, chunk by chunk, as it arrives.
pub type OutputSink<'a> = &'a mut (dyn FnMut(OutputStream, &[u8]) + Send);

/// The terminal an interactive session is attached to.
pub struct Terminal {
    pub input: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    pub output: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
    /// Columns and rows.
    pub size: Option<(u16, u16)>,
}

/// Whether `s` is a user name a host command may be given: 1 to 32 of `A-Za-z0-9._-`, not
/// starting with `-` or `.`, with an optional trailing `$` (as `useradd` allows). A name a
/// guest reports is checked with this before it reaches `ssh` or a config file: a "user"
/// named `-oProxyCommand=...` would otherwise be an option.
pub fn valid_user_name(s: &str) -> bool {
    let body = s.strip_suffix('$').unwrap_or(s);
    !body.is_empty()
        && s.len() <= 32
        && !body.starts_with(['-', '.'])
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// How to reach a machine with a real SSH client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshEndpoint {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub identity_file: String,
    pub known_hosts_file: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::valid_user_name;

    #[test]
    fn user_names_are_checked_before_they_reach_a_command() {
        for ok in ["root", "vagrant", "a.b-c_d", "svc$", "u1"] {
            assert!(valid_user_name(ok), "{ok}");
        }
        for bad in [
            "",
            "-oProxyCommand=touch x",
            "-l",
            ".hidden",
            "a b",
            "a\nProxyCommand x",
            "a@b",
            "$",
            "ünï",
            &"a".repeat(33),
        ] {
            assert!(!valid_user_name(bad), "{bad:?}");
        }
    }
}
