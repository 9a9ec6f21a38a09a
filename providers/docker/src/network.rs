//! An environment's private network, and what an environment has besides its machines.
//!
//! The network is a bridge made on demand ([`DockerProvider::ensure_bridge_network`]), on a
//! free /24 of the subnet pool unless the Envfile fixes one. [`DockerProvider::list_other_resources`]
//! and [`DockerProvider::purge_resources`] find and remove the rest of an environment: network
//! holders, networks, volumes and dangling snapshot images.
//!
//! Containers whose network went away under them: a halted environment's network has no
//! running container, so `docker network prune` (a
//! common clean-up) removes it; its containers still name it by id and cannot start ("network
//! … not found"). The core makes the network again (same name, labels and, when the Envfile
//! fixes it, subnet) before it starts machines; [`DockerProvider::start_reattaching`] then
//! moves a stopped container from the lost network to the one of the same name, with its
//! names (aliases), and starts it.

mod shared;

pub(crate) use shared::Resolver;

use bollard::models::{
    ContainerInspectResponse, EndpointSettings, Ipam, IpamConfig, Network, NetworkConnectRequest,
    NetworkCreateRequest, NetworkDisconnectRequest, Volume,
};
use bollard::query_parameters::{ListNetworksOptions, ListVolumesOptions, RemoveImageOptions};
use envrig_provider_api::{
    NetworkSpec, OtherResource, ProviderError, Result, Selector, labels, subnet,
};

use crate::error::map_err;
use crate::{DockerProvider, label_filters};

impl DockerProvider {
    /// Starts container `id`; when a network it was attached to no longer exists, attaches
    /// it to the network of that name (if there is one) and starts it again.
    pub(crate) async fn start_reattaching(&self, id: &str, what: &str) -> Result<()> {
        let first = self
            .docker
            .start_container(id, None)
            .await
            .map_err(|e| map_err(format!("start {what} {id}"), e));
        let Err(e) = first else { return Ok(()) };
        if !e.to_string().contains("network") {
            return Err(e);
        }
        let mut c = self.inspect_raw(id).await?;
        if e.to_string().contains("ambiguous") {
            // A network's create that a killed envrig sent landed after ours.
            let env = c
                .config
                .as_ref()
                .and_then(|c| c.labels.as_ref())
                .and_then(|l| l.get(envrig_provider_api::labels::ENV))
                .cloned();
            let names: Vec<String> = c
                .network_settings
                .as_ref()
                .and_then(|n| n.networks.as_ref())
                .map(|n| n.keys().cloned().collect())
                .unwrap_or_default();
            for name in names {
                self.dedupe_network(&name, env.as_ref()).await?;
            }
            match self.docker.start_container(id, None).await {
                Ok(()) => return Ok(()),
                Err(e2) => {
                    let e2 = map_err(format!("start {what} {id}"), e2);
                    if !e2.to_string().contains("network") {
                        return Err(e2);
                    }
                }
            }
            c = self.inspect_raw(id).await?;
        }
        if !self.reattach(&c).await? {
            return Err(e);
        }
        self.docker
            .start_container(id, None)
            .await
            .map_err(|e| map_err(format!("start {what} {id}"), e))
    }

    /// Moves stopped container `c` off every network that is gone, onto the network of the
    /// same name, keeping its aliases. Whether anything was moved.
    async fn reattach(&self, c: &ContainerInspectResponse) -> Result<bool> {
        let Some(id) = c.id.as_deref() else {
            return Ok(false);
        };
        let short = &id[..id.len().min(12)];
        let networks = c
            .network_settings
            .as_ref()
            .and_then(|n| n.networks.clone())
            .unwrap_or_default();
        let mut moved = false;
        for (name, ep) in networks {
            let Some(net_id) = ep.network_id.as_deref().filter(|n| !n.is_empty()) else {
                continue;
            };
            match self.docker.inspect_network(net_id, None).await {
                Ok(_) => continue,
                Err(e) => match map_err(format!("inspect network {net_id}"), e) {
                    ProviderError::NotFound { .. } => {}
                    other => return Err(other),
                },
            }
            self.docker
                .disconnect_network(
                    &name,
                    NetworkDisconnectRequest {
                        container: id.to_string(),
                        force: Some(true),
                    },
                )
                .await
                .map_err(|e| map_err(format!("detach {short} from the lost network {name}"), e))?;
            // Docker adds the container's short id as an alias by itself.
            let aliases: Vec<String> = ep
                .aliases
                .unwrap_or_default()
                .into_iter()
                .filter(|a| !id.starts_with(a.as_str()))
                .collect();
            self.docker
                .connect_network(
                    &name,
                    NetworkConnectRequest {
                        container: id.to_string(),
                        endpoint_config: Some(EndpointSettings {
                            aliases: Some(aliases),
                            ipam_config: ep.ipam_config,
                            ..EndpointSettings::default()
                        }),
                    },
                )
                .await
                .map_err(|e| map_err(format!("attach {short} to network {name}"), e))?;
            tracing::info!("container {short}: network {name} was made again; attached to it");
            moved = true;
        }
        Ok(moved)
    }

    /// Removes every network named `name` of environment `env` but the oldest. Docker's
    /// check for a duplicate name is racy: a create that a killed envrig sent and the next
    /// envrig's create can both succeed, and then every use of the name is "ambiguous".
    /// Containers on a removed one are moved to the kept one when they start
    /// ([`Self::start_reattaching`]); one that runs on it keeps it (its removal fails).
    pub(crate) async fn dedupe_network(&self, name: &str, env: Option<&String>) -> Result<()> {
        let filters =
            std::collections::HashMap::from([("name".to_string(), vec![name.to_string()])]);
        let mut same: Vec<_> = self
            .docker
            .list_networks(Some(bollard::query_parameters::ListNetworksOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(|e| map_err("list networks", e))?
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(name))
            .filter(|n| {
                n.labels
                    .as_ref()
                    .and_then(|l| l.get(envrig_provider_api::labels::ENV))
                    == env
            })
            .collect();
        same.sort_by(|a, b| a.created.cmp(&b.created));
        for n in same.iter().skip(1) {
            if let Some(id) = n.id.as_deref() {
                let _ = self.docker.remove_network(id).await;
                tracing::info!("network {name}: removed the duplicate {id}");
            }
        }
        Ok(())
    }
}

impl DockerProvider {
    /// Whether this engine manages a Swarm (may make and remove Swarm-wide networks).
    async fn is_swarm_manager(&self) -> bool {
        self.describe_engine()
            .await
            .ok()
            .and_then(|i| i.cluster)
            .is_some_and(|c| c.manager)
    }

    /// The first /24 of `pool` that no docker network uses.
    async fn free_subnet(&self, pool: &str) -> Result<String> {
        let pool_net = subnet::parse(pool, 8..=24).ok_or_else(|| ProviderError::Conflict {
            message: format!("ENVRIG_SUBNET_POOL `{pool}` is not an IPv4 CIDR like 198.18.0.0/15"),
        })?;
        let networks = self
            .docker
            .list_networks(None::<ListNetworksOptions>)
            .await
            .map_err(|e| map_err("list networks", e))?;
        let used: Vec<subnet::Ipv4Net> = networks
            .iter()
            .flat_map(|n| n.ipam.iter().flat_map(|i| i.config.iter().flatten()))
            .filter_map(|c| subnet::parse(c.subnet.as_deref()?, 0..=32))
            .collect();
        subnet::pick(pool_net, &used, 0)
            .map(|s| s.to_string())
            .ok_or_else(|| ProviderError::Conflict {
                message: format!("no free /24 left in ENVRIG_SUBNET_POOL `{pool}`"),
            })
    }

    pub(crate) async fn list_other_resources(
        &self,
        selector: &Selector,
    ) -> Result<Vec<OtherResource>> {
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
        let (networks, volumes) = self.networks_and_volumes(selector).await?;
        for n in networks {
            out.push(OtherResource {
                kind: "network",
                name: n.name.unwrap_or_default(),
                labels: n.labels.unwrap_or_default().into_iter().collect(),
            });
        }
        for v in volumes {
            out.push(OtherResource {
                kind: "volume",
                name: v.name,
                labels: v.labels.into_iter().collect(),
            });
        }
        Ok(out)
    }

    pub(crate) async fn ensure_bridge_network(&self, spec: &NetworkSpec) -> Result<()> {
        // Bounded: a create that loses a race finds the winner's network (or another free
        // subnet) on the next look.
        for _ in 0..6 {
            match self.docker.inspect_network(&spec.name, None).await {
                Ok(n) => {
                    let env = n.labels.as_ref().and_then(|l| l.get(labels::ENV));
                    if env == spec.labels.get(labels::ENV) && self.moved_away(&n, spec).await {
                        // Made again on the shared bridge; its stopped containers are
                        // attached to the new one when they start.
                        continue;
                    }
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
            // Spanning a Swarm's engines: an attachable overlay, which each machine joins as
            // a plain container through its own engine (no service: no VIP, no IPVS).
            let request = match self.join_request(spec).await? {
                Some(joined) => joined,
                None => NetworkCreateRequest {
                    name: spec.name.clone(),
                    driver: Some(if spec.span { "overlay" } else { "bridge" }.to_string()),
                    attachable: spec.span.then_some(true),
                    labels: Some(spec.labels.clone().into_iter().collect()),
                    ipam: subnet.map(|s| Ipam {
                        config: Some(vec![IpamConfig {
                            subnet: Some(s),
                            ..IpamConfig::default()
                        }]),
                        ..Ipam::default()
                    }),
                    ..NetworkCreateRequest::default()
                },
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

    /// The networks and the volumes that `selector` selects.
    async fn networks_and_volumes(
        &self,
        selector: &Selector,
    ) -> Result<(Vec<Network>, Vec<Volume>)> {
        let filters = Some(label_filters(selector));
        let networks = self.docker.list_networks(Some(ListNetworksOptions {
            filters: filters.clone(),
        }));
        let volumes = self
            .docker
            .list_volumes(Some(ListVolumesOptions { filters }));
        let networks = networks.await.map_err(|e| map_err("list networks", e))?;
        let volumes = volumes.await.map_err(|e| map_err("list volumes", e))?;
        Ok((networks, volumes.volumes.unwrap_or_default()))
    }

    pub(crate) async fn purge_resources(&self, selector: &Selector) -> Result<Vec<String>> {
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
        let (networks, volumes) = self.networks_and_volumes(selector).await?;
        for n in networks {
            let Some(name) = n.name else { continue };
            // A Swarm-wide network seen from a worker: its manager removes it (a worker may
            // not), and it leaves the worker with its last container.
            if n.scope.as_deref() == Some("swarm") && !self.is_swarm_manager().await {
                continue;
            }
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
        for v in volumes {
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
}
