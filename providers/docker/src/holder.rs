//! Network holders: the pod model, for machines whose generations replace one another.
//!
//! Docker publishes a host port on the container that owns it. Stopping generation N and
//! starting N+1 therefore withdraws the port and publishes it again, and while that happens
//! (measured here: about 1.2 s when clients knock meanwhile, the same by hand with
//! `docker stop` + `docker start`) the port does not answer. So for a machine with
//! [`MachineSpec::handover`] the host ports, the hostname and the names on the private
//! network belong to a small *holder* container instead (Kubernetes' pause container), and
//! every generation joins the holder's network namespace (`--network container:HOLDER`).
//! A switch then only stops one process tree and starts another behind a port that stays
//! published (measured: a gap of about 0.2 s).
//!
//! The holder runs a 129-byte static program that sleeps in `pause(2)` (made below; Docker's
//! init forwards the stop signal to it). Its image, `envrig-holder:<hash>`, is imported from
//! an in-memory tarball the first time it is needed: no registry, and no dependency on what
//! a machine's image holds. Engines on another architecture get a holder made from the
//! machine's own base instead, running `sleep infinity`.
//!
//! Invariants:
//! - A holder is labelled like its machine (environment, project, machine) plus
//!   [`labels::HOLDER`] = the hash of what it holds; it is never listed as a machine.
//! - A generation whose ports or names differ gets another holder (same machine, another
//!   hash); starting a generation first stops the machine's holders no running generation
//!   uses, so their ports are free.
//! - A holder runs while a generation joined to it runs: `stop` of the last running one stops
//!   it (so `halt` frees the host ports), `stop_for_handover` leaves it for the next.
//! - `remove` of the last generation joined to a holder removes the holder; `purge` removes
//!   whatever holders an environment has left.

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, ContainerInspectResponse, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, ListContainersOptions,
};
use envrig_provider_api::hash::sha256_hex;
use envrig_provider_api::{MachineSpec, PortSpec, ProviderError, Result, Selector, labels};
use futures_util::StreamExt;

use crate::error::map_err;
use crate::{DockerProvider, KEEPALIVE, label_filters};

/// The repository of the holder image.
const HOLDER_REPO: &str = "envrig-holder";

/// Labels of a machine's resource that belong to one generation only, not on its holder.
const GENERATION_ONLY: &[&str] = &[
    labels::GENERATION,
    labels::CONFIG,
    labels::FINGERPRINT,
    labels::INPUTS,
    labels::LAYER,
    labels::CANDIDATE,
    labels::SNAPSHOT,
    labels::CREATED,
];

/// A static x86-64 Linux program that waits for a signal forever: an ELF header, one
/// loadable segment (the whole file, read and execute) and the code
/// `loop: mov eax, 34 (pause); syscall; jmp loop`.
fn pause_program_x86_64() -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    const HEADERS: u64 = 64 + 56;
    const CODE: [u8; 9] = [0xb8, 0x22, 0, 0, 0, 0x0f, 0x05, 0xeb, 0xf7];
    let total = HEADERS + CODE.len() as u64;
    let mut elf = Vec::with_capacity(total as usize);
    // e_ident: magic, 64-bit, little-endian, version 1, System V ABI, padding.
    elf.extend_from_slice(b"\x7fELF\x02\x01\x01\x00");
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // e_type: executable
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // e_machine: x86-64
    elf.extend_from_slice(&1u32.to_le_bytes()); // e_version
    elf.extend_from_slice(&(BASE + HEADERS).to_le_bytes()); // e_entry: the code
    elf.extend_from_slice(&64u64.to_le_bytes()); // e_phoff: right after this header
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff: no sections
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    elf.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    elf.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    elf.extend_from_slice(&[0; 6]); // e_shentsize, e_shnum, e_shstrndx
    elf.extend_from_slice(&1u32.to_le_bytes()); // p_type: PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // p_flags: read + execute
    elf.extend_from_slice(&0u64.to_le_bytes()); // p_offset
    elf.extend_from_slice(&BASE.to_le_bytes()); // p_vaddr
    elf.extend_from_slice(&BASE.to_le_bytes()); // p_paddr
    elf.extend_from_slice(&total.to_le_bytes()); // p_filesz
    elf.extend_from_slice(&total.to_le_bytes()); // p_memsz
    elf.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    elf.extend_from_slice(&CODE);
    elf
}

/// The holder image's root file system: `/pause`, executable.
fn holder_rootfs() -> std::io::Result<Vec<u8>> {
    let program = pause_program_x86_64();
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(program.len() as u64);
    header.set_mode(0o755);
    header.set_mtime(0);
    header.set_cksum();
    builder.append_data(&mut header, "pause", program.as_slice())?;
    builder.into_inner()
}

/// The hash of what a holder for `spec` holds: host ports, hostname and network names.
pub(crate) fn holder_hash(spec: &MachineSpec) -> String {
    let held = serde_json::json!({
        "ports": spec.ports,
        "hostname": spec.hostname,
        "network": spec.network,
    });
    sha256_hex(held.to_string().as_bytes())[..12].to_string()
}

/// The holder's container name: the machine's resource name without its generation.
fn holder_name(spec: &MachineSpec, hash: &str) -> String {
    let stem = match spec.resource_name.rsplit_once('-') {
        Some((stem, generation)) if generation.bytes().all(|b| b.is_ascii_digit()) => stem,
        _ => spec.resource_name.as_str(),
    };
    format!("{stem}_net-{hash}")
}

/// The holder a container joined, from its inspect answer (`container:<id>`).
pub(crate) fn joined_holder(c: &ContainerInspectResponse) -> Option<String> {
    c.host_config
        .as_ref()?
        .network_mode
        .as_deref()?
        .strip_prefix("container:")
        .map(str::to_string)
}

/// Whether a spec's machine gets a holder: it hands over, and has something to hold.
pub(crate) fn wants_holder(spec: &MachineSpec) -> bool {
    spec.handover && (!spec.ports.is_empty() || spec.network.is_some())
}

/// Whether a container's processes live (running, paused or restarting): a holder it
/// joined must keep running.
fn in_use(c: &bollard::models::ContainerSummary) -> bool {
    use bollard::models::ContainerSummaryStateEnum as S;
    matches!(c.state, Some(S::RUNNING | S::PAUSED | S::RESTARTING))
}

/// Whether `mode` (a container's network mode) joins the container `id`.
fn joins(mode: Option<&str>, id: &str) -> bool {
    mode.and_then(|m| m.strip_prefix("container:"))
        .is_some_and(|h| h == id || (h.len() >= 12 && id.starts_with(h)))
}

impl DockerProvider {
    /// The holder image, imported when missing; `None` when the engine is not x86-64.
    async fn holder_image(&self) -> Result<Option<String>> {
        self.holder_image
            .get_or_try_init(|| self.find_or_import_holder_image())
            .await
            .cloned()
    }

    async fn find_or_import_holder_image(&self) -> Result<Option<String>> {
        let rootfs = holder_rootfs().map_err(|e| ProviderError::Engine {
            provider: crate::error::NAME,
            op: "make the holder image".into(),
            source: Box::new(e),
        })?;
        let tag = sha256_hex(&rootfs)[..12].to_string();
        let image = format!("{HOLDER_REPO}:{tag}");
        match self.docker.inspect_image(&image).await {
            Ok(_) => return Ok(Some(image)),
            Err(e) => match map_err(format!("inspect image {image}"), e) {
                ProviderError::NotFound { .. } => {}
                other => return Err(other),
            },
        }
        let version = self
            .docker
            .version()
            .await
            .map_err(|e| map_err("ask the engine's version", e))?;
        if !matches!(version.arch.as_deref(), Some("amd64" | "x86_64")) {
            return Ok(None);
        }
        let options = CreateImageOptions {
            from_src: Some("-".into()),
            repo: Some(HOLDER_REPO.into()),
            tag: Some(tag.clone()),
            changes: vec![r#"ENTRYPOINT ["/pause"]"#.into()],
            ..CreateImageOptions::default()
        };
        let mut stream =
            self.docker
                .create_image(Some(options), Some(bollard::body_full(rootfs.into())), None);
        while let Some(item) = stream.next().await {
            item.map_err(|e| map_err("import the holder image", e))?;
        }
        // Podman 4.3's compatible import takes the repository but not the tag (it tags
        // `latest`): where the tag is missing it is given here, and `latest` taken off again.
        // Two commands importing at once may find either name gone: what counts is that
        // the tagged image is there.
        if self.flavor == crate::Flavor::Podman && self.docker.inspect_image(&image).await.is_err()
        {
            let latest = format!("{HOLDER_REPO}:latest");
            let options = bollard::query_parameters::TagImageOptions {
                repo: Some(HOLDER_REPO.into()),
                tag: Some(tag),
            };
            let tagged = self.docker.tag_image(&latest, Some(options)).await;
            if let Err(e) = tagged
                && self.docker.inspect_image(&image).await.is_err()
            {
                return Err(map_err("tag the holder image", e));
            }
            let _ = self
                .docker
                .remove_image(
                    &latest,
                    None::<bollard::query_parameters::RemoveImageOptions>,
                    None,
                )
                .await;
        }
        Ok(Some(image))
    }

    /// The id of `spec`'s holder, created when missing.
    pub(crate) async fn ensure_holder(&self, spec: &MachineSpec) -> Result<String> {
        let hash = holder_hash(spec);
        let name = holder_name(spec, &hash);
        // Bounded: a create that loses a race to another `up` finds the winner's holder.
        for _ in 0..3 {
            match self.docker.inspect_container(&name, None).await {
                Ok(c) => {
                    let l = c.config.as_ref().and_then(|c| c.labels.as_ref());
                    let ours = l.and_then(|l| l.get(labels::HOLDER)) == Some(&hash)
                        && l.and_then(|l| l.get(labels::ENV)) == spec.labels.get(labels::ENV);
                    return if ours {
                        Ok(c.id.unwrap_or(name))
                    } else {
                        Err(ProviderError::Conflict {
                            message: format!(
                                "a container named `{name}` exists but is not machine `{}`'s network holder; remove it",
                                spec.machine
                            ),
                        })
                    };
                }
                Err(e) => match map_err(format!("inspect container {name}"), e) {
                    ProviderError::NotFound { .. } => {}
                    other => return Err(other),
                },
            }
            let body = self.holder_body(spec, &hash).await?;
            let options = CreateContainerOptions {
                name: Some(name.clone()),
                ..CreateContainerOptions::default()
            };
            match self.docker.create_container(Some(options), body).await {
                Ok(created) => return Ok(created.id),
                Err(e) => match map_err(format!("create container {name}"), e) {
                    ProviderError::Conflict { .. } => continue,
                    other => return Err(other),
                },
            }
        }
        Err(ProviderError::Conflict {
            message: format!("the network holder `{name}` could not be created"),
        })
    }

    async fn holder_body(&self, spec: &MachineSpec, hash: &str) -> Result<ContainerCreateBody> {
        let (image, entrypoint) = match self.holder_image().await? {
            Some(image) => (image, vec!["/pause".to_string()]),
            None => (
                spec.base.clone(),
                KEEPALIVE.iter().map(|s| s.to_string()).collect(),
            ),
        };
        let mut labels = spec.labels.clone();
        for key in GENERATION_ONLY {
            labels.remove(*key);
        }
        labels.insert(labels::HOLDER.to_string(), hash.to_string());
        let (exposed, port_bindings) = Self::published(spec);
        let resolver = self.resolver(spec).await;
        Ok(ContainerCreateBody {
            image: Some(image),
            hostname: Some(spec.hostname.clone()),
            labels: Some(labels.into_iter().collect()),
            entrypoint: Some(entrypoint),
            cmd: Some(Vec::new()),
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            networking_config: Self::endpoint(spec),
            host_config: Some(HostConfig {
                network_mode: spec.network.as_ref().map(|n| n.network.clone()),
                init: Some(true),
                port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
                dns: resolver.as_ref().map(|r| vec![r.server.clone()]),
                dns_search: resolver.and_then(|r| r.domain).map(|d| vec![d]),
                ..HostConfig::default()
            }),
            ..ContainerCreateBody::default()
        })
    }

    /// The containers of the machine `c` belongs to (every generation, and its holders).
    async fn machine_containers(
        &self,
        c: &ContainerInspectResponse,
    ) -> Result<Vec<bollard::models::ContainerSummary>> {
        let l = c.config.as_ref().and_then(|c| c.labels.as_ref());
        let mut filters = Vec::new();
        for key in [labels::ENV, labels::MACHINE] {
            match l.and_then(|l| l.get(key)) {
                Some(v) => filters.push(format!("{key}={v}")),
                None => return Ok(Vec::new()),
            }
        }
        self.docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(HashMap::from([("label".to_string(), filters)])),
                ..ListContainersOptions::default()
            }))
            .await
            .map_err(|e| map_err("list containers", e))
    }

    /// Before `c` (joined to `holder`) starts: its holder runs, and the machine's holders
    /// that no running generation uses are stopped first (their ports may be the same).
    pub(crate) async fn wake_holder(
        &self,
        c: &ContainerInspectResponse,
        holder: &str,
    ) -> Result<()> {
        let h = self.inspect_raw(holder).await.map_err(|e| match e {
            ProviderError::NotFound { .. } => ProviderError::Conflict {
                message: format!(
                    "its network holder (the container that keeps its host ports and names, {}) is gone; `envrig up` replaces this generation with one that has a new holder",
                    &holder[..holder.len().min(12)]
                ),
            },
            other => other,
        })?;
        if h.state.as_ref().and_then(|s| s.running) == Some(true) {
            return Ok(());
        }
        self.free_unused_holders(c, Some(holder)).await?;
        self.start_reattaching(holder, "the network holder").await
    }

    /// Stops the holders of `c`'s machine (but `keep`) that no generation uses any more, so
    /// that the ports they publish are free for the generation about to start.
    pub(crate) async fn free_unused_holders(
        &self,
        c: &ContainerInspectResponse,
        keep: Option<&str>,
    ) -> Result<()> {
        let all = self.machine_containers(c).await?;
        for other in &all {
            let Some(id) = other.id.as_deref() else {
                continue;
            };
            let is_holder = other
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(labels::HOLDER));
            if !is_holder || !in_use(other) || keep.is_some_and(|k| id.starts_with(k)) {
                continue;
            }
            let used = all.iter().any(|g| {
                in_use(g)
                    && joins(
                        g.host_config
                            .as_ref()
                            .and_then(|h| h.network_mode.as_deref()),
                        id,
                    )
            });
            if !used {
                self.stop_holder(id).await?;
            }
        }
        Ok(())
    }

    async fn stop_holder(&self, id: &str) -> Result<()> {
        match self
            .stop_container(id, std::time::Duration::from_secs(2))
            .await
        {
            Err(ProviderError::NotFound { .. }) => Ok(()),
            other => other,
        }
    }

    /// After `c` (joined to `holder`) stopped or went: the holder stops when no generation
    /// joined to it runs, and goes when none is left (`remove`).
    pub(crate) async fn settle_holder(
        &self,
        c: &ContainerInspectResponse,
        holder: &str,
        removed: bool,
    ) -> Result<()> {
        let all = self.machine_containers(c).await?;
        let joined: Vec<_> = all
            .iter()
            .filter(|g| {
                joins(
                    g.host_config
                        .as_ref()
                        .and_then(|h| h.network_mode.as_deref()),
                    holder,
                ) && (!removed || g.id != c.id)
            })
            .collect();
        if removed && joined.is_empty() {
            return self.remove_container(holder).await.map(|_| ());
        }
        let running = joined.iter().any(|g| in_use(g) && g.id != c.id);
        if !running {
            self.stop_holder(holder).await?;
        }
        Ok(())
    }

    /// The network holders (see `holder`) that `selector` selects.
    pub(crate) async fn holders(
        &self,
        selector: &Selector,
    ) -> Result<Vec<bollard::models::ContainerSummary>> {
        let selector = selector.clone().has(labels::HOLDER);
        self.docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(label_filters(&selector)),
                ..ListContainersOptions::default()
            }))
            .await
            .map_err(|e| map_err("list containers", e))
    }

    /// The host ports a network holder publishes (none when it is stopped); `None` when
    /// the holder is gone.
    pub(crate) async fn holder_ports(&self, holder: &str) -> Option<Vec<PortSpec>> {
        match self.docker.inspect_container(holder, None).await {
            Ok(h) => Some(Self::ports_from_map(
                h.network_settings.as_ref().and_then(|n| n.ports.as_ref()),
            )),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => None,
            Err(_) => Some(Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_program_is_a_129_byte_elf_entering_at_its_code() {
        let p = pause_program_x86_64();
        assert_eq!(p.len(), 129);
        assert_eq!(&p[..4], b"\x7fELF");
        let entry = u64::from_le_bytes(p[24..32].try_into().unwrap());
        assert_eq!(entry, 0x40_0000 + 120);
        // The jump goes back to the first instruction.
        assert_eq!(p[127..], [0xeb, 0xf7]);
    }

    #[test]
    fn holder_names_drop_the_generation_and_hashes_follow_what_is_held() {
        let mut spec = envrig_provider_api::testkit::spec("img", "env1", "web");
        spec.resource_name = "demo-1a2b3c-web-3".into();
        let h = holder_hash(&spec);
        assert_eq!(holder_name(&spec, &h), format!("demo-1a2b3c-web_net-{h}"));
        spec.resource_name = "demo-1a2b3c-web-4".into();
        spec.base = "other".into();
        assert_eq!(holder_hash(&spec), h, "the base is not held");
        spec.hostname = "www".into();
        assert_ne!(holder_hash(&spec), h, "the hostname is");
        spec.resource_name = "plain".into();
        assert_eq!(holder_name(&spec, "x"), "plain_net-x");
    }

    #[test]
    fn joins_matches_full_and_short_ids_only_of_container_modes() {
        let id = "94e9266cfba64e772b0b7e8236a5ebbd18a222dd7fca8092e98d9371565aef36";
        assert!(joins(Some(&format!("container:{id}")), id));
        assert!(joins(Some("container:94e9266cfba6"), id));
        assert!(!joins(Some("container:94e9"), id));
        assert!(!joins(Some("envrig-net"), id));
        assert!(!joins(None, id));
    }
}
