//! Containers whose network went away under them.
//!
//! A halted environment's network has no running container, so `docker network prune` (a
//! common clean-up) removes it; its containers still name it by id and cannot start ("network
//! … not found"). The core makes the network again (same name, labels and, when the Envfile
//! fixes it, subnet) before it starts machines; [`DockerProvider::start_reattaching`] then
//! moves a stopped container from the lost network to the one of the same name, with its
//! names (aliases), and starts it.

use bollard::models::{
    ContainerInspectResponse, EndpointSettings, NetworkConnectRequest, NetworkDisconnectRequest,
};
use envrig_provider_api::{ProviderError, Result};

use super::{DockerProvider, map_err};

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
