//! An environment's private network as the core asks for it, and a network one provider
//! makes on a bridge of this host that another provider's machines join
//! ([`SharedNetwork`]): how a container and a VM of one environment reach each other by name.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A machine's place on its environment's private network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkAttachment {
    /// The network's engine-side name (see [`NetworkSpec::name`]).
    pub network: String,
    /// Names other machines reach it by (its machine name and hostname).
    pub aliases: Vec<String>,
}

/// An environment's private network, in which machines reach each other by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The subnet to use (`198.19.10.0/24`); else a free /24 of `subnet_pool`; else the
    /// engine's choice.
    pub subnet: Option<String>,
    /// A pool (`198.18.0.0/15`) to take a free /24 from.
    pub subnet_pool: Option<String>,
    /// The network's DNS domain (`shop.envrig.internal`), for engines whose guests need one
    /// to look up single-label names (systemd-resolved sends `db` to unicast DNS only as
    /// `db.DOMAIN`, the domain coming by DHCP as a search domain). Engines that resolve bare
    /// names themselves (Docker's embedded DNS) may ignore it.
    pub domain: Option<String>,
    /// The environment's machines are on several engines of one cluster (a Docker Swarm)
    /// and reach each other through this network across them: made once through a
    /// manager engine (Docker: an attachable overlay network), joined by each machine
    /// through its own engine. False: the network lives on one engine.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub span: bool,
    /// Make the network on this bridge of the host, which another provider made and
    /// shares ([`crate::Provider::shared_network`]), instead of a bridge of its own: its
    /// machines take addresses in `range` only and resolve names through `dns` (the other
    /// provider's machines' names are there; each of this provider's machines is named
    /// there by the core through [`crate::Provider::name_on_network`]). A provider that
    /// cannot join one makes its own network, as without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<SharedNetwork>,
}

/// A private network on a Linux bridge of the engine's host, with a DNS server answering
/// the environment's names, that machines of another provider on the same host can join
/// ([`crate::Capabilities::shares_network`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedNetwork {
    /// The host's name, as the engine gives it: a provider whose engine runs on another
    /// host does not join.
    pub host: String,
    /// The bridge (`envrig1a2b3c4d`).
    pub bridge: String,
    /// The network's subnet (`198.18.77.0/24`).
    pub subnet: String,
    /// The host's address on the bridge (`198.18.77.1`): the joining machines' gateway.
    pub gateway: String,
    /// The addresses left to the joining provider (`198.18.77.192/26`): the sharing one
    /// gives out none of them.
    pub range: String,
    /// The DNS server that answers the machines' names (`198.18.77.1`).
    pub dns: String,
    /// The network's DNS domain (`shop.envrig.internal`), the joining machines' search
    /// domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}
