//! The team's layer cache in a registry, for VMs: a baked layer (a folder of the box store:
//! its qcow2 disk over the box, maybe kernel files, a warm layer's memory and listing) goes
//! to an OCI registry as an artifact of its own media type, with `oci-client`:
//!
//! - one blob per file (`application/vnd.envrig.libvirt.layer.file.v1`, titled by its file
//!   name), the disk written with no backing file (the pusher's path means nothing
//!   elsewhere);
//! - a config blob (`application/vnd.envrig.libvirt.layer.config.v1+json`): the layer's
//!   labels and the sha256 of the box it lies over.
//!
//! A pull takes the layer only over the same box: the machine's own box must have that
//! sha256 here, else the layer is not used (and said). Every blob is checked against its
//! digest as it arrives (oci-client), file names are taken from a fixed list (never a
//! path), the disk must be a qcow2 naming no backing or data file, and is then set over
//! this host's copy of the box. Credentials come from `registry.rs` of the api crate;
//! registries on loopback are spoken to over HTTP, others over HTTPS.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use envrig_provider_api::registry::{credentials, registry_of};
use envrig_provider_api::{ProviderError, Result, labels};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{OciDescriptor, OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};

use crate::disk::{backing_of, qemu_img};
use crate::error::io;
use crate::{LibvirtProvider, NAME, boxes, warm};

const ARTIFACT_TYPE: &str = "application/vnd.envrig.libvirt.layer.v1";
const CONFIG_TYPE: &str = "application/vnd.envrig.libvirt.layer.config.v1+json";
const FILE_TYPE: &str = "application/vnd.envrig.libvirt.layer.file.v1";
const TITLE: &str = "org.opencontainers.image.title";

/// The files a layer may hold: the only names a pull writes.
const FILES: [&str; 7] = [
    "disk.qcow2",
    "vmlinuz",
    "initrd.img",
    "cmdline",
    warm::MEMORY,
    warm::MEMORY_WHY,
    warm::LAYER_BASELINE,
];

/// What the config blob says of a layer.
#[derive(Debug, Serialize, Deserialize)]
struct LayerConfig {
    labels: BTreeMap<String, String>,
    /// The box the disk lies over.
    box_sha256: String,
}

fn engine(op: &str, e: impl std::fmt::Display) -> ProviderError {
    ProviderError::Engine {
        provider: NAME,
        op: op.to_string(),
        source: e.to_string().into(),
    }
}

fn refused(message: String) -> ProviderError {
    ProviderError::Refused { message }
}

/// A client for the registry of `reference`, and its credentials.
fn client(reference: &str) -> Result<(Client, Reference, RegistryAuth)> {
    // reqwest's TLS needs a process-wide crypto provider: ring, as russh uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let image: Reference = reference
        .parse()
        .map_err(|e| refused(format!("`{reference}` is not a registry reference: {e}")))?;
    let registry = registry_of(reference).to_string();
    let host = registry.rsplit_once(':').map_or(registry.as_str(), |h| h.0);
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback());
    let config = ClientConfig {
        protocol: if loopback {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        ..ClientConfig::default()
    };
    let auth = match credentials(&registry) {
        Some(c) => RegistryAuth::Basic(c.username, c.password),
        None => RegistryAuth::Anonymous,
    };
    Ok((Client::new(config), image, auth))
}

/// The fingerprint (16 hex digits) a layer's name carries.
fn fingerprint_of(name: &str) -> &str {
    name.strip_prefix("envrig-baked-")
        .and_then(|r| r.split('-').next())
        .unwrap_or("")
}

impl LibvirtProvider {
    pub(crate) async fn push_layer(&self, name: &str, reference: &str) -> Result<()> {
        let dir = self.boxes.join(name);
        let labels_text = std::fs::read(dir.join("labels.json"))
            .map_err(|e| io(format!("read the labels of layer {name}"), e))?;
        let layer_labels: BTreeMap<String, String> = serde_json::from_slice(&labels_text)
            .map_err(|e| engine("read the layer's labels", e))?;
        if !layer_labels.contains_key(labels::BAKED) {
            return Err(refused(format!("{name} is a box, not a baked layer")));
        }
        let disk = dir.join("disk.qcow2");
        let backing = backing_of(&disk)
            .await?
            .ok_or_else(|| refused(format!("layer {name} lies over no box")))?;
        let box_dir = backing.parent().unwrap_or(Path::new("/")).to_path_buf();
        let box_sha256 = self
            .resolve_box(&box_dir.display().to_string())
            .await?
            .map(|b| b.id.trim_start_matches("sha256:").to_string())
            .ok_or_else(|| refused(format!("the box under layer {name} is gone")))?;
        // The disk goes without its backing file's name (a path of this host).
        let work = self
            .images
            .join(envrig_provider_api::work::unique_name(".push"));
        std::fs::create_dir_all(&work).map_err(|e| io("make a work folder", e))?;
        let result = self
            .push_files(
                &dir,
                &work,
                reference,
                LayerConfig {
                    labels: layer_labels,
                    box_sha256,
                },
            )
            .await;
        let _ = std::fs::remove_dir_all(&work);
        result
    }

    async fn push_files(
        &self,
        dir: &Path,
        work: &Path,
        reference: &str,
        config: LayerConfig,
    ) -> Result<()> {
        let bare = work.join("disk.qcow2");
        std::fs::copy(dir.join("disk.qcow2"), &bare).map_err(|e| io("copy the layer's disk", e))?;
        let args: [&std::ffi::OsStr; 5] = [
            "rebase".as_ref(),
            "-u".as_ref(),
            "-b".as_ref(),
            "".as_ref(),
            bare.as_os_str(),
        ];
        qemu_img("take the box's path off the layer's disk", &args).await?;
        let (c, image, auth) = client(reference)?;
        c.store_auth_if_needed(image.resolve_registry(), &auth)
            .await;
        let mut layers = Vec::new();
        for f in FILES {
            let path = if f == "disk.qcow2" {
                bare.clone()
            } else {
                dir.join(f)
            };
            if !path.is_file() {
                continue;
            }
            let file = tokio::fs::File::open(&path)
                .await
                .map_err(|e| io(format!("open {f}"), e))?;
            let stream = futures_util::TryStreamExt::map_err(
                tokio_util::io::ReaderStream::with_capacity(file, 1 << 20),
                oci_client::errors::OciDistributionError::IoError,
            );
            let pushed = c
                .push_blob_stream_chunked(&image, stream)
                .await
                .map_err(|e| engine(&format!("push {f} to {reference}"), e))?;
            layers.push(OciDescriptor {
                media_type: FILE_TYPE.to_string(),
                digest: pushed.blob_digest,
                size: pushed.size as i64,
                urls: None,
                artifact_type: None,
                annotations: Some(BTreeMap::from([(TITLE.to_string(), f.to_string())])),
            });
        }
        let config_bytes =
            serde_json::to_vec(&config).map_err(|e| engine("write the config", e))?;
        let config_digest = format!(
            "sha256:{}",
            envrig_provider_api::hash::sha256_hex(&config_bytes)
        );
        c.push_blob(&image, config_bytes.clone(), &config_digest)
            .await
            .map_err(|e| engine(&format!("push the layer's config to {reference}"), e))?;
        let manifest = OciImageManifest {
            schema_version: 2,
            media_type: Some("application/vnd.oci.image.manifest.v1+json".to_string()),
            config: OciDescriptor {
                media_type: CONFIG_TYPE.to_string(),
                digest: config_digest,
                size: config_bytes.len() as i64,
                urls: None,
                artifact_type: None,
                annotations: None,
            },
            layers,
            subject: None,
            artifact_type: Some(ARTIFACT_TYPE.to_string()),
            annotations: None,
        };
        c.push_manifest(&image, &OciManifest::Image(manifest))
            .await
            .map_err(|e| engine(&format!("push the manifest of {reference}"), e))?;
        Ok(())
    }

    pub(crate) async fn pull_layer(&self, reference: &str, name: &str, base: &str) -> Result<bool> {
        let (c, image, auth) = client(reference)?;
        let manifest = match c.pull_manifest(&image, &auth).await {
            Ok((OciManifest::Image(m), _)) => m,
            Ok((OciManifest::ImageIndex(_), _)) => {
                return Err(refused(format!("{reference} is an index, not a layer")));
            }
            Err(e) => {
                let said = e.to_string().to_ascii_lowercase();
                if said.contains("not found") || said.contains("unknown") {
                    return Ok(false);
                }
                return Err(engine(&format!("pull the manifest of {reference}"), e));
            }
        };
        if manifest.config.media_type != CONFIG_TYPE || manifest.config.size > 1 << 20 {
            return Err(refused(format!(
                "{reference} is not an envrig libvirt layer (its config is {})",
                manifest.config.media_type
            )));
        }
        let mut config_bytes = Vec::new();
        c.pull_blob(&image, &manifest.config, &mut config_bytes)
            .await
            .map_err(|e| engine(&format!("pull the config of {reference}"), e))?;
        let config: LayerConfig = serde_json::from_slice(&config_bytes)
            .map_err(|e| refused(format!("{reference}: its config cannot be read: {e}")))?;
        let baked = config
            .labels
            .get(labels::BAKED)
            .map(String::as_str)
            .unwrap_or("");
        let want = fingerprint_of(name);
        if want.is_empty() || !baked.starts_with(want) {
            return Err(refused(format!(
                "{reference} is not the baked layer {name} (it says fingerprint {baked:?})"
            )));
        }
        // Only over the same box: this machine's box here must be the one it was made over.
        let here = self
            .resolve_box(base)
            .await?
            .map(|b| b.id.trim_start_matches("sha256:").to_string());
        if here.as_deref() != Some(config.box_sha256.as_str()) {
            return Err(refused(format!(
                "{reference} lies over box sha256:{}, which this machine's box `{base}` is not here ({})",
                &config.box_sha256[..config.box_sha256.len().min(12)],
                here.map_or("missing".to_string(), |h| format!("sha256:{}", &h[..12]))
            )));
        }
        let box_dir = self.box_dir(base).ok_or_else(|| ProviderError::NotFound {
            what: format!("box `{base}`"),
        })?;
        let staged = self.staged_box(&box_dir)?;
        let work = self
            .boxes
            .join(envrig_provider_api::work::unique_name(&format!(
                ".pull-{name}"
            )));
        std::fs::create_dir_all(&work).map_err(|e| io("make a work folder", e))?;
        let result = self.pull_files(&c, &image, &manifest, &work, &staged).await;
        let result = match result {
            Ok(()) => {
                let (store, name2, work2, labels2) = (
                    self.boxes.clone(),
                    name.to_string(),
                    work.clone(),
                    config.labels.clone(),
                );
                tokio::task::spawn_blocking(move || boxes::adopt(&store, &name2, &work2, &labels2))
                    .await
                    .map_err(|e| io("store the layer", std::io::Error::other(e)))?
                    .map_err(|e| io("store the layer", e))
                    .map(|_| true)
            }
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_dir_all(&work);
        result
    }

    /// Each file of `manifest` into `work`, checked; the disk set over `staged`'s.
    async fn pull_files(
        &self,
        c: &Client,
        image: &Reference,
        manifest: &OciImageManifest,
        work: &Path,
        staged: &Path,
    ) -> Result<()> {
        let mut seen = Vec::new();
        for d in &manifest.layers {
            let title = d
                .annotations
                .as_ref()
                .and_then(|a| a.get(TITLE))
                .map(String::as_str)
                .unwrap_or("");
            let Some(f) = FILES.iter().find(|f| **f == title) else {
                return Err(refused(format!(
                    "the layer holds a file envrig does not know: {title:?}"
                )));
            };
            if d.media_type != FILE_TYPE || seen.contains(f) {
                return Err(refused(format!(
                    "the layer's {f} is not as envrig writes it"
                )));
            }
            seen.push(*f);
            let path: PathBuf = work.join(f);
            let mut out = tokio::fs::File::create(&path)
                .await
                .map_err(|e| io(format!("write {f}"), e))?;
            // oci-client checks the bytes against the descriptor's digest as they come.
            c.pull_blob(image, d, &mut out)
                .await
                .map_err(|e| refused(format!("{f} of the layer cannot be taken: {e}")))?;
            tokio::io::AsyncWriteExt::flush(&mut out)
                .await
                .map_err(|e| io(format!("write {f}"), e))?;
        }
        let disk = work.join("disk.qcow2");
        if !seen.contains(&"disk.qcow2") {
            return Err(refused("the layer holds no disk".to_string()));
        }
        if let Err(why) = crate::qcow2::check_file(&disk).map_err(|e| io("read the disk", e))? {
            return Err(refused(format!("the layer's disk is refused: {why}")));
        }
        let over = staged.join("disk.qcow2");
        let args: [&std::ffi::OsStr; 7] = [
            "rebase".as_ref(),
            "-u".as_ref(),
            "-b".as_ref(),
            over.as_os_str(),
            "-F".as_ref(),
            "qcow2".as_ref(),
            disk.as_os_str(),
        ];
        qemu_img("set the layer's disk over the box", &args).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layers_fingerprint_is_read_from_its_name() {
        assert_eq!(
            fingerprint_of("envrig-baked-0123456789abcdef"),
            "0123456789abcdef"
        );
        assert_eq!(
            fingerprint_of("envrig-baked-0123456789abcdef-wn"),
            "0123456789abcdef"
        );
        assert_eq!(fingerprint_of("debian"), "");
    }
}
