//! Warm layers (`warm = true`): a baked layer keeps the running memory of the machine it was
//! baked from (libvirt's save image, `memory.save` beside the layer's disk, taken at the
//! moment the disk was), and a machine made from the layer starts from that memory instead
//! of booting. A saved image names the domain it was taken from; a clone gets an image of
//! its own (this module's [`SaveImage`]: libvirt's header with the clone's description,
//! then QEMU's stream, copied in the kernel), is restored paused with its private NIC's
//! link down, and is made a new machine before the link comes up: its own MACs, hostname,
//! machine-id, SSH host keys and clock, through the guest agent. Then it is ready as a
//! booted machine is (the environment's key, the host key pinned at first contact).

use std::path::Path;
use std::time::Instant;

use envrig_provider_api::{MachineSpec, ProviderError, Result};

use crate::error::{engine, io};
use crate::saveimage::SaveImage;

mod identity;
use crate::{LibvirtProvider, xml};
use identity::{HostMade, TOUCHED, patched_listing, reidentify_script};

/// The layer's memory image, beside its disk in the box store.
pub(crate) const MEMORY: &str = "memory.save";
/// In a machine's folder from the moment its memory is restored until it is a machine of its
/// own: an envrig killed in between leaves a guest with another machine's identity, which
/// the next command reaching into it boots cold instead ([`LibvirtProvider::finish_boot`]).
pub(crate) const WARMING: &str = "warming";
/// Beside a warm layer's disk when its memory could not be saved: why.
pub(crate) const MEMORY_WHY: &str = "memory.why";
/// Beside a warm layer's memory: the guest's files listed just before it was saved, the
/// drift baseline of its clones (patched where re-identification writes).
pub(crate) const LAYER_BASELINE: &str = "baseline.tsv";

/// Saves running domain `id`'s memory into `dest` with libvirt's `virDomainSaveFlags`
/// (which the `virt` crate does not wrap): the domain stops, its disk closed and whole.
pub(crate) fn save_domain(dom: &virt::domain::Domain, dest: &Path) -> Result<()> {
    let path = std::ffi::CString::new(dest.as_os_str().as_encoded_bytes())
        .map_err(|e| io("name the memory image", std::io::Error::other(e)))?;
    // SAFETY: `dom` is a live domain handle for the duration of the call, `path` a valid
    // NUL-terminated string, and a null description asks libvirt for the domain's own.
    let rc =
        unsafe { virt::sys::virDomainSaveFlags(dom.as_ptr(), path.as_ptr(), std::ptr::null(), 0) };
    if rc < 0 {
        return Err(engine(
            "save the machine's memory",
            virt::error::Error::last_error(),
        ));
    }
    Ok(())
}

impl LibvirtProvider {
    /// Baking a warm layer: saves the memory of running domain `id` into `memory` (the
    /// domain stops), then `disk_work` copies its disk (closed: exactly what the memory
    /// knows), then the domain is restored and runs on. Without a guest agent to make
    /// clones new machines, or when the save is refused (a live shared folder blocks it),
    /// nothing is saved and the reason is returned; `disk_work` then runs on the paused
    /// machine as for a cold layer. The result of `disk_work` is returned either way.
    pub(crate) async fn bake_memory<F>(
        &self,
        id: &str,
        memory: &Path,
        disk_work: F,
    ) -> (Result<()>, Option<String>)
    where
        F: std::future::Future<Output = Result<()>>,
    {
        if !self.agent_answers(id).await {
            let why =
                "it has no guest agent answering, which a clone needs to become a new machine"
                    .to_string();
            return (self.paused_work(id, disk_work).await, Some(why));
        }
        if let Ok(listing) = self.list_files(id).await {
            let _ = std::fs::write(memory.with_file_name(LAYER_BASELINE), listing);
        }
        let (id2, dest) = (id.to_string(), memory.to_path_buf());
        let saved = self
            .blocking(move |c| {
                let dom = c
                    .lookup_domain_by_uuid_string(&id2)
                    .map_err(|e| engine("look up the domain", e))?;
                dom.suspend().map_err(|e| engine("pause the domain", e))?;
                save_domain(&dom, &dest).inspect_err(|_| {
                    let _ = dom.resume();
                })
            })
            .await;
        if let Err(e) = saved {
            let _ = std::fs::remove_file(memory);
            return (self.paused_work(id, disk_work).await, Some(e.to_string()));
        }
        let work = disk_work.await;
        let src = memory.to_path_buf();
        let restored = self
            .blocking(move |c| {
                c.restore_domain_flags(
                    &src.display().to_string(),
                    None,
                    virt::sys::VIR_DOMAIN_SAVE_RUNNING,
                )
                .map_err(|e| engine("restore the machine it was baked from", e))
            })
            .await;
        if let Err(e) = restored {
            // It must run on: booted, its steps kept on its disk.
            tracing::warn!("{e}; booting it instead");
            let _ = std::fs::remove_file(memory);
            let _ = self.start_machine(id).await;
            return (work, Some(e.to_string()));
        }
        self.set_clock(id).await;
        (work, None)
    }

    /// `work` on domain `id` paused (when it runs), then resumed.
    pub(crate) async fn paused_work<F>(&self, id: &str, work: F) -> Result<()>
    where
        F: std::future::Future<Output = Result<()>>,
    {
        let running = self.info(id).await?.state == envrig_provider_api::MachineState::Running;
        if running {
            self.pause_machine(id).await?;
        }
        let r = work.await;
        if running {
            self.resume_machine(id).await?;
        }
        r
    }

    /// Steps the guest's clock to the host's (through the agent), best effort.
    async fn set_clock(&self, id: &str) {
        let id = id.to_string();
        let _ = self
            .blocking(move |c| {
                let dom = c
                    .lookup_domain_by_uuid_string(&id)
                    .map_err(|e| engine("look up the domain", e))?;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                dom.set_time(now.as_secs() as i64, now.subsec_nanos() as i32, 0)
                    .map_err(|e| engine("set the guest's clock", e))
            })
            .await;
    }

    /// Starts new machine `id` (made from `spec`, whose base is a warm layer) from the
    /// layer's memory; when it cannot, boots it and says why. Returns the line for the user.
    pub(crate) async fn start_warm(&self, id: &str, spec: &MachineSpec) -> Result<Option<String>> {
        let t0 = Instant::now();
        match self.try_warm(id, spec).await {
            Ok(()) => Ok(Some(format!(
                "started warm from its layer's memory in {:.1}s (a new machine: its own MACs, address, hostname, machine-id and host keys)",
                t0.elapsed().as_secs_f64()
            ))),
            Err(Cold::Before(why)) => {
                self.start_machine(id).await?;
                let kept = self.renew_identity(id, spec).await?;
                Ok(Some(format!(
                    "booted cold: {why}{}",
                    kept.unwrap_or_default()
                )))
            }
            Err(Cold::After(why)) => {
                self.reset_to_cold(id).await?;
                self.start_machine(id).await?;
                let kept = self.renew_identity(id, spec).await?;
                Ok(Some(format!(
                    "booted cold: {why}{}",
                    kept.unwrap_or_default()
                )))
            }
        }
    }

    /// A machine just booted from a baked layer holds the machine-id and SSH host keys of
    /// the machine the layer was baked from, as every other machine made from it: it gets
    /// its own through the agent (its new host key pinned). Without an agent, they stay;
    /// the phrase returned says so.
    pub(crate) async fn renew_identity(
        &self,
        id: &str,
        spec: &MachineSpec,
    ) -> Result<Option<String>> {
        if !self.agent_answers(id).await {
            return Ok(Some(
                "; its machine-id and SSH host keys are its layer's (no guest agent to renew them)"
                    .into(),
            ));
        }
        let info = self.info(id).await?;
        let fresh = HostMade::new().map_err(|e| io("make the machine's identity", e))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let script = reidentify_script(&[], now, Some((&spec.hostname, &fresh)), None);
        let (code, out) = self.agent_sh(id, &script).await?;
        if code != 0 {
            return Err(ProviderError::Conflict {
                message: format!(
                    "giving it a machine-id and SSH host key of its own failed ({code}): {}",
                    out.trim()
                ),
            });
        }
        if let Some((port, keys)) = self.ssh_parts(&info) {
            keys.pin(port, &fresh.public)
                .map_err(|e| io("record the host key", e))?;
        }
        Ok(None)
    }

    async fn try_warm(&self, id: &str, spec: &MachineSpec) -> std::result::Result<(), Cold> {
        if self.remote.is_some() {
            return Err(Cold::Before("a remote host has no warm layers".into()));
        }
        let memory = self
            .box_dir(&spec.base)
            .map(|d| d.join(MEMORY))
            .filter(|m| m.is_file())
            .ok_or_else(|| {
                let why = self
                    .box_dir(&spec.base)
                    .and_then(|d| std::fs::read_to_string(d.join(MEMORY_WHY)).ok())
                    .map(|w| format!(": when it was baked, {}", w.trim()))
                    .unwrap_or_default();
                Cold::Before(format!(
                    "its layer `{}` holds no running state{why}",
                    spec.base
                ))
            })?;
        let image = SaveImage::read(&memory)
            .map_err(|e| Cold::Before(format!("cannot read {}: {e}", memory.display())))?;
        let (mine, differs) = self
            .restorable_xml(id, &image.xml)
            .await
            .map_err(|e| Cold::Before(e.to_string()))?;
        if let Some(differs) = differs {
            return Err(Cold::Before(format!(
                "its layer's memory was saved in a machine of another shape ({differs})"
            )));
        }
        self.restore_memory(id, &memory, image, &mine, Some(&spec.hostname))
            .await?;
        // Its drift baseline is the layer's listing, where no `always` step changes it.
        let always = spec
            .labels
            .get(envrig_provider_api::labels::START)
            .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
            .is_some_and(|v| v["always"].as_array().is_some_and(|a| !a.is_empty()));
        if !always && let Some(dir) = memory.parent() {
            let _ = self.baseline_from_layer(id, dir).await;
        }
        Ok(())
    }

    /// Domain `id`'s description as a save image holds one (inactive, secure, migratable),
    /// and how its shape differs from that of `saved` (a save image's): `None` when alike,
    /// else the first lines of its own the saved one lacks.
    pub(crate) async fn restorable_xml(
        &self,
        id: &str,
        saved: &str,
    ) -> Result<(String, Option<String>)> {
        let id2 = id.to_string();
        let mine = self
            .blocking(move |c| {
                let dom = c
                    .lookup_domain_by_uuid_string(&id2)
                    .map_err(|e| engine("look up the domain", e))?;
                dom.xml_desc(
                    virt::sys::VIR_DOMAIN_XML_INACTIVE
                        | virt::sys::VIR_DOMAIN_XML_SECURE
                        | virt::sys::VIR_DOMAIN_XML_MIGRATABLE,
                )
                .map_err(|e| engine("describe the domain", e))
            })
            .await?;
        let (theirs, ours) = (xml::shape(saved), xml::shape(&mine));
        let differs = (theirs != ours).then(|| {
            ours.iter()
                .filter(|l| !theirs.contains(l))
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        });
        Ok((mine, differs))
    }

    /// Writes clone `id`'s drift baseline from its layer's listing (`dir`), with the paths
    /// its re-identification wrote listed again inside it; marks it taken, so the baseline
    /// `up` asks for next is this one.
    async fn baseline_from_layer(&self, id: &str, dir: &Path) -> Result<()> {
        let base = std::fs::read_to_string(dir.join(LAYER_BASELINE))
            .map_err(|e| io("read the layer's listing", e))?;
        let script = format!(
            r#"set --; for p in {paths}; do [ -e "$p" ] && set -- "$@" "$p"; done
[ $# -gt 0 ] || exit 0
if find / -maxdepth 0 -printf '' >/dev/null 2>&1; then find "$@" -xdev -printf '%p\t%y\t%s\t%T@\t%m\n' 2>/dev/null; else find "$@" -xdev -exec stat -c '%n	%F	%s	%Y	%a' {{}} + 2>/dev/null; fi
exit 0"#,
            paths = TOUCHED.join(" ")
        );
        let (code, patch) = self.agent_sh(id, &script).await?;
        if code != 0 {
            return Err(io(
                "list the re-identified files",
                std::io::Error::other(patch),
            ));
        }
        let info = self.info(id).await?;
        self.note_put(
            &info.resource_name,
            crate::drift::DRIFT_BASELINE,
            patched_listing(&base, &TOUCHED, &patch).as_bytes(),
        )
        .await?;
        self.note_put(&info.resource_name, crate::drift::BASELINE_READY, b"")
            .await
    }

    /// Starts defined domain `id` (described by `mine`, its inactive migratable XML) from
    /// the memory image at `memory` (whose head is `image`): an image of its own is written
    /// beside its disk, restored paused with its private link down, resumed, given its own
    /// MACs and clock and, with `hostname`, a new identity (a clone; without, it is the same
    /// machine moved: an imported capsule), its link up and leases renewed, then made ready.
    pub(crate) async fn restore_memory(
        &self,
        id: &str,
        memory: &Path,
        image: SaveImage,
        mine: &str,
        hostname: Option<&str>,
    ) -> std::result::Result<(), Cold> {
        let info = self
            .before_start(id)
            .await
            .map_err(|e| Cold::Before(e.to_string()))?;
        let _ = self.note_put(&info.resource_name, WARMING, b"").await;
        let own = self
            .machine_dir(&info.resource_name)
            .join(envrig_provider_api::work::unique_name(".restore"));
        let saved_xml = image.xml.clone();
        let (src, dest, mine2) = (memory.to_path_buf(), own.clone(), mine.to_string());
        let written = tokio::task::spawn_blocking(move || image.write_for(&src, &mine2, &dest))
            .await
            .map_err(|e| Cold::Before(e.to_string()))?;
        if let Err(e) = written {
            let _ = std::fs::remove_file(&own);
            return Err(Cold::Before(format!("cannot write its memory image: {e}")));
        }
        let (id2, path) = (id.to_string(), own.display().to_string());
        let restored = self
            .blocking(move |c| {
                c.restore_domain_flags(&path, None, virt::sys::VIR_DOMAIN_SAVE_PAUSED)
                    .map_err(|e| engine("restore the saved memory", e))?;
                let dom = c
                    .lookup_domain_by_uuid_string(&id2)
                    .map_err(|e| engine("look up the domain", e))?;
                // Nothing on the private network sees it until it is a machine of its own.
                let live = dom
                    .xml_desc(0)
                    .map_err(|e| engine("describe the domain", e))?;
                if let Some(down) = xml::network_nic_link(&live, false) {
                    dom.update_device_flags(&down, virt::sys::VIR_DOMAIN_AFFECT_LIVE)
                        .map_err(|e| engine("take the private link down", e))?;
                }
                dom.resume().map_err(|e| engine("resume the domain", e))?;
                Ok(live)
            })
            .await;
        let _ = std::fs::remove_file(&own);
        let live = match restored {
            Ok(live) => live,
            Err(e) => {
                // A restore that started QEMU and failed leaves the domain running
                // half-made; one that failed before left the disk untouched.
                return Err(match self.info(id).await.map(|i| i.state) {
                    Ok(envrig_provider_api::MachineState::Stopped) => Cold::Before(e.to_string()),
                    _ => Cold::After(e.to_string()),
                });
            }
        };
        let keyed = self
            .reidentify(id, &info, hostname, &saved_xml, &live)
            .await
            .map_err(|e| Cold::After(format!("could not make it a machine of its own ({e})")))?;
        self.note_drop(&info.resource_name, WARMING).await;
        self.after_start(id, &info, !keyed)
            .await
            .map_err(|e| Cold::After(e.to_string()))
    }

    /// Makes the restored machine `id` one of its own through the guest agent: each NIC
    /// takes the MAC its domain has (the saved machine had others), the clock is stepped;
    /// with `hostname` (a clone) that hostname, a new machine-id and new SSH host keys (the
    /// server restarted) too. Then the private link comes up and the guest renews its leases.
    ///
    /// A clone's script also installs the environment's key, and its host key (made here)
    /// is pinned: it returns `true`, and the machine needs no key installed after.
    async fn reidentify(
        &self,
        id: &str,
        info: &envrig_provider_api::MachineInfo,
        hostname: Option<&str>,
        saved: &str,
        live: &str,
    ) -> Result<bool> {
        let t0 = Instant::now();
        // The agent's channel comes back a moment after the resume (longer when several
        // machines restore at once).
        if !self
            .wait_agent_only(id, std::time::Duration::from_secs(60))
            .await
        {
            return Err(ProviderError::Conflict {
                message: "its guest agent did not answer within 60 s of the restore".into(),
            });
        }
        let pairs: Vec<String> = xml::nic_macs(saved)
            .into_iter()
            .zip(xml::nic_macs(live))
            .map(|((_, old), (_, new))| format!("{old}={new}"))
            .collect();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        // Its randomness is the layer's until the guest's kernel reseeds (clones would draw
        // the same numbers): what must be its own comes from the host.
        let fresh = match hostname {
            Some(h) => Some((
                h,
                HostMade::new().map_err(|e| io("make the clone's identity", e))?,
            )),
            None => None,
        };
        // A clone with SSH gets the environment's key from the same script.
        let ssh = self.ssh_parts(info).filter(|_| fresh.is_some());
        let key_line = match &ssh {
            Some((_, keys)) => {
                let key = keys
                    .ensure()
                    .map_err(|e| io("read the environment's key", e))?;
                Some(
                    crate::ssh::public_line(key.public_key())
                        .map_err(|e| io("encode the key", e))?,
                )
            }
            None => None,
        };
        let private = xml::network_nic(live).map(|(_, mac)| mac);
        let mut script = reidentify_script(
            &pairs,
            now,
            fresh.as_ref().map(|(h, f)| (*h, f)),
            private.as_deref(),
        );
        if let Some(line) = &key_line {
            script = script.trim_end_matches("exit 0").to_string();
            script.push_str(&crate::boot::install_script(line));
        }
        let (code, out) = self.agent_sh(id, &script).await?;
        if code != 0 {
            return Err(ProviderError::Conflict {
                message: format!("the guest's script failed ({code}): {}", out.trim()),
            });
        }
        if let (Some((port, keys)), Some((_, made))) = (&ssh, &fresh) {
            let user = crate::error::checked_user(out.trim().lines().last().unwrap_or("root"))?;
            keys.pin(*port, &made.public)
                .map_err(|e| io("record the host key", e))?;
            std::fs::write(keys.dir.join(format!("{}.user", info.resource_name)), &user)
                .map_err(|e| io("record the login user", e))?;
        }
        let id2 = id.to_string();
        let live2 = live.to_string();
        self.blocking(move |c| {
            let dom = c
                .lookup_domain_by_uuid_string(&id2)
                .map_err(|e| engine("look up the domain", e))?;
            if let Some(up) = xml::network_nic_link(&live2, true) {
                dom.update_device_flags(&up, virt::sys::VIR_DOMAIN_AFFECT_LIVE)
                    .map_err(|e| engine("bring the private link up", e))?;
            }
            Ok(())
        })
        .await?;
        tracing::debug!(ms = t0.elapsed().as_millis() as u64, "clone re-identified");
        Ok(key_line.is_some())
    }

    /// Runs `script` as root through the guest agent (SSH is not the clone's yet).
    async fn agent_sh(&self, id: &str, script: &str) -> Result<(i64, String)> {
        let req = envrig_provider_api::ExecRequest {
            argv: vec!["/bin/sh".into(), "-c".into(), script.to_string()],
            ..Default::default()
        };
        let mut out = Vec::new();
        let code = self
            .exec_agent(id, &req, &mut |_, b: &[u8]| out.extend_from_slice(b))
            .await?;
        Ok((code, String::from_utf8_lossy(&out).into_owned()))
    }

    /// After a warm start failed once the clone ran: the domain is forced off and its disk
    /// made again over its layer, so the cold boot starts from the layer as it was baked.
    pub(crate) async fn reset_to_cold(&self, id: &str) -> Result<()> {
        let id2 = id.to_string();
        self.blocking(move |c| {
            let dom = c
                .lookup_domain_by_uuid_string(&id2)
                .map_err(|e| engine("look up the domain", e))?;
            if dom.is_active().unwrap_or(false) {
                dom.destroy().map_err(|e| engine("stop the clone", e))?;
            }
            Ok(())
        })
        .await?;
        let (info, disk, _) = self.disk_of(id).await?;
        // A disk of its own (an imported one) stays: it is whole as after a power cut.
        if let Some(backing) = crate::disk::backing_of(&disk).await? {
            let size = crate::disk::virtual_size(&disk).await.ok();
            crate::disk::overlay(&backing, &disk, size).await?;
        }
        self.note_drop(&info.resource_name, WARMING).await;
        Ok(())
    }
}

/// Why a warm start became a cold boot: before the clone ran (its disk untouched), or after.
pub(crate) enum Cold {
    Before(String),
    After(String),
}
