//! Drift of a container: `docker diff` (the container's changes against its image, which is
//! the baked layer when it was made from one), minus what provisioning changed.
//!
//! At the baseline the paths the container had changed by then (its steps' work, when they
//! ran in it) are kept inside it, in [`BASELINE`], each with its `stat` line; later, such a
//! path counts as drift only when its `stat` line differs. The diff itself is computed by the
//! daemon over the container's own layer: its cost grows with the changes, not the files.

use std::collections::{BTreeMap, BTreeSet};

use bollard::models::ChangeType;
use envrig_provider_api::drift::{self, ChangeKind, ENVRIG_DIR, Entry, PathChange};
use envrig_provider_api::{ExecRequest, OutputStream, Provider, ProviderError, Result};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::{DockerProvider, map_err};

/// Where the baseline lives inside the container.
pub const BASELINE: &str = "/var/lib/envrig/drift-baseline.json";

/// The baseline: the container's changes at that moment, with the `stat` line of each path
/// still there.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Baseline {
    changed: BTreeMap<String, String>,
    deleted: BTreeSet<String>,
}

const STAT_FORMAT: &str = "%n\t%F\t%s\t%Y\t%a";

impl DockerProvider {
    /// The container's changes against its image, parents of changes and envrig's own
    /// records left out.
    async fn changes(&self, id: &str) -> Result<Vec<PathChange>> {
        let list = self
            .docker
            .container_changes(id)
            .await
            .map_err(|e| map_err(format!("diff container {id}"), e))?
            .unwrap_or_default();
        let changes = list
            .into_iter()
            .map(|c| PathChange {
                path: c.path,
                kind: match c.kind {
                    ChangeType::_1 => ChangeKind::Added,
                    ChangeType::_2 => ChangeKind::Deleted,
                    _ => ChangeKind::Changed,
                },
            })
            .collect();
        let mut changes = drift::without_parents(changes);
        let own = format!("{ENVRIG_DIR}/");
        changes.retain(|c| c.path != ENVRIG_DIR && !c.path.starts_with(&own));
        // `/var/lib` is a parent of envrig's records only: it is not drift either.
        changes.retain(|c| {
            c.kind != ChangeKind::Changed
                || !own.starts_with(&format!("{}/", c.path.trim_end_matches('/')))
        });
        Ok(changes)
    }

    /// `stat` lines of `paths` inside the container (missing paths are left out).
    async fn stat(&self, id: &str, paths: &[String]) -> Result<BTreeMap<String, Entry>> {
        let mut out = String::new();
        // As few execs as the kernel's argument limit allows (an exec costs ~30 ms; 128 KiB
        // of paths per call stays far below ARG_MAX).
        let mut chunks: Vec<&[String]> = Vec::new();
        let (mut start, mut bytes) = (0, 0);
        for (i, p) in paths.iter().enumerate() {
            if bytes + p.len() + 1 > 128 * 1024 && i > start {
                chunks.push(&paths[start..i]);
                (start, bytes) = (i, 0);
            }
            bytes += p.len() + 1;
        }
        if start < paths.len() {
            chunks.push(&paths[start..]);
        }
        for chunk in chunks {
            let mut argv = vec![
                "stat".to_string(),
                "-c".into(),
                STAT_FORMAT.into(),
                "--".into(),
            ];
            argv.extend(chunk.iter().cloned());
            let req = ExecRequest {
                argv,
                ..ExecRequest::default()
            };
            let mut bytes = Vec::new();
            let mut sink = |s: OutputStream, b: &[u8]| {
                if s == OutputStream::Stdout {
                    bytes.extend_from_slice(b)
                }
            };
            self.exec(id, &req, &mut sink).await?;
            out.push_str(&String::from_utf8_lossy(&bytes));
        }
        Ok(drift::parse(&out))
    }

    /// Reads the baseline through the archive API (no exec); none yet: empty.
    async fn read_baseline(&self, id: &str) -> Result<Baseline> {
        let options = bollard::query_parameters::DownloadFromContainerOptions {
            path: BASELINE.to_string(),
        };
        let mut stream = self.docker.download_from_container(id, Some(options));
        let mut tar_bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(b) => tar_bytes.extend_from_slice(&b),
                Err(e) => {
                    return match map_err(format!("read {BASELINE} in {id}"), e) {
                        ProviderError::NotFound { .. } => Ok(Baseline::default()),
                        other => Err(other),
                    };
                }
            }
        }
        let mut archive = tar::Archive::new(&tar_bytes[..]);
        let entries = archive
            .entries()
            .map_err(|e| io_err(format!("read {BASELINE}"), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_err(format!("read {BASELINE}"), e))?;
            if entry.header().entry_type().is_file() {
                return Ok(serde_json::from_reader(entry).unwrap_or_default());
            }
        }
        Ok(Baseline::default())
    }

    pub(crate) async fn mark_baseline_impl(&self, id: &str) -> Result<()> {
        let changes = self.changes(id).await?;
        let mut base = Baseline::default();
        let present: Vec<String> = changes
            .iter()
            .filter(|c| c.kind != ChangeKind::Deleted)
            .map(|c| c.path.clone())
            .collect();
        let stats = if present.is_empty() {
            BTreeMap::new()
        } else {
            self.stat(id, &present).await?
        };
        for c in changes {
            if c.kind == ChangeKind::Deleted {
                base.deleted.insert(c.path);
            } else {
                let line = stats
                    .get(&c.path)
                    .map(|e| line_of(&c.path, e))
                    .unwrap_or_default();
                base.changed.insert(c.path, line);
            }
        }
        let body = serde_json::to_vec(&base).map_err(|e| io_err("write the baseline", e))?;
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, BASELINE.trim_start_matches('/'), &body[..])
            .map_err(|e| io_err("write the baseline", e))?;
        let tar = b
            .into_inner()
            .map_err(|e| io_err("write the baseline", e))?;
        self.upload(id, "/", tar).await
    }

    pub(crate) async fn drift_impl(&self, id: &str) -> Result<Vec<PathChange>> {
        let (changes, base) = tokio::try_join!(self.changes(id), self.read_baseline(id))?;
        let seen: BTreeSet<&str> = changes.iter().map(|c| c.path.as_str()).collect();
        let recheck: Vec<String> = changes
            .iter()
            .filter(|c| c.kind != ChangeKind::Deleted && base.changed.contains_key(&c.path))
            .map(|c| c.path.clone())
            .collect();
        let now = if recheck.is_empty() {
            BTreeMap::new()
        } else {
            self.stat(id, &recheck).await?
        };
        let mut out = Vec::new();
        for c in &changes {
            let kind = if let Some(line) = base.changed.get(&c.path) {
                // Changed by provisioning: drift only if it changed again.
                match c.kind {
                    ChangeKind::Deleted => Some(ChangeKind::Deleted),
                    _ => {
                        let then = drift::parse(line);
                        let now: BTreeMap<String, Entry> = now
                            .get(&c.path)
                            .map(|e| (c.path.clone(), e.clone()))
                            .into_iter()
                            .collect();
                        drift::compare(&then, &now).first().map(|d| match d.kind {
                            ChangeKind::Added => ChangeKind::Changed,
                            k => k,
                        })
                    }
                }
            } else if base.deleted.contains(&c.path) {
                // Deleted by provisioning: back again is an addition.
                (c.kind != ChangeKind::Deleted).then_some(ChangeKind::Added)
            } else {
                Some(c.kind)
            };
            if let Some(kind) = kind {
                out.push(PathChange {
                    path: c.path.clone(),
                    kind,
                });
            }
        }
        // What provisioning added or changed and is no longer in the diff is gone; what it
        // deleted and is no longer in the diff is back.
        for p in base.changed.keys() {
            if !seen.contains(p.as_str()) {
                out.push(PathChange {
                    path: p.clone(),
                    kind: ChangeKind::Deleted,
                });
            }
        }
        for p in &base.deleted {
            if !seen.contains(p.as_str()) {
                out.push(PathChange {
                    path: p.clone(),
                    kind: ChangeKind::Added,
                });
            }
        }
        out.sort();
        Ok(out)
    }
}

fn line_of(path: &str, e: &Entry) -> String {
    format!("{path}\t{}\t{}\t{}\t{}", e.kind, e.size, e.mtime, e.mode)
}

fn io_err(
    op: impl Into<String>,
    e: impl std::error::Error + Send + Sync + 'static,
) -> ProviderError {
    ProviderError::Engine {
        provider: super::NAME,
        op: op.into(),
        source: Box::new(e),
    }
}
