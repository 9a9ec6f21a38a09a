//! The team's layer cache in a registry, for VMs: a baked layer (a folder of the box store:
//! its qcow2 disk over the box, maybe kernel files, a warm layer's memory and listing) goes
//! to an OCI registry as an artifact of its own media type:
//!
//! - one blob per file (`application/vnd.envrig.libvirt.layer.file.v1`, titled by its file
//!   name), the disk written with no backing file (the pusher's path means nothing
//!   elsewhere);
//! - a config blob (`application/vnd.envrig.libvirt.layer.config.v1+json`): the layer's
//!   labels and the sha256 of the box it lies over.
//!
//! A pull takes the layer only over the same box: the machine's own box must have that
//! sha256 here, else the layer is not used (and said). Every blob is checked against its
//! digest and size as it arrives, file names are taken from a fixed list (never a path), the
//! disk must be a qcow2 naming no backing or data file, and is then set over this host's
//! copy of the box. The transfer is the api crate's `oci` (credentials, HTTP on loopback
//! only, streaming).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use envrig_provider_api::oci::{Artifact, title};
use envrig_provider_api::{ProviderError, Result, labels};
use oci_client::manifest::OciImageManifest;
use serde::{Deserialize, Serialize};

use crate::disk::{backing_of, qemu_img};
use crate::error::io;
use crate::{LibvirtProvider, NAME, boxes, warm};

const ARTIFACT_TYPE: &str = "application/vnd.envrig.libvirt.layer.v1";
const CONFIG_TYPE: &str = "application/vnd.envrig.libvirt.layer.config.v1+json";
const FILE_TYPE: &str = "application/vnd.envrig.libvirt.layer.file.v1";

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
        let config = LayerConfig {
            labels: layer_labels,
            box_sha256,
        };
        let result = self.push_files(&dir, &work, reference, config).await;
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
        let artifact = Artifact::open(reference).await.map_err(refused)?;
        let mut blobs = Vec::new();
        for f in FILES {
            let path = if f == "disk.qcow2" {
                bare.clone()
            } else {
                dir.join(f)
            };
            if path.is_file() {
                let d = artifact
                    .push_file(&path, FILE_TYPE, f, None)
                    .await
                    .map_err(|e| engine("push the layer", e))?;
                blobs.push(d);
            }
        }
        let config = serde_json::to_vec(&config).map_err(|e| engine("write the config", e))?;
        artifact
            .push_manifest(ARTIFACT_TYPE, CONFIG_TYPE, config, blobs)
            .await
            .map_err(|e| engine("push the layer", e))
    }

    pub(crate) async fn pull_layer(&self, reference: &str, name: &str, base: &str) -> Result<bool> {
        let artifact = Artifact::open(reference).await.map_err(refused)?;
        let Some(manifest) = artifact
            .manifest()
            .await
            .map_err(|e| engine("read the cache", e))?
        else {
            return Ok(false);
        };
        if manifest.config.media_type != CONFIG_TYPE {
            return Err(refused(format!(
                "{reference} is not an envrig libvirt layer (its config is {})",
                manifest.config.media_type
            )));
        }
        let config_bytes = artifact
            .pull_small(&manifest.config, 1 << 20)
            .await
            .map_err(refused)?;
        let config: LayerConfig = serde_json::from_slice(&config_bytes)
            .map_err(|e| refused(format!("{reference}: its config cannot be read: {e}")))?;
        if config.box_sha256.len() != 64
            || !config.box_sha256.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(refused(format!(
                "{reference}: its config names no box sha256 (64 hex digits)"
            )));
        }
        let baked = config
            .labels
            .get(labels::BAKED)
            .map(String::as_str)
            .unwrap_or("");
        let want = labels::baked_fingerprint(name);
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
                here.map_or("missing".to_string(), |h| format!(
                    "sha256:{}",
                    &h[..h.len().min(12)]
                ))
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
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&work)
                .map_err(|e| io("make a work folder", e))?;
        }
        let result = match self.pull_files(&artifact, &manifest, &work, &staged).await {
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
        artifact: &Artifact,
        manifest: &OciImageManifest,
        work: &Path,
        staged: &Path,
    ) -> Result<()> {
        let mut seen = Vec::new();
        for d in &manifest.layers {
            let title = title(d);
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
            // Checked against the descriptor's digest and size as it comes.
            artifact
                .pull_to(d, &path, None)
                .await
                .map_err(|e| refused(format!("the layer's {f} cannot be taken: {e}")))?;
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
