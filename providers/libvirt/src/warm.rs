//! Warm layers (`warm = true`): a baked layer keeps the running memory of the machine it was
//! baked from (libvirt's save image, `memory.save` beside the layer's disk, taken at the
//! moment the disk was), and a machine made from the layer starts from that memory instead
//! of booting. A saved image names the domain it was taken from; a clone gets an image of
//! its own (this module's [`SaveImage`]: libvirt's header with the clone's description,
//! then QEMU's stream, copied in the kernel), is restored paused with its private NIC's
//! link down, and is made a new machine before the link comes up: its own MACs, hostname,
//! machine-id, SSH host keys and clock, through the guest agent. Then it is ready as a
//! booted machine is (the environment's key, the host key pinned at first contact).

use std::io::Read;
use std::path::Path;
use std::time::Instant;

use envrig_provider_api::{MachineSpec, ProviderError, Result};

use crate::error::{engine, io};
use crate::exec::sh_quote;
use crate::saveimage::SaveImage;
use crate::{LibvirtProvider, xml};

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
                Ok(Some(format!("booted cold: {why}")))
            }
            Err(Cold::After(why)) => {
                self.reset_to_cold(id).await?;
                self.start_machine(id).await?;
                Ok(Some(format!("booted cold: {why}")))
            }
        }
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
            .await
            .map_err(|e| Cold::Before(e.to_string()))?;
        let (saved_shape, my_shape) = (xml::shape(&image.xml), xml::shape(&mine));
        if saved_shape != my_shape {
            let differs: Vec<String> = my_shape
                .iter()
                .filter(|l| !saved_shape.contains(l))
                .take(3)
                .cloned()
                .collect();
            return Err(Cold::Before(format!(
                "its layer's memory was saved in a machine of another shape ({})",
                differs.join("; ")
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

/// Renews the lease of the NIC whose MAC is `mac` (the private one: its fixed address is
/// its new MAC's) with busybox udhcpc, systemd-networkd or dhclient, once its link is up
/// (after the script), in the background.
fn renew_script(mac: &str) -> String {
    format!(
        r#"(m={mac}; n=; i=0
while [ $i -lt 200 ]; do for d in /sys/class/net/*; do [ "$(cat "$d/address" 2>/dev/null)" = "$m" ] && n=${{d##*/}}; done; [ -n "$n" ] && [ "$(cat "/sys/class/net/$n/carrier" 2>/dev/null)" = 1 ] && break; i=$((i+1)); sleep 0.05; done
[ -n "$n" ] || exit 0
f=/run/udhcpc.$n.pid; [ -r "$f" ] && p=$(cat "$f") && kill -USR2 "$p" && kill -USR1 "$p"
command -v networkctl >/dev/null 2>&1 && networkctl reconfigure "$n"
if command -v dhclient >/dev/null 2>&1 && pgrep -x dhclient >/dev/null 2>&1; then dhclient -r "$n"; dhclient "$n"; fi
) >/dev/null 2>&1 </dev/null &
"#,
        mac = sh_quote(mac)
    )
}

/// Paths the re-identification of a clone writes (and the lease renewal, for a busybox
/// guest): listed again after it, over the layer's listing, for its drift baseline.
const TOUCHED: [&str; 9] = [
    "/etc/machine-id",
    "/etc/hostname",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/ssh",
    "/etc/dropbear",
    "/root/.ssh",
    "/home/vagrant/.ssh",
    "/var/lib/dbus",
];

/// `base` (a listing as `drift::LIST_SCRIPT` prints it) with every path under `roots`
/// replaced by `patch` (a listing of those paths taken later).
fn patched_listing(base: &str, roots: &[&str], patch: &str) -> String {
    let under = |p: &str| {
        roots
            .iter()
            .any(|r| p == *r || p.strip_prefix(r).is_some_and(|rest| rest.starts_with('/')))
    };
    let mut out: String = base
        .lines()
        .filter(|l| !under(l.split('\t').next().unwrap_or_default()))
        .flat_map(|l| [l, "\n"])
        .collect();
    for l in patch
        .lines()
        .filter(|l| under(l.split('\t').next().unwrap_or_default()))
    {
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// What a clone gets from the host's random source: a machine-id, an Ed25519 SSH host key
/// (OpenSSH's format; a dropbear guest converts it), and bytes mixed into its pool.
pub(crate) struct HostMade {
    public: russh::keys::PublicKey,
    machine_id: String,
    host_key: String,
    host_key_pub: String,
    entropy: String,
}

impl HostMade {
    fn new() -> std::io::Result<HostMade> {
        use russh::keys::ssh_key::{LineEnding, PrivateKey, private::Ed25519Keypair};
        let mut bytes = [0u8; 16 + 32 + 64];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&bytes[16..48]);
        let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
        key.set_comment("root@envrig-clone");
        let host_key = key
            .to_openssh(LineEnding::LF)
            .map_err(std::io::Error::other)?
            .to_string();
        Ok(HostMade {
            public: key.public_key().clone(),
            machine_id: hex(&bytes[..16]),
            host_key_pub: crate::ssh::public_line(key.public_key())?,
            host_key,
            entropy: hex(&bytes[48..]),
        })
    }
}

/// The script that makes a restored machine one of its own: `pairs` are `OLD=NEW` MACs,
/// `now` the host's clock in seconds since the epoch, and for a clone its hostname and what
/// the host made for it.
fn reidentify_script(
    pairs: &[String],
    now: u64,
    clone: Option<(&str, &HostMade)>,
    private_mac: Option<&str>,
) -> String {
    let pairs: Vec<String> = pairs.iter().map(|p| sh_quote(p)).collect();
    let mut out = format!(
        r#"set -u
date -u -s "@{now}" >/dev/null 2>&1
for pair in {pairs}; do
  old=${{pair%%=*}}; new=${{pair#*=}}
  [ "$old" = "$new" ] && continue
  for d in /sys/class/net/*; do
    [ "$(cat "$d/address" 2>/dev/null)" = "$old" ] || continue
    n=${{d##*/}}
    ip link set dev "$n" down && ip link set dev "$n" address "$new" && ip link set dev "$n" up || {{ echo "cannot give $n the MAC $new" >&2; exit 11; }}
  done
done
"#,
        pairs = pairs.join(" "),
    );
    if let Some((hostname, fresh)) = clone {
        out.push_str(&identity_script(hostname, fresh));
    }
    if let Some(mac) = private_mac {
        out.push_str(&renew_script(mac));
    }
    out.push_str("exit 0");
    out
}

/// The part of [`reidentify_script`] that gives a clone its own hostname, machine-id and
/// SSH host key, and mixes the host's bytes into its random pool.
fn identity_script(hostname: &str, fresh: &HostMade) -> String {
    format!(
        r#"printf '%s' {entropy} >/dev/urandom 2>/dev/null
h={host}
hostname "$h" 2>/dev/null || echo "$h" >/proc/sys/kernel/hostname || exit 12
[ -e /etc/hostname ] && echo "$h" >/etc/hostname
if [ -f /etc/hosts ]; then
  grep -v '^127\.0\.1\.1[[:space:]]' /etc/hosts >/etc/hosts.envrig; printf '127.0.1.1\t%s\n' "$h" >>/etc/hosts.envrig; cat /etc/hosts.envrig >/etc/hosts; rm -f /etc/hosts.envrig
fi
printf '%s\n' {machine_id} >/etc/machine-id || exit 13
[ -L /var/lib/dbus/machine-id ] || {{ [ -f /var/lib/dbus/machine-id ] && printf '%s\n' {machine_id} >/var/lib/dbus/machine-id; }}
key={key}
umask 077
if [ -d /etc/ssh ] && [ -x /usr/sbin/sshd ]; then
  rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub
  printf '%s\n' "$key" >/etc/ssh/ssh_host_ed25519_key && printf '%s\n' {key_pub} >/etc/ssh/ssh_host_ed25519_key.pub || exit 14
  chmod 644 /etc/ssh/ssh_host_ed25519_key.pub
  for f in /run/sshd.pid /var/run/sshd.pid; do [ -r "$f" ] && kill -HUP "$(cat "$f")" 2>/dev/null && break; done
  i=0; while command -v ss >/dev/null 2>&1 && [ $i -lt 100 ]; do sleep 0.05; ss -Hltn 2>/dev/null | grep -q ':22 ' && break; i=$((i+1)); done
fi
if [ -d /etc/dropbear ]; then
  rm -f /etc/dropbear/dropbear_*_host_key
  printf '%s\n' "$key" >/run/envrig-host-key
  dropbearconvert openssh dropbear /run/envrig-host-key /etc/dropbear/dropbear_ed25519_host_key >/dev/null 2>&1 || {{ rm -f /run/envrig-host-key; exit 15; }}
  rm -f /run/envrig-host-key
  for f in /run/dropbear.pid /var/run/dropbear.pid; do
    [ -r "$f" ] || continue
    p=$(cat "$f"); cmd=$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null)
    kill "$p" 2>/dev/null; i=0; while kill -0 "$p" 2>/dev/null && [ $i -lt 50 ]; do i=$((i+1)); sleep 0.02; done
    [ -n "$cmd" ] && $cmd || exit 16
    break
  done
fi
"#,
        entropy = sh_quote(&fresh.entropy),
        machine_id = sh_quote(&fresh.machine_id),
        key = sh_quote(fresh.host_key.trim_end()),
        key_pub = sh_quote(&fresh.host_key_pub),
        host = sh_quote(hostname),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_listing_is_patched_under_the_touched_paths_only() {
        let base = "/etc\td\t0\t1\t755\n/etc/ssh\td\t0\t1\t755\n/etc/ssh/ssh_host_ecdsa_key\tf\t1\t1\t600\n/etc/sshd\tf\t1\t1\t644\n/etc/machine-id\tf\t33\t1\t444\n";
        let patch = "/etc/ssh\td\t0\t2\t755\n/etc/ssh/ssh_host_ed25519_key\tf\t9\t2\t600\n/etc/machine-id\tf\t33\t2\t444\n/elsewhere\tf\t1\t1\t644\n";
        let got = patched_listing(base, &["/etc/ssh", "/etc/machine-id"], patch);
        let lines: Vec<&str> = got.lines().collect();
        assert_eq!(
            lines,
            [
                "/etc\td\t0\t1\t755",
                "/etc/sshd\tf\t1\t1\t644",
                "/etc/ssh\td\t0\t2\t755",
                "/etc/ssh/ssh_host_ed25519_key\tf\t9\t2\t600",
                "/etc/machine-id\tf\t33\t2\t444",
            ]
        );
    }

    #[test]
    fn the_script_names_every_mac_pair_and_the_hostname_quoted() {
        let fresh = HostMade::new().unwrap();
        let other = HostMade::new().unwrap();
        assert_ne!(fresh.machine_id, other.machine_id);
        assert_ne!(fresh.host_key_pub, other.host_key_pub);
        assert_eq!(fresh.machine_id.len(), 32);
        assert!(fresh.host_key_pub.starts_with("ssh-ed25519 "));
        let s = reidentify_script(
            &["52:54:00:00:00:01=52:54:00:00:00:02".into()],
            1_800_000_000,
            Some(("web-2", &fresh)),
            Some("52:54:00:00:00:02"),
        );
        assert!(
            s.contains("udhcpc.$n.pid") && s.contains("m='52:54:00:00:00:02'"),
            "{s}"
        );
        let moved = reidentify_script(&["a=b".into()], 1, None, None);
        assert!(!moved.contains("machine-id") && moved.contains("'a=b'"));
        assert!(s.contains(&fresh.machine_id) && s.contains("BEGIN OPENSSH PRIVATE KEY"));
        assert!(s.contains("'52:54:00:00:00:01=52:54:00:00:00:02'"), "{s}");
        assert!(s.contains("h='web-2'") || s.contains("h=web-2"), "{s}");
        assert!(s.contains("@1800000000"));
    }
}
