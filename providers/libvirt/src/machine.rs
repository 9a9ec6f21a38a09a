//! Machines as libvirt domains: their life cycle (create, start, stop, pause, remove, inspect,
//! list), read back from the domain itself. Defining a domain (its files, ports, seed, NIC and
//! labels) is `define.rs`'s.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use envrig_provider_api::{
    MachineInfo, MachineSpec, MachineState, ProviderError, Result, Selector,
};
use virt::domain::{Domain, DomainState};
use virt::enumutil::Enum;

use crate::boot::{BOOTING, Marker};
use crate::disk::Disk;
use crate::error::{engine, io};
use crate::{BOX_LABEL, LibvirtProvider, NAMES, SSH_PORT, ssh, xml};

impl LibvirtProvider {
    pub(crate) async fn create_machine(&self, spec: &MachineSpec) -> Result<MachineInfo> {
        if let Some(remote) = &self.remote {
            let b = self.remote_box(remote, &spec.base).await?;
            let extra = BTreeMap::from([(BOX_LABEL.to_string(), b.source.display().to_string())]);
            let source = b.source.clone();
            return self.define(spec, Disk::Remote(b), &source, extra).await;
        }
        let source_dir = self
            .box_dir(&spec.base)
            .ok_or_else(|| ProviderError::NotFound {
                what: format!("box `{}`", spec.base),
            })?;
        let dir = self.staged_box(&source_dir)?;
        let extra = BTreeMap::from([(BOX_LABEL.to_string(), source_dir.display().to_string())]);
        self.define(spec, Disk::Overlay(dir.join("disk.qcow2")), &dir, extra)
            .await
    }

    pub(crate) async fn start_machine(&self, id: &str) -> Result<()> {
        let info = self.before_start(id).await?;
        let id2 = id.to_string();
        self.blocking(move |c| {
            let dom = c
                .lookup_domain_by_uuid_string(&id2)
                .map_err(|e| engine("look up the domain", e))?;
            if !dom.is_active().unwrap_or(false) {
                dom.create()
                    .map_err(|e| match passt_without_route(&e.to_string()) {
                        Some(why) => why,
                        None => engine("start the domain", e),
                    })?;
            }
            Ok(())
        })
        .await?;
        self.after_start(id, &info, true).await
    }

    /// What comes before a machine runs, booted or restored warm: its names on the private
    /// network come back to it (a generation rolled back to takes them from the one it
    /// replaces); a network made again since (removed by hand, or `up` found it gone) has
    /// lost the machine's fixed address and names, which are registered anew. Marks it
    /// booting.
    pub(crate) async fn before_start(&self, id: &str) -> Result<MachineInfo> {
        let info = self.info(id).await?;
        let id2 = id.to_string();
        let (active, nic) = self
            .blocking(move |c| {
                let dom = c
                    .lookup_domain_by_uuid_string(&id2)
                    .map_err(|e| engine("look up the domain", e))?;
                let text = dom.xml_desc(0).unwrap_or_default();
                Ok((dom.is_active().unwrap_or(false), xml::network_nic(&text)))
            })
            .await?;
        // A machine that was off starts from scratch: what a cut-short warm start left
        // (nothing ran: the restore had not begun) is over.
        if !active {
            self.note_drop(&info.resource_name, crate::warm::WARMING)
                .await;
        }
        if !active && let Some((network, mac)) = nic {
            let names: Vec<String> = info
                .labels
                .get(NAMES)
                .filter(|n| !n.is_empty())
                .map(|n| n.split(',').map(str::to_string).collect())
                .unwrap_or_default();
            if !self.claim_names(&network, &mac, &names).await? {
                self.attach(&network, &mac, &info.resource_name, &names)
                    .await?;
            }
        }
        let _ = self.note_put(&info.resource_name, BOOTING, b"").await;
        Ok(info)
    }

    /// What comes once a machine runs: the guest is ready (the environment's key installed
    /// when `install`), its private address is up, its folders are mounted.
    pub(crate) async fn after_start(
        &self,
        id: &str,
        info: &MachineInfo,
        install: bool,
    ) -> Result<()> {
        self.wait_ready_with(id, install).await?;
        self.wait_private_address(id).await;
        self.note_drop(&info.resource_name, BOOTING).await;
        // Live folders are mounted at every boot; copies (and the folders a guest cannot
        // mount) are made by `refresh_synced`, which `up` and `provision` call and report.
        self.sync_folders(id, true).await?;
        Ok(())
    }

    pub(crate) async fn stop_machine(&self, id: &str, timeout: Duration) -> Result<()> {
        let id2 = id.to_string();
        let running = self
            .blocking(move |c| {
                let dom = c
                    .lookup_domain_by_uuid_string(&id2)
                    .map_err(|e| engine("look up the domain", e))?;
                // A suspended domain is brought back first, then shut down as any other
                // (its saved memory is not simply dropped: that would be a power cut).
                if !dom.is_active().unwrap_or(false) && dom.has_managed_save(0).unwrap_or(false) {
                    dom.create()
                        .map_err(|e| engine("restore the domain's saved memory", e))?;
                }
                if !dom.is_active().unwrap_or(false) {
                    return Ok(false);
                }
                let _ = dom.shutdown();
                Ok(true)
            })
            .await?;
        if !running {
            return Ok(());
        }
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if self.info(id).await?.state == MachineState::Stopped {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let id2 = id.to_string();
        self.blocking(move |c| {
            let dom = c
                .lookup_domain_by_uuid_string(&id2)
                .map_err(|e| engine("look up the domain", e))?;
            if dom.is_active().unwrap_or(false) {
                dom.destroy()
                    .map_err(|e| engine("stop the domain hard", e))?;
            }
            Ok(())
        })
        .await
    }

    pub(crate) async fn pause_machine(&self, id: &str) -> Result<()> {
        // What the guest has in its page cache reaches its disk first, so a disk saved while
        // paused (an export, a package) holds every file written before (bounded: a guest
        // without an agent is paused anyway).
        self.sync_guest(id).await;
        let id = id.to_string();
        self.blocking(move |c| {
            let dom = c
                .lookup_domain_by_uuid_string(&id)
                .map_err(|e| engine("look up the domain", e))?;
            dom.suspend().map_err(|e| engine("pause the domain", e))?;
            Ok(())
        })
        .await
    }

    /// Resumes a paused domain, or one whose memory was saved (`suspend`): starting it
    /// restores that memory, running where it was.
    pub(crate) async fn resume_machine(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.blocking(move |c| {
            let dom = c
                .lookup_domain_by_uuid_string(&id)
                .map_err(|e| engine("look up the domain", e))?;
            if !dom.is_active().unwrap_or(false) && dom.has_managed_save(0).unwrap_or(false) {
                return dom
                    .create()
                    .map_err(|e| engine("restore the domain's saved memory", e));
            }
            let _ = dom.resume();
            Ok(())
        })
        .await
    }

    /// Saves a running domain's memory to disk and frees it (libvirt's managed save); a
    /// paused one too. The guest's page cache reaches its disk first.
    pub(crate) async fn suspend_machine(&self, id: &str) -> Result<()> {
        self.sync_guest(id).await;
        let id = id.to_string();
        self.blocking(move |c| {
            let dom = c
                .lookup_domain_by_uuid_string(&id)
                .map_err(|e| engine("look up the domain", e))?;
            dom.managed_save(0)
                .map_err(|e| engine("save the domain's memory", e))
        })
        .await
    }

    pub(crate) async fn remove_machine(&self, id: &str) -> Result<()> {
        // Its pinned host key and login go with it.
        if let Ok(info) = self.info(id).await {
            if let Some((port, keys)) = self.ssh_parts(&info) {
                let _ = keys.unpin(port);
            }
            if let Some(env) = info.labels.get(envrig_provider_api::labels::ENV) {
                let keys = ssh::EnvKeys::new(&self.keys, env);
                let _ = std::fs::remove_file(keys.dir.join(format!("{}.user", info.resource_name)));
            }
        }
        // Once undefined, only this marker says whose the folder is (see `define`); a remote
        // host's volumes are swept by their age instead (`remote/volumes.rs`).
        let _marker = match self.remote {
            Some(_) => None,
            None => self
                .info(id)
                .await
                .ok()
                .map(|i| Marker::new(&self.machine_dir(&i.resource_name), "removing")),
        };
        let id2 = id.to_string();
        let name = self
            .blocking(move |c| {
                let dom = match c.lookup_domain_by_uuid_string(&id2) {
                    Ok(d) => d,
                    Err(_) => return Ok(None),
                };
                let name = dom.name().ok();
                let nic = dom.xml_desc(0).ok().and_then(|x| xml::network_nic(&x));
                if dom.is_active().unwrap_or(false) {
                    let _ = dom.destroy();
                }
                let flags = virt::sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                    | virt::sys::VIR_DOMAIN_UNDEFINE_NVRAM
                    | virt::sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE;
                match dom.undefine_flags(flags) {
                    Ok(()) => Ok(Some((name, nic))),
                    Err(e) if e.to_string().contains("not found") => Ok(Some((name, nic))),
                    Err(e) => Err(engine("undefine the domain", e)),
                }
            })
            .await?;
        let name = match name {
            Some((name, Some((network, mac)))) => {
                self.detach(&network, &mac).await;
                name
            }
            Some((name, None)) => name,
            None => None,
        };
        if let Some(name) = name {
            if self.remote.is_some() {
                return self.remote_remove_volumes(&name).await;
            }
            let dir = self.machine_dir(&name);
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io(format!("remove {}", dir.display()), e));
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub(crate) async fn inspect_machine(&self, id: &str) -> Result<MachineInfo> {
        self.info(id).await.map_err(|e| match e {
            ProviderError::Engine { .. } | ProviderError::NotFound { .. } => {
                ProviderError::NotFound {
                    what: format!("domain `{id}`"),
                }
            }
            other => other,
        })
    }

    pub(crate) async fn list_machines(&self, selector: &Selector) -> Result<Vec<MachineInfo>> {
        let selector = selector.clone();
        self.blocking(move |c| {
            Ok(described_domains(c)?
                .into_iter()
                .map(|(_, info)| info)
                .filter(|info| selector.matches(&info.labels))
                .collect())
        })
        .await
    }

    pub(crate) async fn info(&self, id: &str) -> Result<MachineInfo> {
        let id = id.to_string();
        self.blocking(move |c| {
            let dom = c
                .lookup_domain_by_uuid_string(&id)
                .map_err(|e| engine(format!("look up domain {id}"), e))?;
            describe(&dom)
        })
        .await
    }

    pub(crate) async fn domain_xml(&self, id: &str) -> Result<String> {
        let id = id.to_string();
        self.blocking(move |c| {
            c.lookup_domain_by_uuid_string(&id)
                .map_err(|e| engine("look up the domain", e))?
                .xml_desc(0)
                .map_err(|e| engine("read the domain's XML", e))
        })
        .await
    }

    pub(crate) fn machine_dir(&self, resource_name: &str) -> PathBuf {
        self.images.join(resource_name)
    }
}

/// A start refused because passt (the machine's user network) finds no default route on
/// the host that runs it: said as such, with what to do, rather than as passt's own words
/// deep in libvirt's message.
fn passt_without_route(message: &str) -> Option<ProviderError> {
    let routeless = message.contains("passt")
        && (message.contains("External interface not usable")
            || message.contains("No external routable interface"));
    routeless.then(|| ProviderError::Conflict {
        message: format!(
            "the machine's user network (passt) cannot start: the libvirt host has no default route, which passt needs even when the machine never leaves the host; add one there (a route to an address nobody holds will do: `ip route add default via ADDRESS dev IFACE`) ({})",
            message.lines().next().unwrap_or_default().trim()
        ),
    })
}

/// Every domain of the connection with what it says of itself; a domain that vanished
/// while we looked is simply not listed.
pub(crate) fn described_domains(c: &virt::connect::Connect) -> Result<Vec<(Domain, MachineInfo)>> {
    let doms = c
        .list_all_domains(0)
        .map_err(|e| engine("list domains", e))?;
    Ok(doms
        .into_iter()
        .filter_map(|d| describe(&d).ok().map(|info| (d, info)))
        .collect())
}

pub(crate) fn describe(dom: &Domain) -> Result<MachineInfo> {
    let xml = dom
        .xml_desc(0)
        .map_err(|e| engine("read the domain's XML", e))?;
    let (state, _) = dom
        .state()
        .map_err(|e| engine("read the domain's state", e))?;
    let state = match state {
        Enum::Known(DomainState::Running) | Enum::Known(DomainState::Blocked) => {
            MachineState::Running
        }
        Enum::Known(DomainState::Paused) | Enum::Known(DomainState::PMSuspended) => {
            MachineState::Paused
        }
        Enum::Known(DomainState::Shutoff) if dom.has_managed_save(0).unwrap_or(false) => {
            MachineState::Suspended
        }
        Enum::Known(DomainState::Shutoff) => MachineState::Stopped,
        Enum::Known(DomainState::Crashed) => MachineState::Dead,
        _ => MachineState::Transitioning,
    };
    Ok(MachineInfo {
        id: dom
            .uuid_string()
            .map_err(|e| engine("read the domain's uuid", e))?,
        resource_name: dom
            .name()
            .map_err(|e| engine("read the domain's name", e))?,
        state,
        ports: {
            let labels = xml::labels(&xml);
            let ssh: Option<u16> = labels.get(SSH_PORT).and_then(|p| p.parse().ok());
            // The SSH port is envrig's way in, not one of the Envfile's ports.
            xml::ports(&xml)
                .into_iter()
                .filter(|p| !(p.guest_port == 22 && Some(p.host_port) == ssh))
                .collect()
        },
        labels: xml::labels(&xml),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_without_a_default_route_is_named_as_the_reason_passt_fails() {
        // libvirt 11.3's words when passt finds no default route (seen on a host without one).
        let seen = "internal error: Child process (passt --one-off --socket /run/libvirt/qemu/passt/1-x-net0.socket) unexpected exit status 1: Failed to send 46 bytes to syslog\nNo external routable interface for IPv4\nExternal interface not usable\n";
        let e = passt_without_route(seen).expect("recognised").to_string();
        assert!(e.contains("no default route"), "{e}");
        assert!(passt_without_route("internal error: something else").is_none());
    }
}
