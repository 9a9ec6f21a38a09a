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
use envrig_provider_api::{ExecRequest, OutputStream, Provider, Result};
use serde::{Deserialize, Serialize};

use crate::DockerProvider;
use crate::error::{engine_err, map_err};

/// Where the baseline lives inside the container: a line `D<TAB>path` for each path deleted
/// against the image, then the `stat` line ([`STAT_FORMAT`]) of each path added or changed.
pub const BASELINE: &str = "/var/lib/envrig/drift-baseline.tsv";

/// The baseline's earlier form (JSON), still read in containers that have it.
const BASELINE_JSON: &str = "/var/lib/envrig/drift-baseline.json";

/// Writes [`BASELINE`] inside the container:
/// `sh -c WRITE_BASELINE sh STAT_FORMAT N DELETED(N)... PRESENT...`.
const WRITE_BASELINE: &str = r#"fmt=$1; n=$2; shift 2; f=/var/lib/envrig/drift-baseline.tsv
mkdir -p /var/lib/envrig || exit 1
{ while [ "$n" -gt 0 ]; do printf 'D\t%s\n' "$1"; shift; n=$((n-1)); done
  [ $# -eq 0 ] || stat -c "$fmt" -- "$@"; } > "$f.tmp"
mv -f "$f.tmp" "$f""#;

/// The baseline: the container's changes at that moment, with the `stat` line of each path
/// still there.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Baseline {
    changed: BTreeMap<String, String>,
    deleted: BTreeSet<String>,
}

impl Baseline {
    fn parse(text: &str) -> Baseline {
        let mut base = Baseline::default();
        for line in text.lines() {
            if let Some(path) = line.strip_prefix("D\t") {
                base.deleted.insert(path.to_string());
            } else if let Some((path, _)) = line.split_once('\t') {
                base.changed.insert(path.to_string(), line.to_string());
            }
        }
        base
    }
}

const STAT_FORMAT: &str = "%n\t%F\t%s\t%Y\t%a";

/// What the engine itself makes in a container's own layer: the mount point of Docker's
/// init (machines run with `init` unless it is turned off).
/// (`/usr/sbin` in images whose `/sbin` is a link to it).
const ENGINE_PATHS: &[&str] = &["/sbin/docker-init", "/usr/sbin/docker-init"];

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
        let changes: Vec<PathChange> = changes;
        // The engine's own mount points (and the directory their making changed) are no
        // one's work.
        let engine_dirs: Vec<&str> = ENGINE_PATHS
            .iter()
            .filter(|p| changes.iter().any(|c| c.path == **p))
            .filter_map(|p| p.rsplit_once('/').map(|(dir, _)| dir))
            .collect();
        let changes = changes
            .into_iter()
            .filter(|c| !ENGINE_PATHS.contains(&c.path.as_str()))
            .collect();
        let mut changes = drift::without_parents(changes);
        changes
            .retain(|c| c.kind != ChangeKind::Changed || !engine_dirs.contains(&c.path.as_str()));
        let own = format!("{ENVRIG_DIR}/");
        changes.retain(|c| c.path != ENVRIG_DIR && !c.path.starts_with(&own));
        // `/var/lib` is a parent of envrig's records only: it is not drift either.
        changes.retain(|c| {
            c.kind != ChangeKind::Changed
                || !own.starts_with(&format!("{}/", c.path.trim_end_matches('/')))
        });
        Ok(changes)
    }

    /// `stat` lines of `paths` inside the container (missing paths are left out); no exec
    /// when there are no paths.
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

    /// Reads the baseline through the archive API (no exec); none yet: empty. The engine's
    /// own paths, which `changes` leaves out, are left out of it too (a baseline written
    /// before they were is still right).
    async fn read_baseline(&self, id: &str) -> Result<Baseline> {
        let mut base = self.read_baseline_file(id).await?.unwrap_or_default();
        for p in ENGINE_PATHS {
            base.changed.remove(*p);
            if let Some((dir, _)) = p.rsplit_once('/') {
                base.changed.remove(dir);
            }
        }
        Ok(base)
    }

    /// The baseline, `None` when the container has none.
    async fn read_baseline_file(&self, id: &str) -> Result<Option<Baseline>> {
        if let Some(bytes) = self.archive_file(id, BASELINE).await? {
            return Ok(Some(Baseline::parse(&String::from_utf8_lossy(&bytes))));
        }
        Ok(self
            .archive_file(id, BASELINE_JSON)
            .await?
            .map(|bytes| serde_json::from_slice(&bytes).unwrap_or_default()))
    }

    pub(crate) async fn mark_baseline_impl(&self, id: &str) -> Result<()> {
        let changes = self.changes(id).await?;
        // Nothing changed against the image, and no earlier baseline to replace: the image
        // is the baseline (no exec, no write; most of a plain `up`'s machines).
        if changes.is_empty() && self.read_baseline_file(id).await?.is_none() {
            return Ok(());
        }
        let deleted: Vec<&str> = changes
            .iter()
            .filter(|c| c.kind == ChangeKind::Deleted)
            .map(|c| c.path.as_str())
            .collect();
        let present: Vec<String> = changes
            .iter()
            .filter(|c| c.kind != ChangeKind::Deleted)
            .map(|c| c.path.clone())
            .collect();
        // One exec writes it: the deleted paths, then `stat` of the others, into the file
        // (an exec and an upload each cost ~40 ms; a provisioned `up` pays this per machine).
        let bytes: usize = changes.iter().map(|c| c.path.len() + 1).sum();
        if bytes <= 96 * 1024 {
            let mut argv = vec![
                "sh".to_string(),
                "-c".into(),
                WRITE_BASELINE.into(),
                "sh".into(),
                STAT_FORMAT.into(),
                deleted.len().to_string(),
            ];
            argv.extend(deleted.iter().map(|p| p.to_string()));
            argv.extend(present.iter().cloned());
            let req = ExecRequest {
                argv,
                ..ExecRequest::default()
            };
            if matches!(self.exec(id, &req, &mut |_, _| {}).await, Ok(0)) {
                return Ok(());
            }
        }
        // Many paths, or no shell in the image: `stat` in batches, and an upload.
        let stats = self.stat(id, &present).await?;
        let mut body = String::new();
        for p in &deleted {
            body.push_str(&format!("D\t{p}\n"));
        }
        for (path, e) in &stats {
            body.push_str(&line_of(path, e));
            body.push('\n');
        }
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, BASELINE.trim_start_matches('/'), body.as_bytes())
            .map_err(|e| engine_err("write the baseline", e))?;
        let tar = b
            .into_inner()
            .map_err(|e| engine_err("write the baseline", e))?;
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
        let now = self.stat(id, &recheck).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_baseline_file_holds_deleted_paths_and_stat_lines() {
        let b = Baseline::parse(
            "D\t/etc/group\n/srv/a\tregular file\t3\t1796218800\t644\n\n/srv\tdirectory\t4096\t1\t755\n",
        );
        assert_eq!(b.deleted.iter().collect::<Vec<_>>(), ["/etc/group"]);
        assert_eq!(b.changed.len(), 2);
        assert_eq!(
            b.changed["/srv/a"],
            "/srv/a\tregular file\t3\t1796218800\t644"
        );
        // What `drift` compares: the stat line parses back into the same entry.
        let e = &drift::parse(&b.changed["/srv/a"])["/srv/a"];
        assert_eq!(line_of("/srv/a", e), b.changed["/srv/a"]);
    }
}
