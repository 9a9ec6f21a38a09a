//! Environments' private networks: an isolated libvirt network per environment (with DHCP and
//! DNS), each machine's fixed address and names registered on it, what envrig's networks are
//! (and their removal), and waiting for a guest's address there. The address arithmetic is in
//! `network/address.rs`.

pub(crate) mod address;
mod shared;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use envrig_provider_api::{NetworkSpec, OtherResource, ProviderError, Result, Selector};

use crate::error::{engine, io};
use crate::{LibvirtProvider, xml};

impl LibvirtProvider {
    /// An isolated network (no forwarding: nothing leaves the host) on its own bridge,
    /// persistent (it survives a libvirtd restart, as halted machines do), with DHCP and
    /// DNS for the machines attached to it; its /24 comes from the Envfile, else from
    /// `ENVRIG_SUBNET_POOL`, else from 198.19.0.0/16, avoiding every subnet this host
    /// routes and every libvirt network's.
    pub(crate) async fn ensure_private_network(&self, spec: &NetworkSpec) -> Result<()> {
        if !self.capabilities.private_network {
            return Err(ProviderError::NotSupported {
                provider: crate::NAME,
                what: "a private network between machines on qemu:///session (an unprivileged \
                       daemon cannot make the bridge: keep one machine per environment, or use \
                       qemu:///system)"
                    .into(),
            });
        }
        let _guard = self.net_lock.lock().await;
        let spec = spec.clone();
        self.blocking(move |c| {
            if let Ok(n) = c.lookup_network_by_name(&spec.name) {
                let labels = xml::labels(&n.xml_desc(0).unwrap_or_default());
                if labels.get(envrig_provider_api::labels::ENV)
                    != spec.labels.get(envrig_provider_api::labels::ENV)
                {
                    return Err(ProviderError::Conflict {
                        message: format!(
                            "a libvirt network named `{}` exists and is not this environment's",
                            spec.name
                        ),
                    });
                }
                if !n.is_active().unwrap_or(false) {
                    n.create()
                        .map_err(|e| engine(format!("start network `{}`", spec.name), e))?;
                }
                return Ok(());
            }
            let fixed = match &spec.subnet {
                Some(s) => Some(address::parse(s).ok_or_else(|| ProviderError::Conflict {
                    message: format!("subnet `{s}` is not an IPv4 subnet libvirt can use"),
                })?),
                None => None,
            };
            let pool_text = spec
                .subnet_pool
                .clone()
                .unwrap_or_else(|| address::DEFAULT_POOL.to_string());
            let pool = address::parse(&pool_text).ok_or_else(|| ProviderError::Conflict {
                message: format!("subnet pool `{pool_text}` is not an IPv4 subnet"),
            })?;
            let bridge = address::bridge_for(&spec.name);
            let mut last = None;
            // A subnet another process took between our look and our start: the next one.
            for attempt in 0..8 {
                let mut used = address::routed();
                for n in c.list_all_networks(0).unwrap_or_default() {
                    if let Some((a, p)) = xml::network_ip(&n.xml_desc(0).unwrap_or_default())
                        && let Some(s) = address::parse(&format!("{a}/{p}"))
                    {
                        used.push(s);
                    }
                }
                let subnet = match fixed {
                    Some(s) => s,
                    None => address::pick(pool, &used, attempt).ok_or_else(|| {
                        ProviderError::Conflict {
                            message: format!("no free /24 left in {pool_text}"),
                        }
                    })?,
                };
                let (address, dhcp, _) = address::layout(subnet);
                let text = xml::Network {
                    name: &spec.name,
                    bridge: &bridge,
                    labels: &spec.labels,
                    address,
                    prefix: subnet.prefix_len(),
                    dhcp,
                    domain: spec.domain.as_deref(),
                }
                .to_xml()
                .map_err(|e| io("write the network XML", e))?;
                let n = c
                    .define_network_xml(&text)
                    .map_err(|e| engine(format!("define network `{}`", spec.name), e))?;
                match n.create() {
                    Ok(()) => return Ok(()),
                    Err(e) => {
                        let _ = n.undefine();
                        last = Some(engine(
                            format!("start network `{}` on {subnet}", spec.name),
                            e,
                        ));
                        if fixed.is_some() {
                            break;
                        }
                    }
                }
            }
            Err(last.unwrap_or_else(|| ProviderError::Conflict {
                message: "no subnet could be used".into(),
            }))
        })
        .await
    }

    /// Registers `mac` on `network`: a fixed address (the first free one) in its DHCP
    /// section, and `names` for that address in its DNS. An entry left for the same MAC
    /// (a crash, a domain removed by hand) is replaced; names another machine held (the
    /// previous generation) move to this one.
    pub(crate) async fn attach(
        &self,
        network: &str,
        mac: &str,
        name: &str,
        names: &[String],
    ) -> Result<()> {
        let _guard = self.net_lock.lock().await;
        let (network, mac, name, names) = (
            network.to_string(),
            mac.to_string(),
            name.to_string(),
            names.to_vec(),
        );
        // dnsmasq's lease file is on the network's host: readable here only when that is
        // this host.
        let here = self.remote.is_none();
        self.blocking(move |c| {
            use virt::sys::*;
            let (n, text) = network_and_xml(c, &network)?;
            let (addr, prefix) = xml::network_ip(&text).ok_or_else(|| ProviderError::Conflict {
                message: format!("network `{network}` has no IPv4 address"),
            })?;
            let subnet = address::parse(&format!("{addr}/{prefix}")).ok_or_else(|| {
                ProviderError::Conflict {
                    message: format!("network `{network}` has an unusable subnet {addr}/{prefix}"),
                }
            })?;
            let flags = update_flags(&n);
            let hosts = xml::dhcp_hosts(&text);
            for (m, ip) in hosts.iter().filter(|(m, _)| *m == mac) {
                forget(&n, m, *ip, flags);
            }
            // Taken: registered to another MAC, or still leased to one (a removed
            // generation's build keeps its lease for an hour; dnsmasq would not give the
            // address to a new MAC and hand out a dynamic one instead).
            let mut taken: Vec<std::net::Ipv4Addr> = hosts
                .iter()
                .filter(|(m, _)| *m != mac)
                .map(|(_, ip)| *ip)
                .collect();
            if here {
                taken.extend(leased_elsewhere(&text, &mac));
            }
            let (_, _, fixed) = address::layout(subnet);
            let ip = fixed
                .map(|i| address::host(subnet, i))
                .find(|ip| !taken.contains(ip))
                .ok_or_else(|| ProviderError::Conflict {
                    message: format!("network `{network}` has no free address left"),
                })?;
            let entry = xml::dhcp_host(&mac, Some(&name), ip).map_err(|e| io("write XML", e))?;
            n.update(
                VIR_NETWORK_UPDATE_COMMAND_ADD_LAST,
                VIR_NETWORK_SECTION_IP_DHCP_HOST,
                -1,
                &entry,
                flags,
            )
            .map_err(|e| engine(format!("register {mac} on `{network}`"), e))?;
            // A new generation's build has no names (the serving generation keeps them).
            if names.is_empty() {
                return Ok(());
            }
            let names = xml::qualified(&names, xml::network_domain(&text).as_deref());
            name_address(&n, ip, &names, flags)
                .map_err(|e| engine(format!("name {ip} on `{network}`"), e))?;
            Ok(())
        })
        .await
    }

    /// Points `names` on `network`'s DNS at the fixed address of `mac` (registered by
    /// [`Self::attach`]), taking them from whichever address holds them; the DHCP entry is
    /// left as it is.
    /// Whether `mac` has a fixed address there (`false`: the network was made again and
    /// lost it; see [`Self::attach`]).
    pub(crate) async fn claim_names(
        &self,
        network: &str,
        mac: &str,
        names: &[String],
    ) -> Result<bool> {
        let _guard = self.net_lock.lock().await;
        let (network, mac, names) = (network.to_string(), mac.to_string(), names.to_vec());
        self.blocking(move |c| {
            let Ok(n) = c.lookup_network_by_name(&network) else {
                return Ok(true);
            };
            let text = n
                .xml_desc(0)
                .map_err(|e| engine("read the network's XML", e))?;
            let Some(ip) = xml::dhcp_hosts(&text)
                .into_iter()
                .find(|(m, _)| *m == mac)
                .map(|(_, ip)| ip)
            else {
                return Ok(false);
            };
            if names.is_empty() {
                return Ok(true);
            }
            let names = xml::qualified(&names, xml::network_domain(&text).as_deref());
            let flags = update_flags(&n);
            name_address(&n, ip, &names, flags)
                .map_err(|e| engine(format!("name {ip} on `{network}`"), e))?;
            Ok(true)
        })
        .await
    }

    /// Removes what [`Self::attach`] registered for `mac` (a network that is gone has
    /// nothing to remove).
    pub(crate) async fn detach(&self, network: &str, mac: &str) {
        let _guard = self.net_lock.lock().await;
        let (network, mac) = (network.to_string(), mac.to_string());
        let _ = self
            .blocking(move |c| {
                let Ok(n) = c.lookup_network_by_name(&network) else {
                    return Ok(());
                };
                let text = n.xml_desc(0).unwrap_or_default();
                let flags = update_flags(&n);
                for (m, ip) in xml::dhcp_hosts(&text).iter().filter(|(m, _)| *m == mac) {
                    forget(&n, m, *ip, flags);
                }
                Ok(())
            })
            .await;
    }

    /// Waits (at most 30 s) until the guest holds an IPv4 address on its private-network
    /// NIC, as the guest agent reports it, so the machines that depend on it find it by
    /// name. A guest that configures no address there is not an error: it just has none.
    pub(crate) async fn wait_private_address(&self, id: &str) {
        let Ok(text) = self.domain_xml(id).await else {
            return;
        };
        let Some((_, mac)) = xml::network_nic(&text) else {
            return;
        };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(30) {
            if let Ok(ifaces) = self
                .agent(
                    id,
                    serde_json::json!({"execute": "guest-network-get-interfaces"}),
                    5,
                )
                .await
            {
                let has = ifaces.as_array().into_iter().flatten().any(|i| {
                    i["hardware-address"]
                        .as_str()
                        .map(str::to_lowercase)
                        .as_deref()
                        == Some(mac.as_str())
                        && i["ip-addresses"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|a| a["ip-address-type"] == "ipv4")
                });
                if has {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tracing::warn!("machine {id}: no address on its private network after 30 s");
    }

    pub(crate) async fn other_resources(&self, selector: &Selector) -> Result<Vec<OtherResource>> {
        let selector = selector.clone();
        self.blocking(move |c| {
            let mut out = Vec::new();
            for n in c
                .list_all_networks(0)
                .map_err(|e| engine("list networks", e))?
            {
                let labels = xml::labels(&n.xml_desc(0).unwrap_or_default());
                if !labels.is_empty() && selector.matches(&labels) {
                    out.push(OtherResource {
                        kind: "network",
                        name: n.name().unwrap_or_default(),
                        labels,
                    });
                }
            }
            Ok(out)
        })
        .await
    }

    pub(crate) async fn purge_others(&self, selector: &Selector) -> Result<Vec<String>> {
        // Machines' overlays and logs go with them; networks are the other resources, and
        // the SSH keys of environments that have no machine left.
        let selector = selector.clone();
        // The keys are this host's, shared by every libvirt host it uses: only the local
        // host's purge removes them (a remote host's machines do not use them after boot).
        let keys = self.keys.clone();
        let here = self.remote.is_none();
        self.blocking(move |c| {
            let envs: std::collections::BTreeSet<String> = c
                .list_all_domains(0)
                .map_err(|e| engine("list domains", e))?
                .iter()
                .filter_map(|d| d.xml_desc(0).ok())
                .filter_map(|x| {
                    xml::labels(&x)
                        .get(envrig_provider_api::labels::ENV)
                        .cloned()
                })
                .collect();
            let mut removed = Vec::new();
            for e in std::fs::read_dir(&keys)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|_| here)
            {
                let env = e.file_name().to_string_lossy().to_string();
                let probe =
                    BTreeMap::from([(envrig_provider_api::labels::ENV.to_string(), env.clone())]);
                if !envs.contains(&env)
                    && selector.matches(&probe)
                    && std::fs::remove_dir_all(e.path()).is_ok()
                {
                    removed.push(format!("SSH keys of {env}"));
                }
            }
            for n in c
                .list_all_networks(0)
                .map_err(|e| engine("list networks", e))?
            {
                let labels = xml::labels(&n.xml_desc(0).unwrap_or_default());
                if labels.is_empty() || !selector.matches(&labels) {
                    continue;
                }
                let name = n.name().unwrap_or_default();
                if n.is_active().unwrap_or(false) {
                    n.destroy()
                        .map_err(|e| engine(format!("stop network `{name}`"), e))?;
                }
                if n.is_persistent().unwrap_or(false) {
                    n.undefine()
                        .map_err(|e| engine(format!("remove network `{name}`"), e))?;
                }
                removed.push(format!("network {name}"));
            }
            Ok(removed)
        })
        .await
    }
}

/// Network `name` and its XML.
fn network_and_xml(
    c: &virt::connect::Connect,
    name: &str,
) -> Result<(virt::network::Network, String)> {
    let n = c
        .lookup_network_by_name(name)
        .map_err(|e| engine(format!("find network `{name}`"), e))?;
    let text = n
        .xml_desc(0)
        .map_err(|e| engine("read the network's XML", e))?;
    Ok((n, text))
}

/// How an entry is added to or deleted from network `n`: in its definition, and in the
/// running network when it runs.
fn update_flags(n: &virt::network::Network) -> u32 {
    virt::sys::VIR_NETWORK_UPDATE_AFFECT_CONFIG
        | if n.is_active().unwrap_or(false) {
            virt::sys::VIR_NETWORK_UPDATE_AFFECT_LIVE
        } else {
            0
        }
}

/// Deletes a machine's DHCP and DNS entries from network `n` (best effort).
fn forget(n: &virt::network::Network, mac: &str, ip: std::net::Ipv4Addr, flags: u32) {
    use virt::sys::*;
    if let Ok(x) = xml::dns_host(ip, &[]) {
        let _ = n.update(
            VIR_NETWORK_UPDATE_COMMAND_DELETE,
            VIR_NETWORK_SECTION_DNS_HOST,
            -1,
            &x,
            flags,
        );
    }
    if let Ok(x) = xml::dhcp_host(mac, None, ip) {
        let _ = n.update(
            VIR_NETWORK_UPDATE_COMMAND_DELETE,
            VIR_NETWORK_SECTION_IP_DHCP_HOST,
            -1,
            &x,
            flags,
        );
    }
}

/// Makes `names` resolve to `ip` on network `n`'s DNS: an entry is added, and when a name is
/// held by another address (or this address has an entry already), those entries go first.
fn name_address(
    n: &virt::network::Network,
    ip: std::net::Ipv4Addr,
    names: &[String],
    flags: u32,
) -> std::result::Result<(), virt::error::Error> {
    use virt::sys::*;
    let update = |cmd, x: &str| n.update(cmd, VIR_NETWORK_SECTION_DNS_HOST, -1, x, flags);
    let Ok(dns) = xml::dns_host(ip, names) else {
        return Ok(());
    };
    if update(VIR_NETWORK_UPDATE_COMMAND_ADD_LAST, &dns).is_ok() {
        return Ok(());
    }
    if let Ok(x) = xml::dns_host(ip, &[]) {
        let _ = update(VIR_NETWORK_UPDATE_COMMAND_DELETE, &x);
    }
    for other in names {
        if let Ok(x) = xml::dns_host_named(other) {
            let _ = update(VIR_NETWORK_UPDATE_COMMAND_DELETE, &x);
        }
    }
    update(VIR_NETWORK_UPDATE_COMMAND_ADD_LAST, &dns).map(|_| ())
}

/// Addresses dnsmasq has leased, unexpired, to MACs other than `mac` on the network whose
/// XML is `net_xml` (from libvirt's lease status file for its bridge; none when it cannot
/// be read).
fn leased_elsewhere(net_xml: &str, mac: &str) -> Vec<std::net::Ipv4Addr> {
    let Some(bridge) = xml::network_bridge(net_xml) else {
        return Vec::new();
    };
    let file = Path::new("/var/lib/libvirt/dnsmasq").join(format!("{bridge}.status"));
    let Ok(text) = std::fs::read_to_string(file) else {
        return Vec::new();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let leases: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap_or_default();
    leases
        .iter()
        .filter(|l| {
            l["mac-address"]
                .as_str()
                .is_some_and(|m| !m.eq_ignore_ascii_case(mac))
                && l["expiry-time"].as_u64().is_none_or(|t| t > now)
        })
        .filter_map(|l| l["ip-address"].as_str()?.parse().ok())
        .collect()
}
