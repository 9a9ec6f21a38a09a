//! A private network made on another provider's bridge of this host ([`NetworkSpec::join`]):
//! the containers take addresses from the range left to them, resolve names through the
//! other provider's DNS server (Docker's embedded DNS still answers the containers' own
//! names and forwards the rest there), and are named in that DNS by the core.

use std::collections::HashMap;

use bollard::models::{ContainerInspectResponse, Ipam, IpamConfig, NetworkCreateRequest};
use envrig_provider_api::{MachineSpec, NetworkSpec, Result};

use crate::error::map_err;
use crate::{DockerProvider, Flavor};

/// On a joined network: the DNS server its containers use.
const DNS: &str = "dev.envrig.docker.dns";
/// On a joined network: its DNS domain, its containers' search domain.
const DOMAIN: &str = "dev.envrig.docker.domain";

/// A container's resolver on a joined network: the server and the search domain.
pub(crate) struct Resolver {
    pub server: String,
    pub domain: Option<String>,
}

impl DockerProvider {
    /// The request that makes `spec`'s network on the bridge it is to join, when this
    /// engine can: Docker (not Podman, whose networks are its own), a bridge network, and
    /// an engine on the host that shares the bridge (by the host's name). `None`: a network
    /// of its own.
    pub(crate) async fn join_request(
        &self,
        spec: &NetworkSpec,
    ) -> Result<Option<NetworkCreateRequest>> {
        let Some(join) = spec.join.as_ref().filter(|_| !spec.span) else {
            return Ok(None);
        };
        if self.flavor != Flavor::Docker {
            return Ok(None);
        }
        let info = self
            .docker
            .info()
            .await
            .map_err(|e| map_err("ask the engine for its host's name", e))?;
        if info.name.as_deref() != Some(join.host.as_str()) {
            tracing::debug!(
                "network {}: not joining bridge {} of host {} from host {:?}",
                spec.name,
                join.bridge,
                join.host,
                info.name
            );
            return Ok(None);
        }
        let mut labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
        labels.insert(DNS.to_string(), join.dns.clone());
        if let Some(d) = &join.domain {
            labels.insert(DOMAIN.to_string(), d.clone());
        }
        Ok(Some(NetworkCreateRequest {
            name: spec.name.clone(),
            driver: Some("bridge".to_string()),
            labels: Some(labels),
            options: Some(HashMap::from([(
                "com.docker.network.bridge.name".to_string(),
                join.bridge.clone(),
            )])),
            ipam: Some(Ipam {
                config: Some(vec![IpamConfig {
                    subnet: Some(join.subnet.clone()),
                    gateway: Some(join.gateway.clone()),
                    ip_range: Some(join.range.clone()),
                    ..IpamConfig::default()
                }]),
                ..Ipam::default()
            }),
            ..NetworkCreateRequest::default()
        }))
    }

    /// Whether network `n`, made on a shared bridge, no longer matches the network it is to
    /// join (the other provider made its network again, on another subnet, while the
    /// environment was halted) and was removed for it to be made again.
    pub(crate) async fn moved_away(
        &self,
        n: &bollard::models::NetworkInspect,
        spec: &NetworkSpec,
    ) -> bool {
        let (Some(join), Some(labels)) = (&spec.join, &n.labels) else {
            return false;
        };
        if !labels.contains_key(DNS) {
            return false;
        }
        let subnet = n
            .ipam
            .as_ref()
            .and_then(|i| i.config.as_ref())
            .and_then(|c| c.first())
            .and_then(|c| c.subnet.clone());
        let bridge = n
            .options
            .as_ref()
            .and_then(|o| o.get("com.docker.network.bridge.name"));
        if subnet.as_deref() == Some(join.subnet.as_str()) && bridge == Some(&join.bridge) {
            return false;
        }
        let id = n.id.clone().unwrap_or_else(|| spec.name.clone());
        self.docker.remove_network(&id).await.is_ok()
    }

    /// The resolver a container of `spec` uses: the joined network's DNS server, when its
    /// network is one (else Docker's own).
    pub(crate) async fn resolver(&self, spec: &MachineSpec) -> Option<Resolver> {
        let attachment = spec.network.as_ref()?;
        // A network this engine does not show is none joined here: a Swarm's overlay is
        // seen by a worker only once a container of its own is attached to it.
        let n = self
            .docker
            .inspect_network(&attachment.network, None)
            .await
            .ok()?;
        let labels = n.labels.unwrap_or_default();
        labels.get(DNS).map(|server| Resolver {
            server: server.clone(),
            domain: labels.get(DOMAIN).cloned(),
        })
    }

    /// Container `id`'s address on a joined network (through its network holder when it
    /// has one), once it runs.
    pub(crate) async fn joined_address(&self, id: &str) -> Result<Option<String>> {
        let mut c = self.inspect_raw(id).await?;
        if let Some(holder) = crate::holder::joined_holder(&c) {
            c = self.inspect_raw(&holder).await?;
        }
        for (name, endpoint) in networks(&c) {
            let Ok(n) = self.docker.inspect_network(&name, None).await else {
                continue;
            };
            if n.labels.is_some_and(|l| l.contains_key(DNS)) {
                return Ok(endpoint.filter(|a| !a.is_empty()));
            }
        }
        Ok(None)
    }
}

/// A container's networks and its address on each.
fn networks(c: &ContainerInspectResponse) -> Vec<(String, Option<String>)> {
    c.network_settings
        .as_ref()
        .and_then(|s| s.networks.as_ref())
        .into_iter()
        .flatten()
        .map(|(name, e)| (name.clone(), e.ip_address.clone()))
        .collect()
}
