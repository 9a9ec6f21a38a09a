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
use envrig_provider_api::schema::Schema;
use envrig_provider_api::{
    BakedLayer, BaseIdentity, BaseInfo, Capabilities, ExecRequest, LogRequest, MachineInfo,
    MachineSpec, NetworkSpec, OtherResource, OutputSink, Provider, ProviderError, PullProgress,
    Result, Selector, Snapshot, SshEndpoint, StoredBox, Terminal,
};
use tokio::io::AsyncWriteExt;

mod cache;
mod copy;
mod drift;
mod engine;
mod error;
mod exec;
mod export_check;
mod flavor;
mod holder;
mod logs;
mod machine;
mod network;
mod podman;
mod snapshot;
mod store;

pub use error::DockerError;
use error::unavailable;

pub use flavor::{CAPABILITIES, FLAVORS, Flavor};

/// The Docker provider's name in Envfiles.
pub const PROVIDER_NAME: &str = "docker";

/// What the Envfile may say to the Docker provider.
pub fn schema() -> Schema {
    Flavor::Docker.schema()
}

/// The default main process: keeps the container running until it is halted.
const KEEPALIVE: [&str; 2] = ["sleep", "infinity"];

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

/// The Docker provider (or Podman, through the same API: [`Flavor`]): one connection to
/// one engine.
#[derive(Debug, Clone)]
pub struct DockerProvider {
    docker: Docker,
    flavor: Flavor,
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

    /// Connects to the Docker engine at `engine`; the local one when none.
    pub async fn connect_to(engine: Option<&envrig_provider_api::EngineAddress>) -> Result<Self> {
        Self::connect_flavor(Flavor::Docker, engine).await
    }

    /// Connects to an engine of `flavor` at `engine` (an endpoint of `envrig engine add`:
    /// `unix://`, `tcp://` (TLS with `cert_path`), `ssh://`); when none, the local one
    /// (`DOCKER_HOST` or `CONTAINER_HOST`, else the flavor's socket; a Podman socket nobody
    /// serves gets `podman system service` started).
    pub async fn connect_flavor(
        flavor: Flavor,
        engine: Option<&envrig_provider_api::EngineAddress>,
    ) -> Result<Self> {
        let named = flavor
            .remote_address()
            .map(|uri| envrig_provider_api::EngineAddress {
                uri,
                cert_path: None,
            });
        if let Some(e) = engine.or(named.as_ref()) {
            let v = bollard::API_DEFAULT_VERSION;
            let down = |m: String| unavailable(flavor, m);
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
                    return Err(down(format!(
                        "{}: not an engine address (unix://, tcp://, ssh://)",
                        e.uri
                    )));
                }
            }
            .map_err(|err| down(format!("{}: {err}", e.uri)))?;
            let docker = docker
                .negotiate_version()
                .await
                .map_err(|err| down(format!("{}: {err}", e.uri)))?;
            return Ok(DockerProvider::with(docker, flavor));
        }
        let Some(socket) = flavor.local_socket() else {
            let docker =
                Docker::connect_with_defaults().map_err(|e| unavailable(flavor, e.to_string()))?;
            let docker = docker
                .negotiate_version()
                .await
                .map_err(|e| unavailable(flavor, e.to_string()))?;
            return Ok(DockerProvider::with(docker, flavor));
        };
        let path = socket.to_string_lossy().into_owned();
        // The API version comes from `/_ping`'s header (under a millisecond) rather than
        // `/version` (about 8 ms: the daemon gathers its facts).
        let mut answer = ping_api_version(&path).await;
        if answer.is_none() && flavor == Flavor::Podman {
            podman::start_service(&socket).await?;
            answer = ping_api_version(&path).await;
        }
        let Some((major, minor)) = answer else {
            // An engine whose `/_ping` says no version: negotiated through `/version`.
            let docker = Docker::connect_with_unix(&path, 120, bollard::API_DEFAULT_VERSION)
                .map_err(|e| unavailable(flavor, e.to_string()))?;
            let docker = docker
                .negotiate_version()
                .await
                .map_err(|e| unavailable(flavor, format!("{path}: {e}")))?;
            return Ok(DockerProvider::with(docker, flavor));
        };
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
            .map_err(|e| unavailable(flavor, e.to_string()))?;
        Ok(DockerProvider::with(docker, flavor))
    }

    fn with(docker: Docker, flavor: Flavor) -> Self {
        DockerProvider {
            docker,
            flavor,
            holder_image: Default::default(),
        }
    }

    /// An error of this crate's, said as this provider's (`docker` or `podman`).
    fn own(&self, e: ProviderError) -> ProviderError {
        error::as_flavor(e, self.flavor)
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
        self.flavor.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.flavor.capabilities()
    }

    // Machines: `machine.rs`.

    async fn create(&self, spec: &MachineSpec) -> Result<MachineInfo> {
        self.create_machine(spec).await.map_err(|e| self.own(e))
    }

    async fn start(&self, id: &str) -> Result<()> {
        self.start_machine(id).await.map_err(|e| self.own(e))
    }

    async fn start_created(&self, id: &str, spec: &MachineSpec) -> Result<Option<String>> {
        self.start_new_machine(id, spec)
            .await
            .map(|()| None)
            .map_err(|e| self.own(e))
    }

    async fn stop(&self, id: &str, timeout: Duration) -> Result<()> {
        self.stop_machine(id, timeout)
            .await
            .map_err(|e| self.own(e))
    }

    async fn stop_for_handover(&self, id: &str, timeout: Duration) -> Result<()> {
        self.stop_container(id, timeout)
            .await
            .map_err(|e| self.own(e))
    }

    async fn remove(&self, id: &str) -> Result<()> {
        self.remove_machine(id).await.map_err(|e| self.own(e))
    }

    async fn inspect(&self, id: &str) -> Result<MachineInfo> {
        self.inspect_machine(id).await.map_err(|e| self.own(e))
    }

    async fn list(&self, selector: &Selector) -> Result<Vec<MachineInfo>> {
        self.list_machines(selector).await.map_err(|e| self.own(e))
    }

    async fn pause(&self, id: &str) -> Result<()> {
        self.pause_machine(id).await.map_err(|e| self.own(e))
    }

    async fn unpause(&self, id: &str) -> Result<()> {
        self.unpause_machine(id).await.map_err(|e| self.own(e))
    }

    // The private network and the other resources of an environment: `network.rs`.

    async fn engine_info(&self) -> Result<envrig_provider_api::EngineInfo> {
        self.describe_engine().await.map_err(|e| self.own(e))
    }

    async fn ensure_network(&self, spec: &NetworkSpec) -> Result<()> {
        self.ensure_bridge_network(spec)
            .await
            .map_err(|e| self.own(e))
    }

    async fn shared_address(&self, id: &str) -> Result<Option<String>> {
        self.joined_address(id).await.map_err(|e| self.own(e))
    }

    async fn list_other(&self, selector: &Selector) -> Result<Vec<OtherResource>> {
        self.list_other_resources(selector)
            .await
            .map_err(|e| self.own(e))
    }

    async fn purge(&self, selector: &Selector) -> Result<Vec<String>> {
        self.purge_resources(selector)
            .await
            .map_err(|e| self.own(e))
    }

    // Commands and files inside a machine: `exec.rs`.

    async fn exec(&self, id: &str, req: &ExecRequest, output: OutputSink<'_>) -> Result<i64> {
        self.exec_streamed(id, req, output)
            .await
            .map_err(|e| self.own(e))
    }

    async fn exec_interactive(
        &self,
        id: &str,
        req: &ExecRequest,
        terminal: Terminal,
    ) -> Result<i64> {
        self.exec_terminal(id, req, terminal)
            .await
            .map_err(|e| self.own(e))
    }

    async fn upload(&self, id: &str, dest: &str, tar: Vec<u8>) -> Result<()> {
        self.upload_tar(id, dest, tar)
            .await
            .map_err(|e| self.own(e))
    }

    async fn read_file(&self, id: &str, path: &str) -> Result<Option<Vec<u8>>> {
        self.archive_file(id, path).await.map_err(|e| self.own(e))
    }

    async fn copy_in(&self, id: &str, tar: &std::path::Path, dest: &str) -> Result<()> {
        self.copy_tar_in(id, tar, dest)
            .await
            .map_err(|e| self.own(e))
    }

    async fn copy_out(&self, id: &str, src: &str, tar: &std::path::Path) -> Result<()> {
        self.copy_tar_out(id, src, tar)
            .await
            .map_err(|e| self.own(e))
    }

    async fn logs(&self, id: &str, req: &LogRequest, output: OutputSink<'_>) -> Result<()> {
        self.container_logs(id, req, output)
            .await
            .map_err(|e| self.own(e))
    }

    // Images as bases and baked layers: `store.rs`.

    async fn resolve_base(&self, reference: &str) -> Result<Option<BaseIdentity>> {
        self.resolve_image(reference).await.map_err(|e| self.own(e))
    }

    async fn ensure_base(
        &self,
        reference: &str,
        progress: &mut (dyn FnMut(PullProgress) + Send),
    ) -> Result<BaseInfo> {
        self.ensure_image(reference, progress)
            .await
            .map_err(|e| self.own(e))
    }

    async fn package(&self, id: &str, name: &str, labels: &Labels) -> Result<BaseInfo> {
        self.package_image(id, name, labels)
            .await
            .map_err(|e| self.own(e))
    }

    async fn baked_layers(&self) -> Result<Vec<BakedLayer>> {
        self.baked_images().await.map_err(|e| self.own(e))
    }

    async fn remove_baked(&self, name: &str) -> Result<()> {
        self.remove_baked_image(name).await.map_err(|e| self.own(e))
    }

    // The team's layer cache in a registry: `cache.rs`.

    async fn pull_baked(&self, reference: &str, name: &str, _base: &str) -> Result<bool> {
        self.pull_layer(reference, name)
            .await
            .map_err(|e| self.own(e))
    }

    async fn push_baked(&self, name: &str, reference: &str) -> Result<()> {
        self.push_layer(name, reference)
            .await
            .map_err(|e| self.own(e))
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
        self.save_snapshot(id, name, spec, labels, running)
            .await
            .map_err(|e| self.own(e))
    }

    async fn snapshot_list(&self, selector: &Selector) -> Result<Vec<Snapshot>> {
        self.list_snapshots(selector).await.map_err(|e| self.own(e))
    }

    async fn snapshot_restore(
        &self,
        snap: &Snapshot,
        current: Option<&str>,
        spec: &MachineSpec,
    ) -> Result<MachineInfo> {
        self.restore_snapshot(snap, current, spec)
            .await
            .map_err(|e| self.own(e))
    }

    async fn snapshot_delete(&self, snap: &Snapshot) -> Result<()> {
        self.delete_snapshot(snap).await.map_err(|e| self.own(e))
    }

    async fn snapshot_export(&self, snap: &Snapshot, dest: &Path) -> Result<u64> {
        self.export_snapshot(snap, dest)
            .await
            .map_err(|e| self.own(e))
    }

    async fn snapshot_import(
        &self,
        src: &Path,
        snap: &Snapshot,
        labels: &Labels,
    ) -> Result<Snapshot> {
        self.import_snapshot(src, snap, labels)
            .await
            .map_err(|e| self.own(e))
    }

    async fn check_export(&self, src: &Path) -> Result<()> {
        self.check_image_archive(src).await.map_err(|e| self.own(e))
    }

    async fn sweep_work(&self) -> Result<Vec<String>> {
        self.sweep_imports().await.map_err(|e| self.own(e))
    }

    // Drift: `drift.rs`.

    async fn mark_baseline(&self, id: &str) -> Result<()> {
        self.mark_baseline_impl(id).await.map_err(|e| self.own(e))
    }

    async fn drift(&self, id: &str) -> Result<Vec<PathChange>> {
        self.drift_impl(id).await.map_err(|e| self.own(e))
    }

    // What containers do not have: a box store, an SSH server.

    async fn box_add(&self, _name: &str, _source: &Path, _force: bool) -> Result<StoredBox> {
        Err(ProviderError::NotSupported {
            provider: self.name(),
            what: format!(
                "a box store ({0}'s images are its boxes: `{0} load`, `envrig package`)",
                self.name()
            ),
        })
    }

    async fn box_list(&self) -> Result<Vec<StoredBox>> {
        Ok(Vec::new())
    }

    async fn box_remove(&self, _name: &str) -> Result<()> {
        Err(ProviderError::NotSupported {
            provider: self.name(),
            what: "a box store".into(),
        })
    }

    async fn ssh_endpoint(&self, _id: &str) -> Result<SshEndpoint> {
        Err(ProviderError::NotSupported {
            provider: self.name(),
            what: "ssh-config (containers have no SSH server; use `envrig ssh` or `envrig exec`)"
                .to_string(),
        })
    }
}
