//! What the engine says of itself (`envrig engine ls`, placement): version, the host's CPUs
//! and memory, and the Swarm it belongs to, read from `docker info`.

use envrig_provider_api::{Cluster, EngineInfo, Result};

use crate::DockerProvider;
use crate::error::map_err;

impl DockerProvider {
    pub(crate) async fn describe_engine(&self) -> Result<EngineInfo> {
        let info = self
            .docker
            .info()
            .await
            .map_err(|e| map_err("reading the engine's info", e))?;
        Ok(EngineInfo {
            version: info.server_version.unwrap_or_default(),
            cpus: info.ncpu.unwrap_or(0).clamp(0, u32::MAX as i64) as u32,
            memory: info.mem_total.unwrap_or(0).max(0) as u64,
            cluster: info.swarm.and_then(swarm_cluster),
        })
    }
}

/// The Swarm an engine is an active node of. Workers are not told the cluster's id, but
/// every node knows the managers: their node ids, sorted, name the cluster alike on all.
fn swarm_cluster(s: bollard::models::SwarmInfo) -> Option<Cluster> {
    use bollard::models::LocalNodeState;
    if s.local_node_state != Some(LocalNodeState::ACTIVE) {
        return None;
    }
    let mut managers: Vec<String> = s
        .remote_managers
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.node_id)
        .collect();
    if managers.is_empty() {
        return None;
    }
    managers.sort();
    Some(Cluster {
        id: managers.join(","),
        manager: s.control_available.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{LocalNodeState, PeerNode, SwarmInfo};

    fn node(state: LocalNodeState, managers: &[&str], manager: bool) -> SwarmInfo {
        SwarmInfo {
            local_node_state: Some(state),
            control_available: Some(manager),
            remote_managers: Some(
                managers
                    .iter()
                    .map(|m| PeerNode {
                        node_id: Some(m.to_string()),
                        addr: None,
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn nodes_of_one_swarm_name_it_alike() {
        let a = swarm_cluster(node(LocalNodeState::ACTIVE, &["m2", "m1"], true)).unwrap();
        let b = swarm_cluster(node(LocalNodeState::ACTIVE, &["m1", "m2"], false)).unwrap();
        assert_eq!(a.id, b.id);
        assert!(a.manager && !b.manager);
        assert!(swarm_cluster(node(LocalNodeState::INACTIVE, &["m1"], false)).is_none());
        assert!(swarm_cluster(node(LocalNodeState::ACTIVE, &[], false)).is_none());
    }
}
