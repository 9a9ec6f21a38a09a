//! Warm layers (`warm = true`): a baked layer keeps the running memory of the machine it was
//! baked from (libvirt's save image, `memory.save` beside the layer's disk, taken at the
//! moment the disk was), and a machine made from the layer starts from that memory instead
//! of booting. A saved image names the domain it was taken from; a clone gets an image of
//! its own (this module's [`SaveImage`]: libvirt's header with the clone's description,
//! then QEMU's stream, copied in the kernel), is restored paused with its private NIC's
//! link down, and is made a new machine before the link comes up: its own MACs, hostname,
//! machine-id, SSH host keys and clock, through the guest agent. Then it is ready as a
//! booted machine is (the environment's key, the host key pinned at first contact).

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Instant;

use envrig_provider_api::{MachineSpec, ProviderError, Result};

use crate::error::{engine, io};
use crate::exec::sh_quote;
use crate::{LibvirtProvider, xml};

/// The layer's memory image, beside its disk in the box store.
pub(crate) const MEMORY: &str = "memory.save";
/// Beside a warm layer's disk when its memory could not be saved: why.
pub(crate) const MEMORY_WHY: &str = "memory.why";

/// libvirt's QEMU save image: this magic, then five little-endian words (version, the
/// length of the XML + cookie area, whether it ran, compression, the cookie's offset in
/// that area) and reserved words up to [`HEADER`] bytes.
const MAGIC: &[u8; 16] = b"LibvirtQemudSave";
const HEADER: usize = 92;
/// The most an XML + cookie area may claim (libvirt pads it to 64 KiB).
const MAX_AREA: u32 = 16 << 20;

/// What leads a save image: libvirt's header, the domain's XML and the cookie.
#[derive(Debug)]
pub(crate) struct SaveImage {
    header: [u8; HEADER],
    area: u32,
    pub(crate) xml: String,
    cookie: Vec<u8>,
}

fn invalid(why: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why.into())
}

impl SaveImage {
    /// Reads the head of the save image at `path`; refuses anything but an uncompressed
    /// version-2 image with bounded sizes.
    pub(crate) fn read(path: &Path) -> std::io::Result<SaveImage> {
        let mut f = std::fs::File::open(path)?;
        let mut header = [0u8; HEADER];
        f.read_exact(&mut header)?;
        if &header[..16] != MAGIC {
            return Err(invalid("not a libvirt save image"));
        }
        let word = |i: usize| {
            let at = 16 + 4 * i;
            u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
        };
        let (version, area, compressed, cookie_at) = (word(0), word(1), word(3), word(4));
        if version != 2 || compressed != 0 {
            return Err(invalid(format!(
                "a save image of version {version}, compression {compressed}: only version 2, uncompressed, is read"
            )));
        }
        if area > MAX_AREA || cookie_at >= area.max(1) {
            return Err(invalid("a save image whose header is out of bounds"));
        }
        let mut data = vec![0u8; area as usize];
        f.read_exact(&mut data)?;
        let xml_end = data.iter().position(|b| *b == 0).unwrap_or(data.len());
        let xml = String::from_utf8(data[..xml_end].to_vec())
            .map_err(|_| invalid("a save image whose XML is not UTF-8"))?;
        let cookie = if cookie_at == 0 {
            Vec::new()
        } else {
            let rest = &data[cookie_at as usize..];
            let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
            let mut c = rest[..end].to_vec();
            c.push(0);
            c
        };
        Ok(SaveImage {
            header,
            area,
            xml,
            cookie,
        })
    }

    /// Writes to `dest` (mode 0600) the image `src` (whose head this is) for a domain
    /// described by `xml`, to be restored paused: the header, `xml` and the cookie, then
    /// `src`'s QEMU stream, copied by the kernel.
    pub(crate) fn write_for(&self, src: &Path, xml: &str, dest: &Path) -> std::io::Result<()> {
        let mut area = Vec::with_capacity(self.area as usize);
        area.extend_from_slice(xml.as_bytes());
        area.push(0);
        let cookie_at = if self.cookie.is_empty() {
            0
        } else {
            area.len() as u32
        };
        area.extend_from_slice(&self.cookie);
        if area.len() > self.area as usize {
            return Err(invalid(format!(
                "the machine's description ({} bytes) does not fit the saved image's ({} bytes)",
                area.len(),
                self.area
            )));
        }
        area.resize(self.area as usize, 0);
        let mut header = self.header;
        header[24..28].copy_from_slice(&0u32.to_le_bytes()); // restored paused
        header[32..36].copy_from_slice(&cookie_at.to_le_bytes());
        use std::os::unix::fs::OpenOptionsExt;
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(dest)?;
        out.write_all(&header)?;
        out.write_all(&area)?;
        let mut from = std::fs::File::open(src)?;
        from.seek(SeekFrom::Start((HEADER + self.area as usize) as u64))?;
        std::io::copy(&mut from, &mut out)?;
        out.sync_all()
    }
}

/// Saves running domain `id`'s memory into `dest` with libvirt's `virDomainSaveFlags`
/// (which the `virt` crate does not wrap): the domain stops, its disk closed and whole.
fn save_domain(dom: &virt::domain::Domain, dest: &Path) -> Result<()> {
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
        let info = self
            .before_start(id)
            .await
            .map_err(|e| Cold::Before(e.to_string()))?;
        let own = self.machine_dir(&info.resource_name).join(MEMORY);
        let saved_xml = image.xml.clone();
        let (src, dest, mine2) = (memory.clone(), own.clone(), mine.clone());
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
                    .map_err(|e| engine("restore the layer's memory", e))?;
                let dom = c
                    .lookup_domain_by_uuid_string(&id2)
                    .map_err(|e| engine("look up the domain", e))?;
                // Nothing on the private network sees it until it is a new machine.
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
        self.reidentify(id, spec, &saved_xml, &live)
            .await
            .map_err(|e| Cold::After(format!("could not make the clone a new machine ({e})")))?;
        self.after_start(id, &info, true)
            .await
            .map_err(|e| Cold::After(e.to_string()))
    }

    /// Makes the restored clone `id` a new machine through the guest agent: each NIC takes
    /// the MAC its domain has (the layer's machine had others), the hostname is `spec`'s,
    /// a new machine-id, new SSH host keys (the server restarted), the clock stepped; then
    /// the private link comes up and the guest renews its leases.
    async fn reidentify(
        &self,
        id: &str,
        spec: &MachineSpec,
        saved: &str,
        live: &str,
    ) -> Result<()> {
        let t0 = Instant::now();
        self.set_clock(id).await;
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
        let fresh = HostMade::new().map_err(|e| io("make the clone's identity", e))?;
        let script = reidentify_script(&pairs, &spec.hostname, now, &fresh);
        let (code, err) = self.agent_sh(id, &script).await?;
        if code != 0 {
            return Err(ProviderError::Conflict {
                message: format!("the guest's script failed ({code}): {}", err.trim()),
            });
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
        let (code, err) = self.agent_sh(id, RENEW).await?;
        if code != 0 {
            return Err(ProviderError::Conflict {
                message: format!(
                    "renewing the guest's leases failed ({code}): {}",
                    err.trim()
                ),
            });
        }
        tracing::debug!(ms = t0.elapsed().as_millis() as u64, "clone re-identified");
        Ok(())
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
    async fn reset_to_cold(&self, id: &str) -> Result<()> {
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
        let (_, disk, _) = self.disk_of(id).await?;
        let backing = crate::disk::backing_of(&disk).await?.ok_or_else(|| {
            io(
                "make the disk again",
                std::io::Error::other("it has no layer under it"),
            )
        })?;
        let size = crate::disk::virtual_size(&disk).await.ok();
        crate::disk::overlay(&backing, &disk, size).await?;
        Ok(())
    }
}

/// Why a warm start became a cold boot: before the clone ran (its disk untouched), or after.
enum Cold {
    Before(String),
    After(String),
}

/// Renews the leases of every NIC (busybox udhcpc, systemd-networkd, dhclient), in the
/// background where the client waits.
const RENEW: &str = r#"for f in /run/udhcpc.*.pid; do [ -r "$f" ] && p=$(cat "$f") && kill -USR2 "$p" 2>/dev/null && kill -USR1 "$p" 2>/dev/null; done
if command -v networkctl >/dev/null 2>&1; then for d in /sys/class/net/*; do n=${d##*/}; [ "$n" = lo ] || networkctl reconfigure "$n" >/dev/null 2>&1; done; fi
if command -v dhclient >/dev/null 2>&1 && pgrep -x dhclient >/dev/null 2>&1; then (dhclient -r >/dev/null 2>&1; dhclient >/dev/null 2>&1 &) ; fi
exit 0"#;

/// What a clone gets from the host's random source: a machine-id, an Ed25519 SSH host key
/// (OpenSSH's format; a dropbear guest converts it), and bytes mixed into its pool.
pub(crate) struct HostMade {
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
            machine_id: hex(&bytes[..16]),
            host_key_pub: crate::ssh::public_line(key.public_key())?,
            host_key,
            entropy: hex(&bytes[48..]),
        })
    }
}

/// The script that makes a restored clone a new machine: `pairs` are `OLD=NEW` MACs,
/// `hostname` its name, `now` the host's clock in seconds since the epoch, `fresh` what the
/// host made for it.
fn reidentify_script(pairs: &[String], hostname: &str, now: u64, fresh: &HostMade) -> String {
    let pairs: Vec<String> = pairs.iter().map(|p| sh_quote(p)).collect();
    format!(
        r#"set -u
printf '%s' {entropy} >/dev/urandom 2>/dev/null
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
exit 0"#,
        entropy = sh_quote(&fresh.entropy),
        machine_id = sh_quote(&fresh.machine_id),
        key = sh_quote(fresh.host_key.trim_end()),
        key_pub = sh_quote(&fresh.host_key_pub),
        pairs = pairs.join(" "),
        host = sh_quote(hostname),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(xml: &str, cookie: &str, area: u32, stream: &[u8]) -> Vec<u8> {
        let mut h = [0u8; HEADER];
        h[..16].copy_from_slice(MAGIC);
        let mut a = xml.as_bytes().to_vec();
        a.push(0);
        let cookie_at = a.len() as u32;
        a.extend_from_slice(cookie.as_bytes());
        a.push(0);
        a.resize(area as usize, 0);
        for (i, w) in [2u32, area, 1, 0, cookie_at].iter().enumerate() {
            h[16 + 4 * i..20 + 4 * i].copy_from_slice(&w.to_le_bytes());
        }
        [h.to_vec(), a, stream.to_vec()].concat()
    }

    #[test]
    fn a_clone_image_has_its_own_description_the_cookie_and_the_same_stream() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("a.save");
        std::fs::write(
            &src,
            image("<domain>a</domain>", "<cookie/>", 4096, b"QEVM-stream"),
        )
        .unwrap();
        let img = SaveImage::read(&src).unwrap();
        assert_eq!(img.xml, "<domain>a</domain>");
        let dest = dir.path().join("b.save");
        img.write_for(&src, "<domain>clone b</domain>", &dest)
            .unwrap();
        let b = SaveImage::read(&dest).unwrap();
        assert_eq!(b.xml, "<domain>clone b</domain>");
        assert_eq!(b.cookie, b"<cookie/>\0");
        let bytes = std::fs::read(&dest).unwrap();
        assert_eq!(bytes.len(), HEADER + 4096 + 11);
        assert!(bytes.ends_with(b"QEVM-stream"));
        // Restored paused.
        assert_eq!(&bytes[24..28], &0u32.to_le_bytes());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn bad_headers_are_refused_never_panic() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        let good = image("<d/>", "<c/>", 256, b"s");
        let cases: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"LibvirtQemudSave".to_vec(),
            {
                let mut g = good.clone();
                g[0] = b'X';
                g
            },
            {
                let mut g = good.clone();
                g[16] = 3;
                g
            },
            {
                let mut g = good.clone();
                g[28] = 1;
                g
            },
            {
                let mut g = good.clone();
                g[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
                g
            },
            {
                let mut g = good.clone();
                g[32..36].copy_from_slice(&9999u32.to_le_bytes());
                g
            },
            good[..HEADER + 10].to_vec(),
        ];
        for c in cases {
            std::fs::write(&p, &c).unwrap();
            assert!(SaveImage::read(&p).is_err());
        }
        // A description too long for the image is refused.
        std::fs::write(&p, &good).unwrap();
        let img = SaveImage::read(&p).unwrap();
        assert!(
            img.write_for(&p, &"x".repeat(300), &dir.path().join("y"))
                .is_err()
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
            "web-2",
            1_800_000_000,
            &fresh,
        );
        assert!(s.contains(&fresh.machine_id) && s.contains("BEGIN OPENSSH PRIVATE KEY"));
        assert!(s.contains("'52:54:00:00:00:01=52:54:00:00:00:02'"), "{s}");
        assert!(s.contains("h='web-2'") || s.contains("h=web-2"), "{s}");
        assert!(s.contains("@1800000000"));
    }
}
