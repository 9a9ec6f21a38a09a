//! An environment's private network shared with another provider's machines on this host
//! (a container engine's network made on its bridge): what they may use of it, and their
//! names in its DNS.

use envrig_provider_api::{NetworkSpec, ProviderError, Result, SharedNetwork};

use super::{address, name_address, network_and_xml, update_flags};
use crate::error::engine;
use crate::{LibvirtProvider, xml};

impl LibvirtProvider {
    /// The network `spec` names (made by `ensure_private_network`) as a bridge another
    /// provider's machines on this host may join: `None` on a remote host or the session
    /// daemon, or for a network whose DHCP range reaches into the last quarter (made
    /// before envrig left it free).
    pub(crate) async fn share_private_network(
        &self,
        spec: &NetworkSpec,
    ) -> Result<Option<SharedNetwork>> {
        if !self.capabilities.shares_network || self.remote.is_some() {
            return Ok(None);
        }
        let name = spec.name.clone();
        self.blocking(move |c| {
            let (_, text) = network_and_xml(c, &name)?;
            let host = c
                .hostname()
                .map_err(|e| engine("ask libvirt for its host's name", e))?;
            Ok(shareable(&text, host))
        })
        .await
    }

    /// Points `names` (qualified with the network's domain too) at `address`, a machine of
    /// the provider that joined the network, in the network's DNS.
    pub(crate) async fn name_foreign(
        &self,
        network: &str,
        address: &str,
        names: &[String],
    ) -> Result<()> {
        let ip: std::net::Ipv4Addr = address.parse().map_err(|_| ProviderError::Conflict {
            message: format!("`{address}` is not an IPv4 address"),
        })?;
        let _guard = self.net_lock.lock().await;
        let (network, names) = (network.to_string(), names.to_vec());
        self.blocking(move |c| {
            let (n, text) = network_and_xml(c, &network)?;
            if !offered(&text).is_some_and(|(_, _, range)| range.contains(&ip)) {
                return Err(ProviderError::Conflict {
                    message: format!("{ip} is not among the addresses network `{network}` shares"),
                });
            }
            let names = xml::qualified(&names, xml::network_domain(&text).as_deref());
            let flags = update_flags(&n);
            name_address(&n, ip, &names, flags)
                .map_err(|e| engine(format!("name {ip} on `{network}`"), e))
        })
        .await
    }
}

/// The gateway, subnet and range another provider may use of the network whose XML is
/// `text`: none when its DHCP hands out addresses of that range.
fn offered(text: &str) -> Option<(std::net::Ipv4Addr, address::Ipv4Net, address::Ipv4Net)> {
    let (gateway, prefix) = xml::network_ip(text)?;
    let subnet = address::parse(&format!("{gateway}/{prefix}"))?;
    let range = address::shared_range(subnet)?;
    if xml::network_dhcp_range(text).is_some_and(|(_, end)| range.contains(&end)) {
        return None;
    }
    Some((gateway, subnet, range))
}

/// What another provider may use of the network whose XML is `text`, on host `host`.
fn shareable(text: &str, host: String) -> Option<SharedNetwork> {
    let (gateway, subnet, range) = offered(text)?;
    Some(SharedNetwork {
        host,
        bridge: xml::network_bridge(text)?,
        subnet: subnet.to_string(),
        gateway: gateway.to_string(),
        range: range.to_string(),
        dns: gateway.to_string(),
        domain: xml::network_domain(text),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(range_end: &str) -> String {
        format!(
            "<network><name>p-1</name><bridge name='envrig0a1b2c3d'/>\
             <domain name='shop.envrig.internal' localOnly='yes'/>\
             <ip address='198.18.77.1' prefix='24'><dhcp>\
             <range start='198.18.77.128' end='{range_end}'/></dhcp></ip></network>"
        )
    }

    #[test]
    fn the_last_quarter_is_shared_unless_dhcp_hands_it_out() {
        let s = shareable(&net("198.18.77.191"), "h".into()).unwrap();
        assert_eq!(s.bridge, "envrig0a1b2c3d");
        assert_eq!(s.subnet, "198.18.77.0/24");
        assert_eq!(s.gateway, "198.18.77.1");
        assert_eq!(s.dns, "198.18.77.1");
        assert_eq!(s.range, "198.18.77.192/26");
        assert_eq!(s.domain.as_deref(), Some("shop.envrig.internal"));
        // A network made before the last quarter was kept free.
        assert!(shareable(&net("198.18.77.254"), "h".into()).is_none());
    }
}
