//! Machines: containers made from a [`MachineSpec`], started, stopped, paused, removed,
//! inspected and listed; what the engine reports is read back as [`MachineInfo`] (state,
//! labels, published ports).

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, ContainerSummaryStateEnum, EndpointSettings,
    HostConfig, NetworkingConfig, PortBinding, PortMap,
};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, RemoveContainerOptions, StopContainerOptions,
};
use envrig_provider_api::{
    MachineInfo, MachineSpec, MachineState, OptionValue, PortSpec, Protocol, ProviderError, Result,
    Selector, labels,
};

use crate::error::map_err;
use crate::{DockerProvider, KEEPALIVE, holder, label_filters};

impl DockerProvider {
    /// The ports `spec` publishes: the exposed keys and their host bindings.
    pub(crate) fn published(spec: &MachineSpec) -> (Vec<String>, PortMap) {
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
    pub(crate) fn endpoint(spec: &MachineSpec) -> Option<NetworkingConfig> {
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
    /// `resolver`: the joined network's DNS (set here only on a container with no holder:
    /// one in a holder's network namespace shares its resolver).
    fn container_body(
        spec: &MachineSpec,
        holder: Option<&str>,
        resolver: Option<&crate::network::Resolver>,
    ) -> ContainerCreateBody {
        let resolver = resolver.filter(|_| holder.is_none());
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
                dns: resolver.map(|r| vec![r.server.clone()]),
                dns_search: resolver.and_then(|r| r.domain.clone()).map(|d| vec![d]),
                ..HostConfig::default()
            }),
            ..ContainerCreateBody::default()
        }
    }

    pub(crate) fn ports_from_map(map: Option<&PortMap>) -> Vec<PortSpec> {
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

    /// The engine's whole answer about container `id`.
    pub(crate) async fn inspect_raw(
        &self,
        id: &str,
    ) -> Result<bollard::models::ContainerInspectResponse> {
        self.docker.inspect_container(id, None).await.map_err(|e| {
            match map_err(format!("inspect container {id}"), e) {
                ProviderError::NotFound { .. } => ProviderError::NotFound {
                    what: format!("container `{id}`"),
                },
                other => other,
            }
        })
    }

    /// Removes container `id` with its anonymous volumes, by force; `false` when it was
    /// already gone or another removal (a concurrent destroy) is taking it.
    pub(crate) async fn remove_container(&self, id: &str) -> Result<bool> {
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

    pub(crate) async fn stop_container(&self, id: &str, timeout: Duration) -> Result<()> {
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

    pub(crate) async fn create_machine(&self, spec: &MachineSpec) -> Result<MachineInfo> {
        let holder = if holder::wants_holder(spec) {
            Some(self.ensure_holder(spec).await?)
        } else {
            None
        };
        let resolver = match holder {
            Some(_) => None,
            None => self.resolver(spec).await,
        };
        let options = CreateContainerOptions {
            name: Some(spec.resource_name.clone()),
            ..CreateContainerOptions::default()
        };
        let body = Self::container_body(spec, holder.as_deref(), resolver.as_ref());
        let created = self
            .docker
            .create_container(Some(options), body)
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

    pub(crate) async fn start_machine(&self, id: &str) -> Result<()> {
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
    pub(crate) async fn start_new_machine(&self, id: &str, spec: &MachineSpec) -> Result<()> {
        if spec.handover || !spec.ports.is_empty() {
            return self.start_machine(id).await;
        }
        self.start_reattaching(id, "container").await
    }

    pub(crate) async fn stop_machine(&self, id: &str, timeout: Duration) -> Result<()> {
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

    pub(crate) async fn remove_machine(&self, id: &str) -> Result<()> {
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

    pub(crate) async fn inspect_machine(&self, id: &str) -> Result<MachineInfo> {
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

    pub(crate) async fn list_machines(&self, selector: &Selector) -> Result<Vec<MachineInfo>> {
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

    pub(crate) async fn pause_machine(&self, id: &str) -> Result<()> {
        match self.docker.pause_container(id).await {
            Ok(()) => Ok(()),
            Err(e) if crate::error::cannot_pause(&e).is_some() => {
                Err(ProviderError::NotSupported {
                    provider: crate::error::NAME,
                    what: format!(
                        "pausing a container on this engine (it says: {})",
                        crate::error::cannot_pause(&e).unwrap_or_default()
                    ),
                })
            }
            Err(e) => match map_err(format!("pause container {id}"), e) {
                // Already paused.
                ProviderError::Conflict { message } if message.contains("already paused") => Ok(()),
                other => Err(other),
            },
        }
    }

    pub(crate) async fn unpause_machine(&self, id: &str) -> Result<()> {
        match self.docker.unpause_container(id).await {
            Ok(()) => Ok(()),
            Err(e) => match map_err(format!("unpause container {id}"), e) {
                ProviderError::Conflict { message } if message.contains("not paused") => Ok(()),
                ProviderError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
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
