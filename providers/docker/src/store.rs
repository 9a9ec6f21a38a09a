//! Images as bases: a reference resolved to its identity, pulled with progress when missing,
//! a container packaged as an image, and the baked layers (images named by fingerprint).

use std::collections::{BTreeMap, HashMap};

use bollard::query_parameters::{CreateImageOptions, ListImagesOptions, RemoveImageOptions};
use envrig_provider_api::{
    BakedLayer, BaseIdentity, BaseInfo, ProviderError, PullProgress, Result, labels,
};
use futures_util::StreamExt;

use crate::DockerProvider;
use crate::error::map_err;

/// Whether `labels` meet one `label` filter: `KEY` (present) or `KEY=VALUE`.
fn has_label(labels: &HashMap<String, String>, filter: &str) -> bool {
    match filter.split_once('=') {
        Some((k, v)) => labels.get(k).is_some_and(|have| have == v),
        None => labels.contains_key(filter),
    }
}

impl DockerProvider {
    /// The images the daemon lists for `filters`, every `label` filter applying (AND).
    pub(crate) async fn images(
        &self,
        mut filters: HashMap<String, Vec<String>>,
    ) -> Result<Vec<bollard::models::ImageSummary>> {
        // Podman 4.3's image list matches nothing when given two `label` filters (measured:
        // `env=E` and `machine=M` list no image that has both): it is asked for the first,
        // and the others are applied here.
        let rest = match (self.flavor, filters.get_mut("label")) {
            (crate::Flavor::Podman, Some(l)) if l.len() > 1 => l.split_off(1),
            _ => Vec::new(),
        };
        let images = self
            .docker
            .list_images(Some(ListImagesOptions {
                filters: Some(filters),
                ..ListImagesOptions::default()
            }))
            .await
            .map_err(|e| map_err("list images", e))?;
        Ok(images
            .into_iter()
            .filter(|i| rest.iter().all(|f| has_label(&i.labels, f)))
            .collect())
    }

    pub(crate) async fn resolve_image(&self, reference: &str) -> Result<Option<BaseIdentity>> {
        match self.docker.inspect_image(reference).await {
            Ok(img) => {
                // The digest of the repository the reference names, when it was pulled.
                let repo = reference
                    .split('@')
                    .next()
                    .unwrap_or(reference)
                    .rsplit_once(':')
                    .filter(|(_, tag)| !tag.contains('/'))
                    .map(|(r, _)| r)
                    .unwrap_or(reference);
                let digests = img.repo_digests.unwrap_or_default();
                let digest = digests
                    .iter()
                    .find(|d| d.split('@').next() == Some(repo))
                    .cloned();
                Ok(Some(BaseIdentity {
                    id: img.id.unwrap_or_default(),
                    digest,
                    size: None,
                }))
            }
            Err(e) => match map_err("inspect image", e) {
                ProviderError::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    pub(crate) async fn ensure_image(
        &self,
        reference: &str,
        progress: &mut (dyn FnMut(PullProgress) + Send),
    ) -> Result<BaseInfo> {
        match self.docker.inspect_image(reference).await {
            Ok(img) => {
                return Ok(BaseInfo {
                    id: img.id.unwrap_or_default(),
                });
            }
            Err(e) => match map_err("inspect image", e) {
                ProviderError::NotFound { .. } => {}
                other => return Err(other),
            },
        }
        let options = CreateImageOptions {
            from_image: Some(reference.to_string()),
            ..CreateImageOptions::default()
        };
        let mut stream = self.docker.create_image(Some(options), None, None);
        // Per-layer byte counts, summed into one figure for the progress bar.
        let mut layers: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| map_err(format!("pull {reference}"), e))?;
            if let (Some(id), Some(d)) = (&info.id, &info.progress_detail)
                && let (Some(cur), Some(total)) = (d.current, d.total)
            {
                layers.insert(id.clone(), (cur.max(0) as u64, total.max(0) as u64));
                let (done, total) = layers
                    .values()
                    .fold((0, 0), |(a, b), (c, t)| (a + c, b + t));
                progress(PullProgress::Bytes { done, total });
                continue;
            }
            if let Some(status) = info.status {
                let line = match info.id {
                    Some(id) => format!("{id}: {status}"),
                    None => status,
                };
                progress(PullProgress::Status(line));
            }
        }
        let img = self
            .docker
            .inspect_image(reference)
            .await
            .map_err(|e| map_err(format!("inspect pulled image {reference}"), e))?;
        Ok(BaseInfo {
            id: img.id.unwrap_or_default(),
        })
    }

    pub(crate) async fn package_image(
        &self,
        id: &str,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<BaseInfo> {
        let (repo, tag) = match name.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r.to_string(), t.to_string()),
            _ => (name.to_string(), "latest".to_string()),
        };
        // A commit keeps the container's labels, and containers inherit their image's: blank
        // out every envrig label so a machine made from this box belongs to nobody but the
        // environment that creates it.
        let info = self.inspect_machine(id).await?;
        let mut labels_out: BTreeMap<String, String> = info
            .labels
            .keys()
            .filter(|k| k.starts_with(labels::PREFIX))
            .map(|k| (k.clone(), String::new()))
            .collect();
        labels_out.extend(labels.clone());
        let committed = self
            .commit(
                id,
                (&repo, &tag),
                &labels_out,
                format!("commit container {id}"),
            )
            .await?;
        Ok(BaseInfo { id: committed })
    }

    pub(crate) async fn baked_images(&self) -> Result<Vec<BakedLayer>> {
        let filters = HashMap::from([("label".to_string(), vec![labels::BAKED.to_string()])]);
        Ok(self
            .images(filters)
            .await?
            .into_iter()
            .filter_map(|i| {
                let name = i
                    .repo_tags
                    .iter()
                    .find(|t| t.starts_with(labels::BAKED_NAME_PREFIX))?
                    .trim_end_matches(":latest")
                    .to_string();
                let label = |k: &str| i.labels.get(k).cloned().unwrap_or_default();
                Some(BakedLayer {
                    name,
                    fingerprint: label(labels::BAKED),
                    created: label(labels::CREATED),
                })
            })
            .collect())
    }

    pub(crate) async fn remove_baked_image(&self, name: &str) -> Result<()> {
        self.docker
            .remove_image(name, None::<RemoveImageOptions>, None)
            .await
            .map(|_| ())
            .map_err(|e| map_err(format!("remove image {name}"), e))
    }
}
