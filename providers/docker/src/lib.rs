//! envrig's Docker provider: machines are containers, driven through bollard.
//!
//! This crate is the only place bollard appears. Every call is wrapped so that an error names
//! the operation that failed ([`DockerError`]), then mapped into the provider-neutral
//! [`ProviderError`]. The API version is negotiated at connect time, so an old engine
//! (Debian's 20.10, API 1.41) works.
//!
//! A machine is a container that runs until halted: unless the Envfile sets `command`, its
//! main process is `sleep infinity` under Docker's init (which reaps zombies and forwards
//! signals, so a stop takes milliseconds, not the 10 s stop timeout).
//!
//! This file holds the provider, its connection and the [`Provider`] impl, whose methods
//! delegate to one file per concern: `error.rs` (bollard's errors as [`ProviderError`]),
//! `machine.rs` (containers), `network.rs` (the private network, the environment's other
//! resources, reattaching), `exec.rs` (commands and files inside a machine), `store.rs`
//! (images as bases, packages, baked layers), `snapshot.rs` (snapshots, export, import, the
//! one commit), `drift.rs`, `holder.rs` (network holders) and `export_check.rs` (image
//! archives from elsewhere).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use envrig_provider_api::drift::PathChange;
use envrig_provider_api::schema::{BoxRef, Key, Schema};
use envrig_provider_api::{
    BakedLayer, BaseIdentity, BaseInfo, Capabilities, ExecRequest, MachineInfo, MachineSpec,
    NetworkSpec, OtherResource, OutputSink, Provider, ProviderError, PullProgress, Result,
    Selector, Snapshot, SshEndpoint, StoredBox, Terminal,
};
use tokio::io::AsyncWriteExt;

mod drift;
mod engine;
mod error;
mod exec;
mod export_check;
mod holder;
mod machine;
mod network;
mod snapshot;
mod store;

pub use error::DockerError;
use error::unavailable;

const NAME: &str = "docker";

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
    warm_start: false,
};

/// The provider's name in Envfiles.
pub const PROVIDER_NAME: &str = NAME;

/// What the Envfile may say to this provider: `[machines.NAME.docker]`'s keys (each read
/// in `machine.rs`) and image references as boxes.
pub fn schema() -> Schema {
    Schema {
        name: NAME.to_string(),
        capabilities: CAPABILITIES,
        keys: vec![Key::bool("privileged"), Key::bool("init")],
        box_ref: BoxRef::Image,
        engine_schemes: ["unix", "tcp", "ssh", "http", "https"]
            .map(String::from)
            .to_vec(),
    }
}

/// The default main process: keeps the container running until it is halted.
const KEEPALIVE: [&str; 2] = ["sleep", "infinity"];

/// The daemon's unix socket: `DOCKER_HOST` when it is `unix://…`, the default socket when
/// `DOCKER_HOST` is unset; none for any other transport.
fn unix_socket() -> Option<String> {
    match std::env::var("DOCKER_HOST") {
        Ok(h) => h.strip_prefix("unix://").map(str::to_string),
        Err(_) => Some("/var/run/docker.sock".to_string()),
    }
}

/// The API version the daemon at `path` speaks, from the `Api-Version` header of `/_ping`;
/// none when it cannot be read (then `/version` is asked, as bollard does).
async fn ping_api_version(path: &str) -> Option<(usize, usize)> {
    use tokio::io::AsyncReadExt;
    let ask = async {
        let mut s = tokio::net::UnixStream::connect(path).await.ok()?;
        s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf);
        let head = text.split("\r\n\r\n").next()?;
        let line = head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("api-version:"))?;
        let (major, minor) = line.split_once(':')?.1.trim().split_once('.')?;
        Some((major.parse().ok()?, minor.parse().ok()?))
    };
    tokio::time::timeout(Duration::from_secs(5), ask)
        .await
        .ok()
        .flatten()
}

/// The Docker provider: one connection to one engine.
#[derive(Debug, Clone)]
pub struct DockerProvider {
    docker: Docker,
    /// The network holders' image, once known (see `holder`): machines created at once
    /// import it once.
    holder_image: std::sync::Arc<tokio::sync::OnceCell<Option<String>>>,
}

impl DockerProvider {
    /// Connects to the engine named by `DOCKER_HOST` (else the local socket) and negotiates
    /// the API version.
    pub async fn connect() -> Result<Self> {
        Self::connect_to(None).await
    }

    /// Connects to the engine at `engine` (an endpoint of `envrig engine add`: `unix://`,
    /// `tcp://` (TLS with `cert_path`), `ssh://`); the local one (`DOCKER_HOST`) when none.
    pub async fn connect_to(engine: Option<&envrig_provider_api::EngineAddress>) -> Result<Self> {
        if let Some(e) = engine {
            let v = bollard::API_DEFAULT_VERSION;
            let docker = match (&e.cert_path, e.uri.split_once("://").map(|s| s.0)) {
                (Some(certs), Some("tcp" | "https")) => Docker::connect_with_ssl(
                    &e.uri,
                    &certs.join("key.pem"),
                    &certs.join("cert.pem"),
                    &certs.join("ca.pem"),
                    120,
                    v,
                ),
                (_, Some("unix")) => Docker::connect_with_unix(&e.uri, 120, v),
                (_, Some("tcp" | "http")) => Docker::connect_with_http(&e.uri, 120, v),
                (_, Some("ssh")) => Docker::connect_with_ssh(&e.uri, 120, v, None),
                _ => {
                    return Err(unavailable(format!(
                        "{}: not a Docker engine address (unix://, tcp://, ssh://)",
                        e.uri
                    )));
                }
            }
            .map_err(|err| unavailable(format!("{}: {err}", e.uri)))?;
            let docker = docker
                .negotiate_version()
                .await
                .map_err(|err| unavailable(format!("{}: {err}", e.uri)))?;
            return Ok(DockerProvider::with(docker));
        }
        // On a local socket the API version comes from `/_ping`'s header (under a
        // millisecond) rather than `/version` (about 8 ms: the daemon gathers its facts).
        if let Some(path) = unix_socket()
            && let Some((major, minor)) = ping_api_version(&path).await
        {
            let ours = bollard::API_DEFAULT_VERSION;
            let version = if (major, minor) < (ours.major_version, ours.minor_version) {
                bollard::ClientVersion {
                    major_version: major,
                    minor_version: minor,
                }
            } else {
                *ours
            };
            let docker = Docker::connect_with_unix(&path, 120, &version)
                .map_err(|e| unavailable(e.to_string()))?;
            return Ok(DockerProvider::with(docker));
        }
        let docker = Docker::connect_with_defaults().map_err(|e| unavailable(e.to_string()))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        Ok(DockerProvider::with(docker))
    }

    fn with(docker: Docker) -> Self {
        DockerProvider {
            docker,
            holder_image: Default::default(),
        }
    }
}

/// Labels on a resource, as the trait's methods take them.
type Labels = BTreeMap<String, String>;

/// Docker's `label` filter for what `selector` selects.
fn label_filters(selector: &Selector) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_string(), selector.to_filter_strings())])
}

#[async_trait]
impl Provider for DockerProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    // Machines: `machine.rs`.

    async fn create(&self, spec: &MachineSpec) -> Result<MachineInfo> {
        self.create_machine(spec).await
    }

    async fn start(&self, id: &str) -> Result<()> {
        self.start_machine(id).await
    }

    async fn start_created(&self, id: &str, spec: &MachineSpec) -> Result<Option<String>> {
        self.start_new_machine(id, spec).await.map(|()| None)
    }

    async fn stop(&self, id: &str, timeout: Duration) -> Result<()> {
        self.stop_machine(id, timeout).await
    }

    async fn stop_for_handover(&self, id: &str, timeout: Duration) -> Result<()> {
        self.stop_container(id, timeout).await
    }

    async fn remove(&self, id: &str) -> Result<()> {
        self.remove_machine(id).await
    }

    async fn inspect(&self, id: &str) -> Result<MachineInfo> {
        self.inspect_machine(id).await
    }

    async fn list(&self, selector: &Selector) -> Result<Vec<MachineInfo>> {
        self.list_machines(selector).await
    }

    async fn pause(&self, id: &str) -> Result<()> {
        self.pause_machine(id).await
    }

    async fn unpause(&self, id: &str) -> Result<()> {
        self.unpause_machine(id).await
    }

    // The private network and the other resources of an environment: `network.rs`.

    async fn engine_info(&self) -> Result<envrig_provider_api::EngineInfo> {
        self.describe_engine().await
    }

    async fn ensure_network(&self, spec: &NetworkSpec) -> Result<()> {
        self.ensure_bridge_network(spec).await
    }

    async fn list_other(&self, selector: &Selector) -> Result<Vec<OtherResource>> {
        self.list_other_resources(selector).await
    }

    async fn purge(&self, selector: &Selector) -> Result<Vec<String>> {
        self.purge_resources(selector).await
    }

    // Commands and files inside a machine: `exec.rs`.

    async fn exec(&self, id: &str, req: &ExecRequest, output: OutputSink<'_>) -> Result<i64> {
        self.exec_streamed(id, req, output).await
    }

    async fn exec_interactive(
        &self,
        id: &str,
        req: &ExecRequest,
        terminal: Terminal,
    ) -> Result<i64> {
        self.exec_terminal(id, req, terminal).await
    }

    async fn upload(&self, id: &str, dest: &str, tar: Vec<u8>) -> Result<()> {
        self.upload_tar(id, dest, tar).await
    }

    async fn read_file(&self, id: &str, path: &str) -> Result<Option<Vec<u8>>> {
        self.archive_file(id, path).await
    }

    // Images as bases and baked layers: `store.rs`.

    async fn resolve_base(&self, reference: &str) -> Result<Option<BaseIdentity>> {
        self.resolve_image(reference).await
    }

    async fn ensure_base(
        &self,
        reference: &str,
        progress: &mut (dyn FnMut(PullProgress) + Send),
    ) -> Result<BaseInfo> {
        self.ensure_image(reference, progress).await
    }

    async fn package(&self, id: &str, name: &str, labels: &Labels) -> Result<BaseInfo> {
        self.package_image(id, name, labels).await
    }

    async fn baked_layers(&self) -> Result<Vec<BakedLayer>> {
        self.baked_images().await
    }

    async fn remove_baked(&self, name: &str) -> Result<()> {
        self.remove_baked_image(name).await
    }

    // Snapshots, their export and import: `snapshot.rs`.

    async fn snapshot_save(
        &self,
        id: &str,
        name: &str,
        spec: &MachineSpec,
        labels: &Labels,
        running: bool,
    ) -> Result<Snapshot> {
        self.save_snapshot(id, name, spec, labels, running).await
    }

    async fn snapshot_list(&self, selector: &Selector) -> Result<Vec<Snapshot>> {
        self.list_snapshots(selector).await
    }

    async fn snapshot_restore(
        &self,
        snap: &Snapshot,
        current: Option<&str>,
        spec: &MachineSpec,
    ) -> Result<MachineInfo> {
        self.restore_snapshot(snap, current, spec).await
    }

    async fn snapshot_delete(&self, snap: &Snapshot) -> Result<()> {
        self.delete_snapshot(snap).await
    }

    async fn snapshot_export(&self, snap: &Snapshot, dest: &Path) -> Result<u64> {
        self.export_snapshot(snap, dest).await
    }

    async fn snapshot_import(
        &self,
        src: &Path,
        snap: &Snapshot,
        labels: &Labels,
    ) -> Result<Snapshot> {
        self.import_snapshot(src, snap, labels).await
    }

    async fn check_export(&self, src: &Path) -> Result<()> {
        self.check_image_archive(src).await
    }

    async fn sweep_work(&self) -> Result<Vec<String>> {
        self.sweep_imports().await
    }

    // Drift: `drift.rs`.

    async fn mark_baseline(&self, id: &str) -> Result<()> {
        self.mark_baseline_impl(id).await
    }

    async fn drift(&self, id: &str) -> Result<Vec<PathChange>> {
        self.drift_impl(id).await
    }

    // What containers do not have: a box store, an SSH server.

    async fn box_add(&self, _name: &str, _source: &Path, _force: bool) -> Result<StoredBox> {
        Err(ProviderError::NotSupported {
            provider: NAME,
            what: "a box store (docker's images are its boxes: `docker load`, `envrig package`)"
                .into(),
        })
    }

    async fn box_list(&self) -> Result<Vec<StoredBox>> {
        Ok(Vec::new())
    }

    async fn box_remove(&self, _name: &str) -> Result<()> {
        Err(ProviderError::NotSupported {
            provider: NAME,
            what: "a box store".into(),
        })
    }

    async fn ssh_endpoint(&self, _id: &str) -> Result<SshEndpoint> {
        Err(ProviderError::NotSupported {
            provider: NAME,
            what: "ssh-config (containers have no SSH server; use `envrig ssh` or `envrig exec`)"
                .to_string(),
        })
    }
}
