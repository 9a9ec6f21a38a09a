//! Capsules in a registry: `export --to REGISTRY/REPO:TAG` writes the archive `export`
//! writes, then sends it as one blob of an OCI artifact of envrig's own media type;
//! `import REGISTRY/REPO:TAG` takes that blob (streamed, checked against its digest and
//! size as it arrives) into a file of its own and imports it as it imports a file: the
//! same manifest, the same checks, the same trust rules. The registry is a way to carry the
//! file, nothing more: nothing it says is trusted beyond the archive's own checks.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use envrig_provider_api::PullProgress;
use envrig_provider_api::oci::Artifact;

use super::context::Context;
use super::error::OpError;
use super::report::Phase;

const ARTIFACT_TYPE: &str = "application/vnd.envrig.capsule.v1";
const CONFIG_TYPE: &str = "application/vnd.envrig.capsule.config.v1+json";
const ARCHIVE_TYPE: &str = "application/vnd.envrig.capsule.archive.v1.tar";
const TITLE: &str = "capsule.envrig";

/// Whether `arg` names a capsule in a registry rather than a file: no such file here, and
/// `REGISTRY/REPOSITORY:TAG` whose first part is a registry host (a dot or a port, or
/// `localhost`).
pub fn is_reference(arg: &str, cwd: &Path) -> bool {
    if cwd.join(arg).exists() {
        return false;
    }
    let Some((registry, rest)) = arg.split_once('/') else {
        return false;
    };
    let host_like = crate::envfile::values::is_registry_host(registry);
    let tagged = rest
        .rsplit('/')
        .next()
        .is_some_and(|last| last.contains(':') || last.contains('@'));
    host_like && tagged && !arg.contains(char::is_whitespace)
}

fn registry_error(reference: &str, e: String) -> OpError {
    OpError::Io {
        context: format!("the registry of {reference}"),
        source: std::io::Error::other(e),
    }
}

/// Progress of `reference`'s transfer, as a pull's (bytes of `total`).
fn progress(ctx: &Context, reference: &str, total: u64) -> envrig_provider_api::oci::Progress {
    let reporter = ctx.reporter.clone();
    let label = reference.to_string();
    Arc::new(move |done| {
        reporter.pull(&label, &PullProgress::Bytes { done, total });
    })
}

/// Says that `size` bytes of `reference` were `what` (pushed, pulled) since `started`.
fn moved(ctx: &Context, what: &str, reference: &str, size: u64, started: Instant, more: &str) {
    ctx.reporter.event(
        None,
        Phase::Done,
        &format!(
            "{what} {reference} ({:.1} MB) in {:.1}s{more}",
            size as f64 / 1e6,
            started.elapsed().as_secs_f64()
        ),
    );
}

/// Sends the archive `file` to `reference`; its size.
pub async fn push_capsule(ctx: &Context, file: &Path, reference: &str) -> Result<u64, OpError> {
    let started = Instant::now();
    let size = std::fs::metadata(file)
        .map_err(|e| OpError::Io {
            context: format!("read {}", file.display()),
            source: e,
        })?
        .len();
    let artifact = Artifact::open(reference)
        .await
        .map_err(|e| OpError::Usage(e.to_string()))?;
    let blob = artifact
        .push_file(
            file,
            ARCHIVE_TYPE,
            TITLE,
            Some(progress(ctx, reference, size)),
        )
        .await
        .map_err(|e| registry_error(reference, e))?;
    let config = serde_json::json!({ "schema": "envrig.capsule/1", "size": size });
    artifact
        .push_manifest(
            ARTIFACT_TYPE,
            CONFIG_TYPE,
            serde_json::to_vec(&config).unwrap_or_default(),
            vec![blob],
        )
        .await
        .map_err(|e| registry_error(reference, e))?;
    moved(ctx, "pushed", reference, size, started, "");
    Ok(size)
}

/// Takes the capsule `reference` into the file `dest`, checked; its size.
pub async fn pull_capsule(ctx: &Context, reference: &str, dest: &Path) -> Result<u64, OpError> {
    let started = Instant::now();
    let artifact = Artifact::open(reference)
        .await
        .map_err(|e| OpError::Usage(e.to_string()))?;
    let manifest = artifact
        .manifest()
        .await
        .map_err(|e| registry_error(reference, e))?
        .ok_or_else(|| OpError::Usage(format!("the registry has no {reference}")))?;
    let blob = match manifest.layers.as_slice() {
        [b] if b.media_type == ARCHIVE_TYPE => b,
        _ => {
            return Err(OpError::Usage(format!(
                "{reference} is not an envrig capsule (its manifest holds {} blob(s) of {:?})",
                manifest.layers.len(),
                manifest
                    .layers
                    .iter()
                    .map(|l| l.media_type.as_str())
                    .collect::<Vec<_>>()
            )));
        }
    };
    let size = blob.size.max(0) as u64;
    artifact
        .pull_to(blob, dest, Some(progress(ctx, reference, size)))
        .await
        .map_err(|e| registry_error(reference, e))?;
    moved(
        ctx,
        "pulled",
        reference,
        size,
        started,
        ", its digest checked",
    );
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_reference_is_told_from_a_file() {
        let here = Path::new("/nonexistent-folder-for-test");
        for r in [
            "127.0.0.1:5000/team/bug:1",
            "registry.example/team/bug:v2",
            "localhost/a:b",
            "reg.example/a@sha256:00",
        ] {
            assert!(is_reference(r, here), "{r}");
        }
        for f in [
            "bug.envrig",
            "out/bug.envrig",
            "127.0.0.1:5000/team/bug",
            "team/bug:1",
            "./x:1",
        ] {
            assert!(!is_reference(f, here), "{f}");
        }
    }
}
