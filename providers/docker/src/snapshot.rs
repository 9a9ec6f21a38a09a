//! Snapshots: a container committed to an image tagged `envrig-snapshot/RESOURCE:NAME`, with
//! the spec and state it was taken with in labels; listed, restored, deleted, exported
//! (`docker save`) and imported (checked first, then loaded and relabelled for the importing
//! environment).

use std::collections::{BTreeMap, HashMap};

use bollard::models::{ContainerConfig, ContainerCreateBody};
use bollard::query_parameters::{
    CommitContainerOptions, CreateContainerOptions, ImportImageOptions, RemoveImageOptions,
};
use envrig_provider_api::{
    MachineInfo, MachineSpec, ProviderError, Result, Selector, Snapshot, labels,
};
use futures_util::StreamExt;

use crate::error::{engine_err, map_err};
use crate::{DockerProvider, KEEPALIVE, export_check, label_filters};

impl DockerProvider {
    pub(crate) async fn save_snapshot(
        &self,
        id: &str,
        name: &str,
        spec: &MachineSpec,
        labels: &BTreeMap<String, String>,
        running: bool,
    ) -> Result<Snapshot> {
        let created = labels.get(labels::CREATED).cloned().unwrap_or_default();
        let mut all = labels.clone();
        all.insert(labels::SNAPSHOT.to_string(), name.to_string());
        all.insert(SNAP_RUNNING.to_string(), running.to_string());
        all.insert(SNAP_SPEC.to_string(), encode_spec(spec)?);
        let tag = snapshot_tag(&spec.resource_name, name);
        let (repo, tag) = tag.rsplit_once(':').unwrap_or((tag.as_str(), name));
        let committed = self
            .commit(id, (repo, tag), &all, format!("commit container {id}"))
            .await?;
        Ok(Snapshot {
            id: committed,
            name: name.to_string(),
            machine: spec.machine.clone(),
            created,
            running,
            spec: spec.clone(),
            labels: all,
        })
    }

    pub(crate) async fn list_snapshots(&self, selector: &Selector) -> Result<Vec<Snapshot>> {
        let selector = selector.clone().has(labels::SNAPSHOT);
        let mut filters = label_filters(&selector);
        filters.insert("dangling".to_string(), vec!["false".to_string()]);
        Ok(self
            .images(filters)
            .await?
            .into_iter()
            .filter_map(|i| snapshot_from_labels(Some(i.id), i.labels.into_iter().collect()))
            .collect())
    }

    pub(crate) async fn restore_snapshot(
        &self,
        snap: &Snapshot,
        current: Option<&str>,
        spec: &MachineSpec,
    ) -> Result<MachineInfo> {
        if let Some(id) = current {
            self.remove_machine(id).await?;
        }
        let mut spec = spec.clone();
        spec.base = snap.id.clone();
        let info = self.create_machine(&spec).await?;
        if snap.running {
            self.start_machine(&info.id).await?;
        }
        self.inspect_machine(&info.id).await
    }

    pub(crate) async fn delete_snapshot(&self, snap: &Snapshot) -> Result<()> {
        // Snapshots are found by tag (dangling images are not listed): removing the tag
        // is deleting the snapshot. The image itself goes when nothing uses it any more
        // (a restored container may run on it; `purge` collects what is left).
        let tag = snapshot_tag(&snap.spec.resource_name, &snap.name);
        let options = RemoveImageOptions {
            force: true,
            ..RemoveImageOptions::default()
        };
        match self.docker.remove_image(&tag, Some(options), None).await {
            Ok(_) => Ok(()),
            Err(e) => match map_err(format!("remove snapshot {tag}"), e) {
                ProviderError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    pub(crate) async fn export_snapshot(
        &self,
        snap: &Snapshot,
        dest: &std::path::Path,
    ) -> Result<u64> {
        use tokio::io::AsyncWriteExt as _;
        let io = |op: &str, e: std::io::Error| engine_err(op, e);
        let mut file = tokio::fs::File::create(dest)
            .await
            .map_err(|e| io("create the export file", e))?;
        let mut stream = self.docker.export_image(&snap.id);
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| map_err(format!("save image {}", snap.id), e))?;
            size += chunk.len() as u64;
            file.write_all(&chunk)
                .await
                .map_err(|e| io("write the export file", e))?;
        }
        file.flush()
            .await
            .map_err(|e| io("write the export file", e))?;
        Ok(size)
    }

    pub(crate) async fn check_image_archive(&self, src: &std::path::Path) -> Result<()> {
        let src = src.to_path_buf();
        envrig_provider_api::export::check_archive(
            move || export_check::check(&src),
            "image archive",
            "image archive",
            |e| engine_err("read the image archive", e),
        )
        .await
    }

    pub(crate) async fn import_snapshot(
        &self,
        src: &std::path::Path,
        snap: &Snapshot,
        labels: &BTreeMap<String, String>,
    ) -> Result<Snapshot> {
        // Checked here too, whatever the caller did: `docker load` would retag host images.
        self.check_image_archive(src).await?;
        let file = tokio::fs::File::open(src)
            .await
            .map_err(|e| engine_err("open the image archive", e))?;
        // Streamed from the file: an image is never held in memory whole.
        let body = futures_util::stream::unfold(file, |mut f| async move {
            use tokio::io::AsyncReadExt as _;
            let mut buf = vec![0u8; 1 << 20];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(buf), f))
                }
                Err(e) => Some((Err(e), f)),
            }
        })
        .map(|r: std::io::Result<Vec<u8>>| r.map(Into::into));
        let mut stream = self.docker.import_image(
            ImportImageOptions::default(),
            bollard::body_try_stream(body),
            None,
        );
        let mut loaded = None;
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| map_err("load image", e))?;
            if let Some(s) = info.stream.as_deref()
                && let Some(id) = s.trim().strip_prefix("Loaded image ID: ")
            {
                loaded = Some(id.trim().to_string());
            }
            if let Some(s) = info.stream.as_deref()
                && let Some(r) = s.trim().strip_prefix("Loaded image: ")
            {
                loaded.get_or_insert_with(|| r.trim().to_string());
            }
        }
        let loaded = loaded.unwrap_or_else(|| snap.id.clone());
        // The loaded image carries the exporter's labels and no tag: until it is relabelled,
        // a tag naming this process keeps it findable, so what a killed import loaded is
        // removed by `gc` (`sweep_work`).
        let guard = envrig_provider_api::work::name(&snap.machine);
        let _ = self
            .docker
            .tag_image(
                &loaded,
                Some(bollard::query_parameters::TagImageOptions {
                    repo: Some(IMPORT_REPO.to_string()),
                    tag: Some(guard.clone()),
                }),
            )
            .await;
        // Re-label for this environment: a commit of a throwaway container is the way Docker
        // changes labels; instead, tag the image and keep its labels, recording the new
        // environment in a derived image.
        let img = self
            .docker
            .inspect_image(&loaded)
            .await
            .map_err(|e| map_err(format!("inspect loaded image {loaded}"), e))?;
        let mut all: BTreeMap<String, String> = img
            .config
            .and_then(|c| c.labels)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| {
                // The old environment's labels are blanked, the snapshot's own kept.
                let keep = k == labels::SNAPSHOT || k == SNAP_RUNNING || k == SNAP_SPEC;
                let v = if k.starts_with(labels::PREFIX) && !keep {
                    String::new()
                } else {
                    v
                };
                (k, v)
            })
            .collect();
        all.extend(labels.clone());
        // Named and tagged as the importing environment's snapshot of its own machine (the
        // exporter's tag would clash with another import of the same archive).
        all.insert(labels::SNAPSHOT.to_string(), snap.name.clone());
        all.insert(SNAP_SPEC.to_string(), encode_spec(&snap.spec)?);
        let relabelled = self.relabel(&img.id.unwrap_or(loaded), &all).await;
        // Only the tag goes: the image is the relabelled one's parent.
        let _ = self
            .docker
            .remove_image(
                &format!("{IMPORT_REPO}:{guard}"),
                Some(RemoveImageOptions {
                    noprune: true,
                    ..RemoveImageOptions::default()
                }),
                None,
            )
            .await;
        let relabelled = relabelled?;
        snapshot_from_labels(Some(relabelled), all).ok_or_else(|| ProviderError::Conflict {
            message: "the loaded image is not an envrig snapshot".into(),
        })
    }

    /// Images that a killed `import` loaded and did not relabel (their guard tag names a
    /// process that is gone).
    pub(crate) async fn sweep_imports(&self) -> Result<Vec<String>> {
        let filters = HashMap::from([("reference".to_string(), vec![format!("{IMPORT_REPO}:*")])]);
        let mut out = Vec::new();
        for img in self.images(filters).await? {
            for t in &img.repo_tags {
                let Some(tag) = t.strip_prefix(&format!("{IMPORT_REPO}:")) else {
                    continue;
                };
                if envrig_provider_api::work::abandoned(tag)
                    && self
                        .docker
                        .remove_image(t, None::<RemoveImageOptions>, None)
                        .await
                        .is_ok()
                {
                    out.push(format!("image {t}"));
                }
            }
        }
        Ok(out)
    }
}

/// The repository of the tags that keep an image being imported (see `snapshot_import`).
const IMPORT_REPO: &str = "envrig-import";

/// The image tag of a snapshot: `envrig-snapshot/RESOURCE:NAME`.
fn snapshot_tag(resource_name: &str, name: &str) -> String {
    format!("envrig-snapshot/{resource_name}:{name}")
}

/// Labels on a snapshot image that only the Docker provider reads.
const SNAP_RUNNING: &str = "dev.envrig.snapshot.running";
const SNAP_SPEC: &str = "dev.envrig.snapshot.spec";

/// `spec` as the JSON of [`SNAP_SPEC`].
fn encode_spec(spec: &MachineSpec) -> Result<String> {
    serde_json::to_string(spec).map_err(|e| engine_err("encode the snapshot's spec", e))
}

fn snapshot_from_labels(id: Option<String>, labels: BTreeMap<String, String>) -> Option<Snapshot> {
    let spec: MachineSpec = serde_json::from_str(labels.get(SNAP_SPEC)?).ok()?;
    Some(Snapshot {
        id: id?,
        name: labels.get(labels::SNAPSHOT)?.clone(),
        machine: spec.machine.clone(),
        created: labels.get(labels::CREATED).cloned().unwrap_or_default(),
        running: labels.get(SNAP_RUNNING).is_some_and(|r| r == "true"),
        spec,
        labels,
    })
}

/// Labels as `LABEL` lines of a commit's `changes`, as Podman 4.3 reads them: the text
/// after `KEY=` with one pair of double quotes taken off, nothing unescaped (measured: a value
/// of JSON arrives whole). A line cannot hold a line break: such a label is refused.
fn label_changes(labels: &BTreeMap<String, String>) -> Result<String> {
    let mut lines = Vec::with_capacity(labels.len());
    for (k, v) in labels {
        if [k, v].iter().any(|s| s.contains(['\n', '\r'])) || k.contains(['=', ' ', '"']) {
            return Err(ProviderError::Refused {
                message: format!(
                    "label {k:?} cannot be written by a Podman commit (a line break, or a key with `=`, a space or a quote)"
                ),
            });
        }
        lines.push(format!("LABEL {k}=\"{v}\""));
    }
    Ok(lines.join("\n"))
}

impl DockerProvider {
    /// A new image with `labels` on top of `image` (Docker cannot change an image's labels in
    /// place): a container is created from it, never started, committed and removed.
    async fn relabel(&self, image: &str, labels: &BTreeMap<String, String>) -> Result<String> {
        // The helper is a build, never a machine: if envrig is killed before it goes, `up`
        // leaves it aside and `destroy` and `gc` remove it. The image gets the mark blanked
        // (a commit merges the container's labels in; an empty label counts as none).
        let mut helper = labels.clone();
        helper.insert(labels::CANDIDATE.to_string(), "relabel".to_string());
        let mut labels = labels.clone();
        labels.insert(labels::CANDIDATE.to_string(), String::new());
        let labels = &labels;
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            entrypoint: Some(KEEPALIVE.iter().map(|s| s.to_string()).collect()),
            labels: Some(helper.into_iter().collect()),
            ..ContainerCreateBody::default()
        };
        let c = self
            .docker
            .create_container(None::<CreateContainerOptions>, body)
            .await
            .map_err(|e| map_err(format!("create a container from {image}"), e))?;
        let snap = labels
            .get(labels::SNAPSHOT)
            .cloned()
            .unwrap_or_else(|| "imported".into());
        let spec_name = labels
            .get(SNAP_SPEC)
            .and_then(|s| serde_json::from_str::<MachineSpec>(s).ok())
            .map(|s| s.resource_name)
            .unwrap_or_else(|| "imported".into());
        let committed = self
            .commit(
                &c.id,
                (&format!("envrig-snapshot/{spec_name}"), &snap),
                labels,
                format!("commit a relabelled {image}"),
            )
            .await;
        self.remove_machine(&c.id).await?;
        committed
    }

    /// Commits container `id` to the image `repo:tag` with `labels` (a commit merges the
    /// container's own labels in): the new image's id. Snapshots, packages and relabelled
    /// imports are all made this way. `op` names the operation when it fails.
    pub(crate) async fn commit(
        &self,
        id: &str,
        (repo, tag): (&str, &str),
        labels: &BTreeMap<String, String>,
        op: String,
    ) -> Result<String> {
        // Docker takes the labels in the body's config; Podman's compatible service reads
        // no body, only `changes` (Dockerfile `LABEL` lines).
        let (config, changes) = match self.flavor {
            crate::Flavor::Docker => (
                ContainerConfig {
                    labels: Some(labels.clone().into_iter().collect()),
                    ..ContainerConfig::default()
                },
                None,
            ),
            crate::Flavor::Podman => (ContainerConfig::default(), Some(label_changes(labels)?)),
        };
        let options = |pause| CommitContainerOptions {
            container: Some(id.to_string()),
            repo: Some(repo.to_string()),
            tag: Some(tag.to_string()),
            // Frozen while committed (a machine the caller already paused stays paused).
            pause,
            changes: changes.clone(),
            ..CommitContainerOptions::default()
        };
        let committed = match self
            .docker
            .commit_container(options(true), config.clone())
            .await
        {
            // An engine that cannot freeze a container (rootless Podman on cgroup v1)
            // commits it as it runs.
            Err(e) if crate::error::cannot_pause(&e).is_some() => {
                tracing::info!("{op}: the engine cannot pause containers; committed running");
                self.docker.commit_container(options(false), config).await
            }
            other => other,
        }
        .map_err(|e| map_err(op, e))?;
        Ok(committed.id)
    }
}
