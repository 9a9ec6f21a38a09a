//! An image archive from elsewhere (`docker save` output in an archive given to `import`),
//! checked before `docker load` sees it. Loading an archive that names image tags
//! (`RepoTags` in `manifest.json`, a `repositories` file, an OCI index's image name
//! annotations) points this host's tags (`debian:12`, the box of any project) at the
//! archive's image, for every later `docker run` on this host. envrig exports by image id,
//! which names no tag: an archive that does is refused. Never panics on any input.

use std::io::Read;
use std::path::Path;

/// The largest metadata file read; a real one is a few hundred bytes.
const META_MAX: u64 = 4 << 20;

/// OCI index annotations that make a load name an image.
const NAME_ANNOTATIONS: &[&str] = &[
    "io.containerd.image.name",
    "org.opencontainers.image.ref.name",
];

/// Why the metadata file `name` (of a `docker save` archive) is refused, if it is.
pub fn check_meta(name: &str, text: &[u8]) -> Result<(), String> {
    let parsed = || {
        serde_json::from_slice::<serde_json::Value>(text)
            .map_err(|e| format!("its `{name}` is not valid JSON: {e}"))
    };
    match name {
        "manifest.json" => {
            let v = parsed()?;
            let entries = v
                .as_array()
                .ok_or_else(|| "its `manifest.json` is not a list".to_string())?;
            for e in entries {
                let tagged = e
                    .get("RepoTags")
                    .and_then(|t| t.as_array())
                    .is_some_and(|t| !t.is_empty());
                if tagged {
                    return Err(
                        "its image names tags (`RepoTags`): loading it would replace images of this host"
                            .into(),
                    );
                }
            }
            Ok(())
        }
        "repositories" => match parsed()? {
            serde_json::Value::Object(m) if m.is_empty() => Ok(()),
            _ => Err(
                "it holds a `repositories` file: loading it would replace images of this host"
                    .into(),
            ),
        },
        "index.json" => {
            let v = parsed()?;
            let named = v
                .get("manifests")
                .and_then(|m| m.as_array())
                .into_iter()
                .flatten()
                .filter_map(|m| m.get("annotations").and_then(|a| a.as_object()))
                .any(|a| NAME_ANNOTATIONS.iter().any(|k| a.contains_key(*k)));
            if named {
                Err(
                    "its OCI index names images: loading it would replace images of this host"
                        .into(),
                )
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
}

/// Checks the image archive at `path`: `Ok(Err(why))` when it is refused.
pub fn check(path: &Path) -> std::io::Result<Result<(), String>> {
    let mut archive = tar::Archive::new(std::fs::File::open(path)?);
    for entry in archive.entries()? {
        let entry = entry?;
        let name = entry.path()?.to_string_lossy().into_owned();
        let name = name.trim_start_matches("./");
        if !matches!(name, "manifest.json" | "repositories" | "index.json") {
            continue;
        }
        if entry.size() > META_MAX {
            return Ok(Err(format!("its `{name}` is too large")));
        }
        let name = name.to_string();
        let mut text = Vec::new();
        entry.take(META_MAX).read_to_end(&mut text)?;
        if let Err(why) = check_meta(&name, &text) {
            return Ok(Err(why));
        }
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_saved_by_id_is_accepted() {
        let m = br#"[{"Config":"x.json","RepoTags":null,"Layers":["a/layer.tar"]}]"#;
        assert_eq!(check_meta("manifest.json", m), Ok(()));
        assert_eq!(check_meta("manifest.json", br#"[{"RepoTags":[]}]"#), Ok(()));
        assert_eq!(check_meta("repositories", b"{}"), Ok(()));
        let idx =
            br#"{"schemaVersion":2,"manifests":[{"digest":"sha256:1","annotations":{"x":"y"}}]}"#;
        assert_eq!(check_meta("index.json", idx), Ok(()));
        assert_eq!(check_meta("other.json", b"not json"), Ok(()));
    }

    #[test]
    fn an_image_that_names_tags_is_refused() {
        let m = br#"[{"Config":"x.json","RepoTags":["debian:12"],"Layers":[]}]"#;
        let e = check_meta("manifest.json", m).unwrap_err();
        assert!(e.contains("RepoTags"), "{e}");
        assert!(check_meta("repositories", br#"{"debian":{"12":"abc"}}"#).is_err());
        let idx = br#"{"manifests":[{"annotations":{"io.containerd.image.name":"docker.io/library/debian:12"}}]}"#;
        assert!(check_meta("index.json", idx).is_err());
    }

    #[test]
    fn any_bytes_are_judged_without_panicking() {
        for name in ["manifest.json", "repositories", "index.json"] {
            for text in [
                &b""[..],
                b"\xff\xfe",
                b"[",
                b"{}",
                b"[1, null, \"x\"]",
                b"42",
            ] {
                let _ = check_meta(name, text);
            }
        }
        assert!(check_meta("manifest.json", b"{}").is_err());
    }
}
