//! The engines this crate drives through the Docker API: Docker, and Podman's
//! Docker-compatible service (`podman system service`, API 1.41 on Podman 4.3). One code
//! path for both; what differs is here: the provider's name in Envfiles, what it can do,
//! where its local socket is, and what to do when none answers.
//!
//! Podman's socket is where Podman documents it: `CONTAINER_HOST` when set, else
//! `/run/podman/podman.sock` for root and `$XDG_RUNTIME_DIR/podman/podman.sock` for anyone
//! else (rootless: the user's own containers, storage and networks). Where no socket answers
//! (a host without systemd to activate it) and `podman` is installed, the service is started
//! for this user, bounded in time, and said once (`podman.rs`).

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use envrig_provider_api::Capabilities;
use envrig_provider_api::schema::{BoxRef, Key, Schema};

/// An engine that speaks the Docker API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Docker's daemon.
    Docker,
    /// Podman's Docker-compatible service, rootful or rootless.
    Podman,
}

/// Every flavor, the default provider (Docker) first.
pub const FLAVORS: [Flavor; 2] = [Flavor::Docker, Flavor::Podman];

/// What the Docker provider can do (known without connecting).
pub const CAPABILITIES: Capabilities = Capabilities {
    custom_command: true,
    live_synced_folders: true,
    ssh: false,
    interactive: true,
    private_network: true,
    box_store: false,
    drift_from_base: true,
    spanning_network: true,
    shares_network: false,
    warm_start: false,
};

impl Flavor {
    /// The provider's name in Envfiles (and its box key).
    pub fn name(self) -> &'static str {
        match self {
            Flavor::Docker => "docker",
            Flavor::Podman => "podman",
        }
    }

    /// What this provider can do. Podman has no Swarm, so no network spans its engines.
    pub fn capabilities(self) -> Capabilities {
        match self {
            Flavor::Docker => CAPABILITIES,
            Flavor::Podman => Capabilities {
                spanning_network: false,
                ..CAPABILITIES
            },
        }
    }

    /// What the Envfile may say to this provider: `[machines.NAME.<provider>]`'s keys (each
    /// read in `machine.rs`) and image references as boxes.
    pub fn schema(self) -> Schema {
        Schema {
            name: self.name().to_string(),
            capabilities: self.capabilities(),
            keys: vec![Key::bool("privileged"), Key::bool("init")],
            box_ref: BoxRef::Image,
            engine_schemes: match self {
                Flavor::Docker => vec!["unix", "tcp", "ssh", "http", "https"],
                // bollard's ssh transport runs `docker system dial-stdio` on the far host,
                // which a Podman host need not have.
                Flavor::Podman => vec!["unix", "tcp", "http", "https"],
            }
            .into_iter()
            .map(String::from)
            .collect(),
        }
    }

    /// What to do when the engine does not answer.
    pub(crate) fn hint(self) -> &'static str {
        match self {
            Flavor::Docker => {
                "start the Docker engine (`scripts/host-setup.sh` does it on Debian), or point \
                 `DOCKER_HOST` at one"
            }
            Flavor::Podman => {
                "install Podman (`apt-get install podman`; envrig starts `podman system \
                 service` itself), or point `CONTAINER_HOST` at a running one"
            }
        }
    }

    /// The variable that names this engine's address.
    pub(crate) fn host_variable(self) -> &'static str {
        match self {
            Flavor::Docker => "DOCKER_HOST",
            Flavor::Podman => "CONTAINER_HOST",
        }
    }

    /// Podman's engine when `CONTAINER_HOST` names one that is not a unix socket (`tcp://`):
    /// connected to as an engine endpoint. Docker's `DOCKER_HOST` is left to bollard, which
    /// also reads `DOCKER_TLS_VERIFY` and `DOCKER_CERT_PATH`.
    pub(crate) fn remote_address(self) -> Option<String> {
        if self == Flavor::Docker {
            return None;
        }
        let host = std::env::var(self.host_variable()).ok()?;
        (!host.is_empty() && !host.starts_with("unix://")).then_some(host)
    }

    /// The local engine's unix socket: the variable's `unix://` path, else the default.
    pub(crate) fn local_socket(self) -> Option<PathBuf> {
        match std::env::var(self.host_variable()) {
            Ok(h) if !h.is_empty() => h.strip_prefix("unix://").map(PathBuf::from),
            _ => Some(match self {
                Flavor::Docker => PathBuf::from("/var/run/docker.sock"),
                Flavor::Podman => podman_socket(effective_uid(), runtime_dir()),
            }),
        }
    }
}

/// This process's user: the owner of `/proc/self` (no libc call needed); root when unknown.
pub(crate) fn effective_uid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0)
}

fn runtime_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
}

/// Podman's documented socket: root's under `/run/podman`, a user's under their runtime
/// folder (`/run/user/UID` when `XDG_RUNTIME_DIR` is unset).
fn podman_socket(uid: u32, runtime: Option<PathBuf>) -> PathBuf {
    if uid == 0 {
        return PathBuf::from("/run/podman/podman.sock");
    }
    runtime
        .unwrap_or_else(|| PathBuf::from(format!("/run/user/{uid}")))
        .join("podman/podman.sock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn podman_sockets_are_where_podman_documents_them() {
        assert_eq!(
            podman_socket(0, Some("/run/user/0".into())),
            PathBuf::from("/run/podman/podman.sock")
        );
        assert_eq!(
            podman_socket(1001, Some("/tmp/rt".into())),
            PathBuf::from("/tmp/rt/podman/podman.sock")
        );
        assert_eq!(
            podman_socket(1001, None),
            PathBuf::from("/run/user/1001/podman/podman.sock")
        );
    }

    #[test]
    fn the_two_flavors_differ_only_where_the_engines_do() {
        assert_eq!(FLAVORS.map(Flavor::name), ["docker", "podman"]);
        assert!(Flavor::Docker.capabilities().spanning_network);
        assert!(!Flavor::Podman.capabilities().spanning_network);
        assert_eq!(
            Flavor::Docker.schema().keys.len(),
            Flavor::Podman.schema().keys.len()
        );
    }
}
