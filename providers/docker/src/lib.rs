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

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::exec::{CreateExecOptions, ResizeExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{
    ContainerConfig, ContainerCreateBody, ContainerStateStatusEnum, ContainerSummaryStateEnum,
    EndpointSettings, HostConfig, Ipam, IpamConfig, NetworkCreateRequest, NetworkingConfig,
    PortBinding, PortMap,
};
use bollard::query_parameters::{
    CommitContainerOptions, CreateContainerOptions, CreateImageOptions, ImportImageOptions,
    ListContainersOptions, ListImagesOptions, ListNetworksOptions, ListVolumesOptions,
    RemoveContainerOptions, RemoveImageOptions, StopContainerOptions, UploadToContainerOptions,
};
use envrig_provider_api::{
    BaseIdentity, BaseInfo, Capabilities, ExecRequest, MachineInfo, MachineSpec, MachineState,
    NetworkSpec, OptionValue, OtherResource, OutputSink, OutputStream, PortSpec, Protocol,
    Provider, ProviderError, PullProgress, Result, Selector, Snapshot, SshEndpoint, StoredBox,
    Terminal, labels,
};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

mod drift;
mod export_check;
mod holder;
mod network;

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
};

/// The provider's name in Envfiles.
pub const PROVIDER_NAME: &str = NAME;

/// The default main process: keeps the container running until it is halted.
const KEEPALIVE: [&str; 2] = ["sleep", "infinity"];

/// A failed Docker API call, naming the operation.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {source}")]
pub struct DockerError {
    pub op: String,
    #[source]
    pub source: bollard::errors::Error,
}

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

fn map_err(op: impl Into<String>, e: bollard::errors::Error) -> ProviderError {
    use bollard::errors::Error as B;
    let op = op.into();
    match &e {
        B::DockerResponseServerError {
            status_code: 404,
            message,
        } => ProviderError::NotFound {
            what: message.clone(),
        },
        B::DockerResponseServerError {
            status_code: 409,
            message,
        } => ProviderError::Conflict {
            message: format!("{op}: {message}"),
        },
        B::SocketNotFoundError(_) | B::HyperLegacyError { .. } | B::IOError { .. } => {
            unavailable(e.to_string())
        }
        _ => ProviderError::Engine {
            provider: NAME,
            op: op.clone(),
            source: Box::new(DockerError { op, source: e }),
        },
    }
}

fn unavailable(message: String) -> ProviderError {
    ProviderError::Unavailable {
        provider: NAME,
        message,
        hint: Some(
            "start the Docker engine (`scripts/host-setup.sh` does it on Debian), or point \
             `DOCKER_HOST` at one"
                .to_string(),
        ),
    }
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

    /// The images the daemon lists for `filters`.
    async fn images(
        &self,
        filters: HashMap<String, Vec<String>>,
    ) -> Result<Vec<bollard::models::ImageSummary>> {
        self.docker
            .list_images(Some(ListImagesOptions {
                filters: Some(filters),
                ..ListImagesOptions::default()
            }))
            .await
            .map_err(|e| map_err("list images", e))
    }

    /// The ports `spec` publishes: the exposed keys and their host bindings.
    fn published(spec: &MachineSpec) -> (Vec<String>, PortMap) {
        let mut port_bindings: PortMap = HashMap::new();
        let mut exposed = Vec::new();
        for p in &spec.ports {
            let key = format!("{}/{}", p.guest_port, p.protocol.as_str());
            exposed.push(key.clone());
            port_bindings
                .entry(key)
                .or_insert_with(|| Some(Vec::new()))
                .get_or_insert_with(Vec::new)
                .push(PortBinding {
                    host_ip: Some(p.host_ip.clone()),
                    // Empty: the engine picks a free port.
                    host_port: Some(if p.host_port == 0 {
                        String::new()
                    } else {
                        p.host_port.to_string()
                    }),
                });
        }
        (exposed, port_bindings)
    }

    /// `spec`'s endpoint on its private network: the names others reach it by.
    fn endpoint(spec: &MachineSpec) -> Option<NetworkingConfig> {
        spec.network.as_ref().map(|n| NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                n.network.clone(),
                EndpointSettings {
                    aliases: Some(n.aliases.clone()),
                    ..EndpointSettings::default()
                },
            )])),
        })
    }

    /// The container for `spec`; joined to `holder`'s network namespace when it has one
    /// (which then owns the ports, hostname and names: see `holder`).
    fn container_body(spec: &MachineSpec, holder: Option<&str>) -> ContainerCreateBody {
        let (exposed, port_bindings) = match holder {
            Some(_) => Default::default(),
            None => Self::published(spec),
        };
        let binds: Vec<String> = spec
            .synced
            .iter()
            .map(|s| {
                format!(
                    "{}:{}:{}",
                    s.host,
                    s.guest,
                    if s.read_only { "ro" } else { "rw" }
                )
            })
            .collect();
        let bool_opt = |key: &str| match spec.options.get(key) {
            Some(OptionValue::Bool(b)) => Some(*b),
            _ => None,
        };
        let entrypoint = match &spec.command {
            Some(cmd) => cmd.clone(),
            None => KEEPALIVE.iter().map(|s| s.to_string()).collect(),
        };
        ContainerCreateBody {
            image: Some(spec.base.clone()),
            hostname: holder.is_none().then(|| spec.hostname.clone()),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(spec.labels.clone().into_iter().collect()),
            // The entrypoint is the whole main process: the image's entrypoint and command
            // are both replaced, so a machine never exits on its own.
            entrypoint: Some(entrypoint),
            cmd: Some(Vec::new()),
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            networking_config: holder.is_none().then(|| Self::endpoint(spec)).flatten(),
            host_config: Some(HostConfig {
                network_mode: match holder {
                    Some(h) => Some(format!("container:{h}")),
                    None => spec.network.as_ref().map(|n| n.network.clone()),
                },
                init: Some(bool_opt("init").unwrap_or(true)),
                privileged: bool_opt("privileged"),
                nano_cpus: spec.cpus.map(|c| i64::from(c) * 1_000_000_000),
                memory: spec.memory_bytes.map(|m| m as i64),
                port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
                binds: (!binds.is_empty()).then_some(binds),
                ..HostConfig::default()
            }),
            ..ContainerCreateBody::default()
        }
    }

    fn ports_from_map(map: Option<&PortMap>) -> Vec<PortSpec> {
        let mut out = Vec::new();
        for (key, bindings) in map.into_iter().flatten() {
            let (port, proto) = key.split_once('/').unwrap_or((key.as_str(), "tcp"));
            let Ok(guest_port) = port.parse::<u16>() else {
                continue;
            };
            let protocol = if proto == "udp" {
                Protocol::Udp
            } else {
                Protocol::Tcp
            };
            for b in bindings.iter().flatten() {
                let Some(host_port) = b.host_port.as_deref().and_then(|p| p.parse().ok()) else {
                    continue;
                };
                out.push(PortSpec {
                    host_ip: b.host_ip.clone().unwrap_or_default(),
                    host_port,
                    guest_port,
                    protocol,
                });
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

impl DockerProvider {
    /// The engine's whole answer about container `id`.
    async fn inspect_raw(&self, id: &str) -> Result<bollard::models::ContainerInspectResponse> {
        self.docker.inspect_container(id, None).await.map_err(|e| {
            match map_err(format!("inspect container {id}"), e) {
                ProviderError::NotFound { .. } => ProviderError::NotFound {
                    what: format!("container `{id}`"),
                },
                other => other,
            }
        })
    }

    /// A small file inside the container, through the archive API (no exec); `None` when
    /// it is not there.
    pub(crate) async fn archive_file(&self, id: &str, path: &str) -> Result<Option<Vec<u8>>> {
        let options = bollard::query_parameters::DownloadFromContainerOptions {
            path: path.to_string(),
        };
        let mut stream = self.docker.download_from_container(id, Some(options));
        let mut tar_bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(b) => tar_bytes.extend_from_slice(&b),
                Err(e) => {
                    return match map_err(format!("read {path} in {id}"), e) {
                        ProviderError::NotFound { .. } => Ok(None),
                        other => Err(other),
                    };
                }
            }
        }
        let io = |e: std::io::Error| ProviderError::Engine {
            provider: NAME,
            op: format!("read {path} in {id}"),
            source: Box::new(e),
        };
        let mut archive = tar::Archive::new(&tar_bytes[..]);
        for entry in archive.entries().map_err(io)? {
            let mut entry = entry.map_err(io)?;
            if entry.header().entry_type().is_file() {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut entry, &mut bytes).map_err(io)?;
                return Ok(Some(bytes));
            }
        }
        Ok(None)
    }

    /// The network holders (see `holder`) that `selector` selects.
    async fn holders(&self, selector: &Selector) -> Result<Vec<bollard::models::ContainerSummary>> {
        let selector = selector.clone().has(labels::HOLDER);
        self.docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(label_filters(&selector)),
                ..ListContainersOptions::default()
            }))
            .await
            .map_err(|e| map_err("list containers", e))
    }

    /// The host ports a network holder publishes (none when it is stopped); `None` when
    /// the holder is gone.
    async fn holder_ports(&self, holder: &str) -> Option<Vec<PortSpec>> {
        match self.docker.inspect_container(holder, None).await {
            Ok(h) => Some(Self::ports_from_map(
                h.network_settings.as_ref().and_then(|n| n.ports.as_ref()),
            )),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => None,
            Err(_) => Some(Vec::new()),
        }
    }

    /// Removes container `id` with its anonymous volumes, by force; `false` when it was
    /// already gone or another removal (a concurrent destroy) is taking it.
    async fn remove_container(&self, id: &str) -> Result<bool> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..RemoveContainerOptions::default()
        };
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(true),
            Err(e) => match map_err(format!("remove container {id}"), e) {
                ProviderError::NotFound { .. } => Ok(false),
                ProviderError::Conflict { message } if message.contains("in progress") => Ok(false),
                other => Err(other),
            },
        }
    }

    async fn stop_container(&self, id: &str, timeout: Duration) -> Result<()> {
        let options = StopContainerOptions {
            t: Some(timeout.as_secs().min(i32::MAX as u64) as i32),
            ..StopContainerOptions::default()
        };
        match self.docker.stop_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            // 304: already stopped.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(map_err(format!("stop container {id}"), e)),
        }
    }

    /// The first /24 of `pool` that no docker network uses.
    async fn free_subnet(&self, pool: &str) -> Result<String> {
        let bad = || ProviderError::Conflict {
            message: format!("ENVRIG_SUBNET_POOL `{pool}` is not an IPv4 CIDR like 198.18.0.0/15"),
        };
        let (addr, prefix) = pool.split_once('/').ok_or_else(bad)?;
        let base: u32 = addr
            .parse::<std::net::Ipv4Addr>()
            .map_err(|_| bad())?
            .into();
        let prefix: u32 = prefix.parse().map_err(|_| bad())?;
        if !(8..=24).contains(&prefix) {
            return Err(bad());
        }
        let networks = self
            .docker
            .list_networks(None::<ListNetworksOptions>)
            .await
            .map_err(|e| map_err("list networks", e))?;
        let used: Vec<(u32, u32)> = networks
            .iter()
            .flat_map(|n| n.ipam.iter().flat_map(|i| i.config.iter().flatten()))
            .filter_map(|c| {
                let (a, p) = c.subnet.as_deref()?.split_once('/')?;
                Some((
                    a.parse::<std::net::Ipv4Addr>().ok()?.into(),
                    p.parse().ok()?,
                ))
            })
            .collect();
        let overlaps = |a: u32, pa: u32, b: u32, pb: u32| {
            let p = pa.min(pb);
            let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
            a & mask == b & mask
        };
        let count = 1u32 << (24 - prefix);
        for i in 0..count {
            let candidate = (base & (u32::MAX << (32 - prefix))) + (i << 8);
            if !used.iter().any(|&(a, p)| overlaps(candidate, 24, a, p)) {
                return Ok(format!("{}/24", std::net::Ipv4Addr::from(candidate)));
            }
        }
        Err(ProviderError::Conflict {
            message: format!("no free /24 left in ENVRIG_SUBNET_POOL `{pool}`"),
        })
    }
}

/// The engine's state string (`running`, `exited`, ...) as a machine state; list and
/// inspect report the same strings.
fn state_from_str(s: &str) -> MachineState {
    match s {
        "created" => MachineState::Created,
        "running" => MachineState::Running,
        "paused" => MachineState::Paused,
        "exited" => MachineState::Stopped,
        "dead" => MachineState::Dead,
        "removing" => MachineState::Removing,
        _ => MachineState::Transitioning,
    }
}

fn state_from_summary(s: Option<ContainerSummaryStateEnum>) -> MachineState {
    s.map_or(MachineState::Transitioning, |s| state_from_str(s.as_ref()))
}

fn state_from_inspect(s: Option<ContainerStateStatusEnum>) -> MachineState {
    s.map_or(MachineState::Transitioning, |s| state_from_str(s.as_ref()))
}

fn label_filters(selector: &Selector) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_string(), selector.to_filter_strings())])
}

fn exec_env(req: &ExecRequest) -> Option<Vec<String>> {
    (!req.env.is_empty()).then(|| req.env.iter().map(|(k, v)| format!("{k}={v}")).collect())
}

#[async_trait]
impl Provider for DockerProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    async fn resolve_base(&self, reference: &str) -> Result<Option<BaseIdentity>> {
        match self.docker.inspect_image(reference).await {
            Ok(img) => {
                // The digest of the repository the reference names, when it was pulled.
                let repo = reference
                    .split('@')
                    .next()
                    .unwrap_or(reference)
                    .rsplit_once(':')
                    .filter(|(_, tag)| !tag.contains('/'))
                    .map(|(r, _)| r)
                    .unwrap_or(reference);
                let digests = img.repo_digests.unwrap_or_default();
                let digest = digests
                    .iter()
                    .find(|d| d.split('@').next() == Some(repo))
                    .cloned();
                Ok(Some(BaseIdentity {
                    id: img.id.unwrap_or_default(),
                    digest,
                    size: None,
                }))
            }
            Err(e) => match map_err("inspect image", e) {
                ProviderError::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    async fn ensure_base(
        &self,
        reference: &str,
        progress: &mut (dyn FnMut(PullProgress) + Send),
    ) -> Result<BaseInfo> {
        match self.docker.inspect_image(reference).await {
            Ok(img) => {
                return Ok(BaseInfo {
                    id: img.id.unwrap_or_default(),
                });
            }
            Err(e) => match map_err("inspect image", e) {
                ProviderError::NotFound { .. } => {}
                other => return Err(other),
            },
        }
        let options = CreateImageOptions {
            from_image: Some(reference.to_string()),
            ..CreateImageOptions::default()
        };
        let mut stream = self.docker.create_image(Some(options), None, None);
        // Per-layer byte counts, summed into one figure for the progress bar.
        let mut layers: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| map_err(format!("pull {reference}"), e))?;
            if let (Some(id), Some(d)) = (&info.id, &info.progress_detail)
                && let (Some(cur), Some(total)) = (d.current, d.total)
            {
                layers.insert(id.clone(), (cur.max(0) as u64, total.max(0) as u64));
                let (done, total) = layers
                    .values()
                    .fold((0, 0), |(a, b), (c, t)| (a + c, b + t));
                progress(PullProgress::Bytes { done, total });
                continue;
            }
            if let Some(status) = info.status {
                let line = match info.id {
                    Some(id) => format!("{id}: {status}"),
                    None => status,
                };
                progress(PullProgress::Status(line));
            }
        }
        let img = self
            .docker
            .inspect_image(reference)
            .await
            .map_err(|e| map_err(format!("inspect pulled image {reference}"), e))?;
        Ok(BaseInfo {
            id: img.id.unwrap_or_default(),
        })
    }

    async fn create(&self, spec: &MachineSpec) -> Result<MachineInfo> {
        let holder = if holder::wants_holder(spec) {
            Some(self.ensure_holder(spec).await?)
        } else {
            None
        };
        let options = CreateContainerOptions {
            name: Some(spec.resource_name.clone()),
            ..CreateContainerOptions::default()
        };
        let created = self
            .docker
            .create_container(Some(options), Self::container_body(spec, holder.as_deref()))
            .await
            .map_err(
                |e| match map_err(format!("create container {}", spec.resource_name), e) {
                    ProviderError::NotFound { .. } => ProviderError::NotFound {
                        what: format!("image `{}`", spec.base),
                    },
                    other => other,
                },
            );
        let created = match (created, &holder) {
            (Ok(c), _) => c,
            (Err(e), Some(h)) => {
                // A holder made for nothing goes again (kept when a generation uses it).
                if let Ok(h_info) = self.docker.inspect_container(h, None).await {
                    let _ = self.settle_holder(&h_info, h, true).await;
                }
                return Err(e);
            }
            (Err(e), None) => return Err(e),
        };
        Ok(MachineInfo {
            id: created.id,
            resource_name: spec.resource_name.clone(),
            state: MachineState::Created,
            labels: spec.labels.clone(),
            ports: spec.ports.clone(),
        })
    }

    async fn start(&self, id: &str) -> Result<()> {
        let c = self.inspect_raw(id).await?;
        match holder::joined_holder(&c) {
            Some(h) => self.wake_holder(&c, &h).await?,
            // Publishing its own ports (a generation from before holders, or one that does
            // not hand over): a holder of the same machine must not hold them.
            None if c
                .host_config
                .as_ref()
                .and_then(|h| h.port_bindings.as_ref())
                .is_some_and(|p| !p.is_empty()) =>
            {
                self.free_unused_holders(&c, None).await?
            }
            None => {}
        }
        self.start_reattaching(id, "container").await
    }

    /// A container just made from `spec` with no holder to join and no ports of its own
    /// has nothing to settle first: started without inspecting it (one call per machine
    /// fewer in an `up`).
    async fn start_created(&self, id: &str, spec: &MachineSpec) -> Result<()> {
        if spec.handover || !spec.ports.is_empty() {
            return self.start(id).await;
        }
        self.start_reattaching(id, "container").await
    }

    async fn stop(&self, id: &str, timeout: Duration) -> Result<()> {
        let c = match self.inspect_raw(id).await {
            Ok(c) => c,
            Err(ProviderError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.stop_container(id, timeout).await?;
        if let Some(h) = holder::joined_holder(&c)
            && let Err(e) = self.settle_holder(&c, &h, false).await
        {
            // The machine is stopped; its holder is left running (the next start or
            // `destroy` sees to it).
            tracing::warn!("cannot stop the network holder of {id}: {e}");
        }
        Ok(())
    }

    async fn stop_for_handover(&self, id: &str, timeout: Duration) -> Result<()> {
        self.stop_container(id, timeout).await
    }

    async fn remove(&self, id: &str) -> Result<()> {
        let c = match self.inspect_raw(id).await {
            Ok(c) => Some(c),
            Err(ProviderError::NotFound { .. }) => return Ok(()),
            Err(_) => None,
        };
        if !self.remove_container(id).await? {
            // Another removal takes it (a destroy killed after its request was sent): gone
            // when this returns, so its name is free for what comes next (bounded, 30 s).
            for _ in 0..300 {
                if let Err(ProviderError::NotFound { .. }) = self.inspect_raw(id).await {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if let Some(c) = &c
            && let Some(h) = holder::joined_holder(c)
            && let Err(e) = self.settle_holder(c, &h, true).await
        {
            // The machine is gone; a holder left over goes with `destroy`'s purge or `gc`.
            tracing::warn!("cannot remove the network holder of {id}: {e}");
        }
        Ok(())
    }

    async fn inspect(&self, id: &str) -> Result<MachineInfo> {
        let c = self.inspect_raw(id).await?;
        let labels = c
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default()
            .into_iter()
            .collect();
        let mut state = state_from_inspect(c.state.as_ref().and_then(|s| s.status));
        let mut ports =
            Self::ports_from_map(c.network_settings.as_ref().and_then(|n| n.ports.as_ref()));
        if let Some(h) = holder::joined_holder(&c) {
            match self.holder_ports(&h).await {
                Some(p) if state == MachineState::Running => ports = p,
                Some(_) => {}
                // Its holder was removed by hand: it cannot serve or start again.
                None => state = MachineState::Dead,
            }
        }
        Ok(MachineInfo {
            id: c.id.unwrap_or_default(),
            resource_name: c
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            state,
            labels,
            ports,
        })
    }

    async fn list_other(&self, selector: &Selector) -> Result<Vec<OtherResource>> {
        let mut out = Vec::new();
        for h in self.holders(selector).await? {
            out.push(OtherResource {
                kind: "container",
                name: h
                    .names
                    .into_iter()
                    .flatten()
                    .next()
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_string(),
                labels: h.labels.unwrap_or_default().into_iter().collect(),
            });
        }
        let networks = self
            .docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(label_filters(selector)),
            }))
            .await
            .map_err(|e| map_err("list networks", e))?;
        for n in networks {
            out.push(OtherResource {
                kind: "network",
                name: n.name.unwrap_or_default(),
                labels: n.labels.unwrap_or_default().into_iter().collect(),
            });
        }
        let volumes = self
            .docker
            .list_volumes(Some(ListVolumesOptions {
                filters: Some(label_filters(selector)),
            }))
            .await
            .map_err(|e| map_err("list volumes", e))?;
        for v in volumes.volumes.unwrap_or_default() {
            out.push(OtherResource {
                kind: "volume",
                name: v.name,
                labels: v.labels.into_iter().collect(),
            });
        }
        Ok(out)
    }

    async fn ensure_network(&self, spec: &NetworkSpec) -> Result<()> {
        // Bounded: a create that loses a race finds the winner's network (or another free
        // subnet) on the next look.
        for _ in 0..6 {
            match self.docker.inspect_network(&spec.name, None).await {
                Ok(n) => {
                    let env = n.labels.as_ref().and_then(|l| l.get(labels::ENV));
                    return if env == spec.labels.get(labels::ENV) {
                        Ok(())
                    } else {
                        Err(ProviderError::Conflict {
                            message: format!(
                                "a docker network named `{}` exists but does not belong to this environment",
                                spec.name
                            ),
                        })
                    };
                }
                Err(e) => match map_err(format!("inspect network {}", spec.name), e) {
                    ProviderError::NotFound { .. } => {}
                    other if other.to_string().contains("ambiguous") => {
                        self.dedupe_network(&spec.name, spec.labels.get(labels::ENV))
                            .await?;
                        continue;
                    }
                    other => return Err(other),
                },
            }
            let subnet = match (&spec.subnet, &spec.subnet_pool) {
                (Some(s), _) => Some(s.clone()),
                (None, Some(pool)) => Some(self.free_subnet(pool).await?),
                (None, None) => None,
            };
            let request = NetworkCreateRequest {
                name: spec.name.clone(),
                driver: Some("bridge".to_string()),
                labels: Some(spec.labels.clone().into_iter().collect()),
                ipam: subnet.map(|s| Ipam {
                    config: Some(vec![IpamConfig {
                        subnet: Some(s),
                        ..IpamConfig::default()
                    }]),
                    ..Ipam::default()
                }),
                ..NetworkCreateRequest::default()
            };
            match self.docker.create_network(request).await {
                Ok(_) => return Ok(()),
                // Another environment took the same free /24 a moment before: pick again.
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 403,
                    message,
                }) if message.contains("overlaps") && spec.subnet.is_none() => {
                    continue;
                }
                Err(e) => match map_err(format!("create network {}", spec.name), e) {
                    ProviderError::Conflict { .. } => continue,
                    other => return Err(other),
                },
            }
        }
        Err(ProviderError::Conflict {
            message: format!("network `{}` could not be created", spec.name),
        })
    }

    async fn list(&self, selector: &Selector) -> Result<Vec<MachineInfo>> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(label_filters(selector)),
            ..ListContainersOptions::default()
        };
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| map_err("list containers", e))?;
        let summary_ports = |c: &bollard::models::ContainerSummary| {
            let mut ports: Vec<PortSpec> = c
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    Some(PortSpec {
                        host_ip: p.ip.clone().unwrap_or_default(),
                        host_port: p.public_port?,
                        guest_port: p.private_port,
                        protocol: match p.typ.map(|t| t.to_string()).as_deref() {
                            Some("udp") => Protocol::Udp,
                            _ => Protocol::Tcp,
                        },
                    })
                })
                .collect();
            ports.sort();
            ports.dedup();
            ports
        };
        let is_holder = |c: &bollard::models::ContainerSummary| {
            c.labels
                .as_ref()
                .is_some_and(|l| l.contains_key(labels::HOLDER))
        };
        // Holders are no machines; a running generation joined to one shows its ports.
        let holders: HashMap<String, Vec<PortSpec>> = containers
            .iter()
            .filter(|c| is_holder(c))
            .filter_map(|c| Some((c.id.clone()?, summary_ports(c))))
            .collect();
        let mut out = Vec::new();
        for c in containers.iter().filter(|c| !is_holder(c)) {
            let state = state_from_summary(c.state);
            let joined = c
                .host_config
                .as_ref()
                .and_then(|h| h.network_mode.as_deref())
                .and_then(|m| m.strip_prefix("container:"));
            let (state, ports) = match joined {
                Some(h) => {
                    let held = match holders.get(h) {
                        Some(p) => Some(p.clone()),
                        None => self.holder_ports(h).await,
                    };
                    match held {
                        Some(p) if state == MachineState::Running => (state, p),
                        Some(_) => (state, Vec::new()),
                        // Its holder was removed by hand: it cannot serve or start again.
                        None => (MachineState::Dead, Vec::new()),
                    }
                }
                None => (state, summary_ports(c)),
            };
            out.push(MachineInfo {
                id: c.id.clone().unwrap_or_default(),
                resource_name: c
                    .names
                    .iter()
                    .flatten()
                    .next()
                    .map(|n| n.trim_start_matches('/').to_string())
                    .unwrap_or_default(),
                state,
                labels: c.labels.clone().unwrap_or_default().into_iter().collect(),
                ports,
            });
        }
        Ok(out)
    }

    async fn purge(&self, selector: &Selector) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        // Network holders a generation's removal did not take (an interrupted destroy):
        // before the networks they are attached to.
        for h in self.holders(selector).await? {
            let Some(id) = h.id else { continue };
            if self.remove_container(&id).await? {
                let name = h.names.into_iter().flatten().next().unwrap_or(id);
                removed.push(format!("container {}", name.trim_start_matches('/')));
            }
        }
        let networks = self
            .docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(label_filters(selector)),
            }))
            .await
            .map_err(|e| map_err("list networks", e))?;
        for n in networks {
            let Some(name) = n.name else { continue };
            // By id: two networks may share a name (see `dedupe_network`).
            let id = n.id.unwrap_or_else(|| name.clone());
            match self.docker.remove_network(&id).await {
                Ok(()) => removed.push(format!("network {name}")),
                Err(e) => match map_err(format!("remove network {name}"), e) {
                    ProviderError::NotFound { .. } => {}
                    other => return Err(other),
                },
            }
        }
        let volumes = self
            .docker
            .list_volumes(Some(ListVolumesOptions {
                filters: Some(label_filters(selector)),
            }))
            .await
            .map_err(|e| map_err("list volumes", e))?;
        // Snapshot images whose tags are gone (replaced or deleted while a container used
        // them) go with their environment.
        let mut filters = label_filters(selector);
        filters.insert("dangling".to_string(), vec!["true".to_string()]);
        let images = self.images(filters).await?;
        for img in images {
            if self
                .docker
                .remove_image(&img.id, None::<RemoveImageOptions>, None)
                .await
                .is_ok()
            {
                removed.push(format!("image {}", &img.id[..img.id.len().min(19)]));
            }
        }
        for v in volumes.volumes.unwrap_or_default() {
            match self
                .docker
                .remove_volume(
                    &v.name,
                    None::<bollard::query_parameters::RemoveVolumeOptions>,
                )
                .await
            {
                Ok(()) => removed.push(format!("volume {}", v.name)),
                Err(e) => match map_err(format!("remove volume {}", v.name), e) {
                    ProviderError::NotFound { .. } => {}
                    other => return Err(other),
                },
            }
        }
        Ok(removed)
    }

    async fn exec(&self, id: &str, req: &ExecRequest, output: OutputSink<'_>) -> Result<i64> {
        let options = CreateExecOptions {
            cmd: Some(req.argv.clone()),
            env: exec_env(req),
            user: req.user.clone(),
            working_dir: req.workdir.clone(),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..CreateExecOptions::default()
        };
        // A commit pauses its container while it copies: one that a killed envrig sent
        // (a snapshot, an export) can land after the next envrig looked. Such a pause ends
        // with the commit: waited for, bounded (10 s).
        let mut tries = 0;
        let exec = loop {
            match self.docker.create_exec(id, options.clone()).await {
                Ok(e) => break e,
                Err(e) => {
                    let e = map_err(format!("create exec in {id}"), e);
                    tries += 1;
                    if tries >= 100 || !e.to_string().contains("is paused") {
                        return Err(e);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let started = self
            .docker
            .start_exec(&exec.id, None::<StartExecOptions>)
            .await
            .map_err(|e| map_err(format!("start exec in {id}"), e))?;
        if let StartExecResults::Attached {
            output: mut out, ..
        } = started
        {
            while let Some(chunk) = out.next().await {
                use bollard::container::LogOutput;
                match chunk.map_err(|e| map_err(format!("read exec output in {id}"), e))? {
                    LogOutput::StdOut { message } | LogOutput::Console { message } => {
                        output(OutputStream::Stdout, &message)
                    }
                    LogOutput::StdErr { message } => output(OutputStream::Stderr, &message),
                    LogOutput::StdIn { .. } => {}
                }
            }
        }
        exit_code(&self.docker, &exec.id).await
    }

    async fn exec_interactive(
        &self,
        id: &str,
        req: &ExecRequest,
        terminal: Terminal,
    ) -> Result<i64> {
        let exec = self
            .docker
            .create_exec(
                id,
                CreateExecOptions {
                    cmd: Some(req.argv.clone()),
                    env: exec_env(req),
                    user: req.user.clone(),
                    working_dir: req.workdir.clone(),
                    attach_stdin: Some(true),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    tty: Some(true),
                    ..CreateExecOptions::default()
                },
            )
            .await
            .map_err(|e| map_err(format!("create exec in {id}"), e))?;
        let started = self
            .docker
            .start_exec(
                &exec.id,
                Some(StartExecOptions {
                    tty: true,
                    ..StartExecOptions::default()
                }),
            )
            .await
            .map_err(|e| map_err(format!("start exec in {id}"), e))?;
        let StartExecResults::Attached {
            output: mut out,
            mut input,
        } = started
        else {
            return exit_code(&self.docker, &exec.id).await;
        };
        if let Some((width, height)) = terminal.size {
            // Best effort: a shell works at the default size too.
            let _ = self
                .docker
                .resize_exec(&exec.id, ResizeExecOptions { height, width })
                .await;
        }
        let Terminal {
            input: mut stdin,
            output: mut stdout,
            ..
        } = terminal;
        let pump = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut stdin, &mut input).await;
            let _ = input.shutdown().await;
        });
        while let Some(chunk) = out.next().await {
            let Ok(chunk) = chunk else { break };
            if stdout.write_all(&chunk.into_bytes()).await.is_err() {
                break;
            }
            let _ = stdout.flush().await;
        }
        pump.abort();
        exit_code(&self.docker, &exec.id).await
    }

    async fn upload(&self, id: &str, dest: &str, tar: Vec<u8>) -> Result<()> {
        let options = UploadToContainerOptions {
            path: dest.to_string(),
            ..UploadToContainerOptions::default()
        };
        self.docker
            .upload_to_container(id, Some(options), bollard::body_full(tar.into()))
            .await
            .map_err(|e| map_err(format!("upload to {id}:{dest}"), e))
    }

    async fn read_file(&self, id: &str, path: &str) -> Result<Option<Vec<u8>>> {
        self.archive_file(id, path).await
    }

    async fn pause(&self, id: &str) -> Result<()> {
        match self.docker.pause_container(id).await {
            Ok(()) => Ok(()),
            Err(e) => match map_err(format!("pause container {id}"), e) {
                // Already paused.
                ProviderError::Conflict { message } if message.contains("already paused") => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn unpause(&self, id: &str) -> Result<()> {
        match self.docker.unpause_container(id).await {
            Ok(()) => Ok(()),
            Err(e) => match map_err(format!("unpause container {id}"), e) {
                ProviderError::Conflict { message } if message.contains("not paused") => Ok(()),
                ProviderError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn snapshot_save(
        &self,
        id: &str,
        name: &str,
        spec: &MachineSpec,
        labels: &BTreeMap<String, String>,
        running: bool,
    ) -> Result<Snapshot> {
        let created = labels.get(labels::CREATED).cloned().unwrap_or_default();
        let mut all = labels.clone();
        all.insert(labels::SNAPSHOT.to_string(), name.to_string());
        all.insert(SNAP_RUNNING.to_string(), running.to_string());
        all.insert(
            SNAP_SPEC.to_string(),
            serde_json::to_string(spec).map_err(|e| ProviderError::Engine {
                provider: NAME,
                op: "encode the snapshot's spec".into(),
                source: Box::new(e),
            })?,
        );
        let tag = snapshot_tag(&spec.resource_name, name);
        let (repo, tag) = tag.rsplit_once(':').unwrap_or((tag.as_str(), name));
        let options = CommitContainerOptions {
            container: Some(id.to_string()),
            repo: Some(repo.to_string()),
            tag: Some(tag.to_string()),
            // Frozen while committed (a machine the caller already paused stays paused).
            pause: true,
            ..CommitContainerOptions::default()
        };
        let config = ContainerConfig {
            labels: Some(all.clone().into_iter().collect()),
            ..ContainerConfig::default()
        };
        let committed = self
            .docker
            .commit_container(options, config)
            .await
            .map_err(|e| map_err(format!("commit container {id}"), e))?;
        Ok(Snapshot {
            id: committed.id,
            name: name.to_string(),
            machine: spec.machine.clone(),
            created,
            running,
            spec: spec.clone(),
            labels: all,
        })
    }

    async fn snapshot_list(&self, selector: &Selector) -> Result<Vec<Snapshot>> {
        let selector = selector.clone().has(labels::SNAPSHOT);
        let mut filters = label_filters(&selector);
        filters.insert("dangling".to_string(), vec!["false".to_string()]);
        Ok(self
            .images(filters)
            .await?
            .into_iter()
            .filter_map(|i| snapshot_from_labels(Some(i.id), i.labels.into_iter().collect()))
            .collect())
    }

    async fn snapshot_restore(
        &self,
        snap: &Snapshot,
        current: Option<&str>,
        spec: &MachineSpec,
    ) -> Result<MachineInfo> {
        if let Some(id) = current {
            self.remove(id).await?;
        }
        let mut spec = spec.clone();
        spec.base = snap.id.clone();
        let info = self.create(&spec).await?;
        if snap.running {
            self.start(&info.id).await?;
        }
        self.inspect(&info.id).await
    }

    async fn snapshot_delete(&self, snap: &Snapshot) -> Result<()> {
        // Snapshots are found by tag (dangling images are not listed): removing the tag
        // is deleting the snapshot. The image itself goes when nothing uses it any more
        // (a restored container may run on it; `purge` collects what is left).
        let tag = snapshot_tag(&snap.spec.resource_name, &snap.name);
        let options = RemoveImageOptions {
            force: true,
            ..RemoveImageOptions::default()
        };
        match self.docker.remove_image(&tag, Some(options), None).await {
            Ok(_) => Ok(()),
            Err(e) => match map_err(format!("remove snapshot {tag}"), e) {
                ProviderError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn snapshot_export(&self, snap: &Snapshot, dest: &std::path::Path) -> Result<u64> {
        use tokio::io::AsyncWriteExt as _;
        let io = |op: &str, e: std::io::Error| ProviderError::Engine {
            provider: NAME,
            op: op.to_string(),
            source: Box::new(e),
        };
        let mut file = tokio::fs::File::create(dest)
            .await
            .map_err(|e| io("create the export file", e))?;
        let mut stream = self.docker.export_image(&snap.id);
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| map_err(format!("save image {}", snap.id), e))?;
            size += chunk.len() as u64;
            file.write_all(&chunk)
                .await
                .map_err(|e| io("write the export file", e))?;
        }
        file.flush()
            .await
            .map_err(|e| io("write the export file", e))?;
        Ok(size)
    }

    async fn check_export(&self, src: &std::path::Path) -> Result<()> {
        let src = src.to_path_buf();
        let checked = tokio::task::spawn_blocking(move || export_check::check(&src))
            .await
            .map_err(|e| ProviderError::Engine {
                provider: NAME,
                op: "read the image archive".into(),
                source: Box::new(e),
            })?;
        match checked {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => Err(ProviderError::Refused {
                message: format!("its image archive is refused: {why}"),
            }),
            Err(e) => Err(ProviderError::Refused {
                message: format!("its image archive cannot be read as a tar: {e}"),
            }),
        }
    }

    async fn snapshot_import(
        &self,
        src: &std::path::Path,
        snap: &Snapshot,
        labels: &BTreeMap<String, String>,
    ) -> Result<Snapshot> {
        // Checked here too, whatever the caller did: `docker load` would retag host images.
        self.check_export(src).await?;
        let file = tokio::fs::File::open(src)
            .await
            .map_err(|e| ProviderError::Engine {
                provider: NAME,
                op: "open the image archive".into(),
                source: Box::new(e),
            })?;
        // Streamed from the file: an image is never held in memory whole.
        let body = futures_util::stream::unfold(file, |mut f| async move {
            use tokio::io::AsyncReadExt as _;
            let mut buf = vec![0u8; 1 << 20];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(buf), f))
                }
                Err(e) => Some((Err(e), f)),
            }
        })
        .map(|r: std::io::Result<Vec<u8>>| r.map(Into::into));
        let mut stream = self.docker.import_image(
            ImportImageOptions::default(),
            bollard::body_try_stream(body),
            None,
        );
        let mut loaded = None;
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| map_err("load image", e))?;
            if let Some(s) = info.stream.as_deref()
                && let Some(id) = s.trim().strip_prefix("Loaded image ID: ")
            {
                loaded = Some(id.trim().to_string());
            }
            if let Some(s) = info.stream.as_deref()
                && let Some(r) = s.trim().strip_prefix("Loaded image: ")
            {
                loaded.get_or_insert_with(|| r.trim().to_string());
            }
        }
        let loaded = loaded.unwrap_or_else(|| snap.id.clone());
        // The loaded image carries the exporter's labels and no tag: until it is relabelled,
        // a tag naming this process keeps it findable, so what a killed import loaded is
        // removed by `gc` (`sweep_work`).
        let guard = envrig_provider_api::work::name(&snap.machine);
        let _ = self
            .docker
            .tag_image(
                &loaded,
                Some(bollard::query_parameters::TagImageOptions {
                    repo: Some(IMPORT_REPO.to_string()),
                    tag: Some(guard.clone()),
                }),
            )
            .await;
        // Re-label for this environment: a commit of a throwaway container is the way Docker
        // changes labels; instead, tag the image and keep its labels, recording the new
        // environment in a derived image.
        let img = self
            .docker
            .inspect_image(&loaded)
            .await
            .map_err(|e| map_err(format!("inspect loaded image {loaded}"), e))?;
        let mut all: BTreeMap<String, String> = img
            .config
            .and_then(|c| c.labels)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| {
                // The old environment's labels are blanked, the snapshot's own kept.
                let keep = k == labels::SNAPSHOT || k == SNAP_RUNNING || k == SNAP_SPEC;
                let v = if k.starts_with(labels::PREFIX) && !keep {
                    String::new()
                } else {
                    v
                };
                (k, v)
            })
            .collect();
        all.extend(labels.clone());
        // Named and tagged as the importing environment's snapshot of its own machine (the
        // exporter's tag would clash with another import of the same archive).
        all.insert(labels::SNAPSHOT.to_string(), snap.name.clone());
        all.insert(
            SNAP_SPEC.to_string(),
            serde_json::to_string(&snap.spec).map_err(|e| ProviderError::Engine {
                provider: NAME,
                op: "encode the snapshot's spec".into(),
                source: Box::new(e),
            })?,
        );
        let relabelled = self.relabel(&img.id.unwrap_or(loaded), &all).await;
        // Only the tag goes: the image is the relabelled one's parent.
        let _ = self
            .docker
            .remove_image(
                &format!("{IMPORT_REPO}:{guard}"),
                Some(RemoveImageOptions {
                    noprune: true,
                    ..RemoveImageOptions::default()
                }),
                None,
            )
            .await;
        let relabelled = relabelled?;
        snapshot_from_labels(Some(relabelled), all).ok_or_else(|| ProviderError::Conflict {
            message: "the loaded image is not an envrig snapshot".into(),
        })
    }

    async fn package(
        &self,
        id: &str,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<BaseInfo> {
        let (repo, tag) = match name.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r.to_string(), t.to_string()),
            _ => (name.to_string(), "latest".to_string()),
        };
        // A commit keeps the container's labels, and containers inherit their image's: blank
        // out every envrig label so a machine made from this box belongs to nobody but the
        // environment that creates it.
        let info = self.inspect(id).await?;
        let mut labels_out: BTreeMap<String, String> = info
            .labels
            .keys()
            .filter(|k| k.starts_with(labels::PREFIX))
            .map(|k| (k.clone(), String::new()))
            .collect();
        labels_out.extend(labels.clone());
        let labels = &labels_out;
        let options = CommitContainerOptions {
            container: Some(id.to_string()),
            repo: Some(repo),
            tag: Some(tag),
            pause: true,
            ..CommitContainerOptions::default()
        };
        let config = ContainerConfig {
            labels: Some(labels.clone().into_iter().collect()),
            ..ContainerConfig::default()
        };
        let committed = self
            .docker
            .commit_container(options, config)
            .await
            .map_err(|e| map_err(format!("commit container {id}"), e))?;
        Ok(BaseInfo { id: committed.id })
    }

    async fn box_add(
        &self,
        _name: &str,
        _source: &std::path::Path,
        _force: bool,
    ) -> Result<StoredBox> {
        Err(ProviderError::NotSupported {
            provider: NAME,
            what: "a box store (docker's images are its boxes: `docker load`, `envrig package`)"
                .into(),
        })
    }

    async fn box_list(&self) -> Result<Vec<StoredBox>> {
        Ok(Vec::new())
    }

    async fn mark_baseline(&self, id: &str) -> Result<()> {
        self.mark_baseline_impl(id).await
    }

    async fn baked_layers(&self) -> Result<Vec<envrig_provider_api::BakedLayer>> {
        let filters = HashMap::from([("label".to_string(), vec![labels::BAKED.to_string()])]);
        Ok(self
            .images(filters)
            .await?
            .into_iter()
            .filter_map(|i| {
                let name = i
                    .repo_tags
                    .iter()
                    .find(|t| t.starts_with("envrig-baked-"))?
                    .trim_end_matches(":latest")
                    .to_string();
                let label = |k: &str| i.labels.get(k).cloned().unwrap_or_default();
                Some(envrig_provider_api::BakedLayer {
                    name,
                    fingerprint: label(labels::BAKED),
                    created: label(labels::CREATED),
                })
            })
            .collect())
    }

    async fn remove_baked(&self, name: &str) -> Result<()> {
        self.docker
            .remove_image(name, None::<RemoveImageOptions>, None)
            .await
            .map(|_| ())
            .map_err(|e| map_err(format!("remove image {name}"), e))
    }

    async fn drift(&self, id: &str) -> Result<Vec<envrig_provider_api::drift::PathChange>> {
        self.drift_impl(id).await
    }

    /// Images that a killed `import` loaded and did not relabel (their guard tag names a
    /// process that is gone).
    async fn sweep_work(&self) -> Result<Vec<String>> {
        let filters = HashMap::from([("reference".to_string(), vec![format!("{IMPORT_REPO}:*")])]);
        let mut out = Vec::new();
        for img in self.images(filters).await? {
            for t in &img.repo_tags {
                let Some(tag) = t.strip_prefix(&format!("{IMPORT_REPO}:")) else {
                    continue;
                };
                if envrig_provider_api::work::abandoned(tag)
                    && self
                        .docker
                        .remove_image(t, None::<RemoveImageOptions>, None)
                        .await
                        .is_ok()
                {
                    out.push(format!("image {t}"));
                }
            }
        }
        Ok(out)
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

/// The repository of the tags that keep an image being imported (see `snapshot_import`).
const IMPORT_REPO: &str = "envrig-import";

/// The image tag of a snapshot: `envrig-snapshot/RESOURCE:NAME`.
fn snapshot_tag(resource_name: &str, name: &str) -> String {
    format!("envrig-snapshot/{resource_name}:{name}")
}

/// Labels on a snapshot image that only the Docker provider reads.
const SNAP_RUNNING: &str = "dev.envrig.snapshot.running";
const SNAP_SPEC: &str = "dev.envrig.snapshot.spec";

fn snapshot_from_labels(id: Option<String>, labels: BTreeMap<String, String>) -> Option<Snapshot> {
    let spec: MachineSpec = serde_json::from_str(labels.get(SNAP_SPEC)?).ok()?;
    Some(Snapshot {
        id: id?,
        name: labels.get(labels::SNAPSHOT)?.clone(),
        machine: spec.machine.clone(),
        created: labels.get(labels::CREATED).cloned().unwrap_or_default(),
        running: labels.get(SNAP_RUNNING).is_some_and(|r| r == "true"),
        spec,
        labels,
    })
}

impl DockerProvider {
    /// A new image with `labels` on top of `image` (Docker cannot change an image's labels in
    /// place): a container is created from it, never started, committed and removed.
    async fn relabel(&self, image: &str, labels: &BTreeMap<String, String>) -> Result<String> {
        // The helper is a build, never a machine: if envrig is killed before it goes, `up`
        // leaves it aside and `destroy` and `gc` remove it. The image gets the mark blanked
        // (a commit merges the container's labels in; an empty label counts as none).
        let mut helper = labels.clone();
        helper.insert(labels::CANDIDATE.to_string(), "relabel".to_string());
        let mut labels = labels.clone();
        labels.insert(labels::CANDIDATE.to_string(), String::new());
        let labels = &labels;
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            entrypoint: Some(KEEPALIVE.iter().map(|s| s.to_string()).collect()),
            labels: Some(helper.into_iter().collect()),
            ..ContainerCreateBody::default()
        };
        let c = self
            .docker
            .create_container(None::<CreateContainerOptions>, body)
            .await
            .map_err(|e| map_err(format!("create a container from {image}"), e))?;
        let snap = labels
            .get(labels::SNAPSHOT)
            .cloned()
            .unwrap_or_else(|| "imported".into());
        let spec_name = labels
            .get(SNAP_SPEC)
            .and_then(|s| serde_json::from_str::<MachineSpec>(s).ok())
            .map(|s| s.resource_name)
            .unwrap_or_else(|| "imported".into());
        let committed = self
            .docker
            .commit_container(
                CommitContainerOptions {
                    container: Some(c.id.clone()),
                    repo: Some(format!("envrig-snapshot/{spec_name}")),
                    tag: Some(snap),
                    ..CommitContainerOptions::default()
                },
                ContainerConfig {
                    labels: Some(labels.clone().into_iter().collect()),
                    ..ContainerConfig::default()
                },
            )
            .await;
        self.remove(&c.id).await?;
        Ok(committed
            .map_err(|e| map_err(format!("commit a relabelled {image}"), e))?
            .id)
    }
}

/// The exit code of a finished exec. The output stream ends when the process does, but the
/// engine may record the code a moment later, so poll briefly (bounded).
async fn exit_code(docker: &Docker, exec_id: &str) -> Result<i64> {
    for _ in 0..200 {
        let info = docker
            .inspect_exec(exec_id)
            .await
            .map_err(|e| map_err("inspect exec", e))?;
        if info.running != Some(true) {
            return Ok(info.exit_code.unwrap_or(-1));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(ProviderError::Conflict {
        message: "the command's output ended but it did not exit within 2 s".to_string(),
    })
}
