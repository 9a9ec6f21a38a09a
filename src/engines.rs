//! Engine endpoints beyond the local ones (`envrig engine add NAME URI`): they belong to the
//! user or the CI runner, never to the project, so they live outside the Envfile, in
//! `$XDG_CONFIG_HOME/envrig/engines.toml` (else `~/.config/envrig/engines.toml`), or in the
//! file `ENVRIG_ENGINES` names.
//!
//! With no endpoint of a provider configured, that provider uses its local engine (as
//! `DOCKER_HOST` or `LIBVIRT_DEFAULT_URI` say), called [`LOCAL`]. With some, they are its
//! engines: the local one too only when it is added by name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use envrig_provider_api::EngineAddress;
use serde::{Deserialize, Serialize};

/// The name of a provider's local engine, when no endpoint of that provider is configured.
pub const LOCAL: &str = "local";

/// One engine endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// The provider whose engine this is (found from the URI's scheme when added).
    pub provider: String,
    pub uri: String,
    /// A folder with `ca.pem`, `cert.pem`, `key.pem`: TLS (as `DOCKER_CERT_PATH`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_path: Option<PathBuf>,
    /// What machines may ask for (`engine_labels = { gpu = "yes" }` in the Envfile).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// At most this many envrig machines at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_machines: Option<u32>,
}

impl Endpoint {
    pub fn address(&self) -> EngineAddress {
        EngineAddress {
            uri: self.uri.clone(),
            cert_path: self.cert_path.clone(),
        }
    }
}

/// The configured endpoints, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Engines {
    #[serde(default)]
    pub engines: BTreeMap<String, Endpoint>,
}

/// An endpoint file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EnginesError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where the endpoints are kept: `ENVRIG_ENGINES`, else the user's config folder.
pub fn file() -> PathBuf {
    if let Some(p) = std::env::var_os("ENVRIG_ENGINES").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("/etc"));
    config.join("envrig").join("engines.toml")
}

impl Engines {
    /// The endpoints in `path`; none when it does not exist.
    pub fn load(path: &Path) -> Result<Engines, EnginesError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Engines::default()),
            Err(source) => {
                return Err(EnginesError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let engines: Engines = toml::from_str(&text).map_err(|e| EnginesError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        for name in engines.engines.keys() {
            check_name(name).map_err(|message| EnginesError::Invalid {
                path: path.to_path_buf(),
                message,
            })?;
        }
        Ok(engines)
    }

    /// Writes the endpoints to `path` whole (a temporary file renamed over it).
    pub fn save(&self, path: &Path) -> Result<(), EnginesError> {
        let write = |source| EnginesError::Write {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(write)?;
        }
        let text = toml::to_string_pretty(self).map_err(|e| EnginesError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        std::fs::write(&tmp, text).map_err(write)?;
        std::fs::rename(&tmp, path).map_err(write)
    }

    /// The endpoints of `provider`, by name; `None` when it has none (its local engine).
    pub fn of(&self, provider: &str) -> Option<Vec<(&str, &Endpoint)>> {
        let v: Vec<_> = self
            .engines
            .iter()
            .filter(|(_, e)| e.provider == provider)
            .map(|(n, e)| (n.as_str(), e))
            .collect();
        (!v.is_empty()).then_some(v)
    }

    /// The endpoint called `name` of `provider`; `None` for its local engine (or none such).
    pub fn get(&self, provider: &str, name: &str) -> Option<&Endpoint> {
        self.engines.get(name).filter(|e| e.provider == provider)
    }
}

/// An endpoint's name is a word users type: `ci-2`, `gpu1`.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is no engine name: lowercase letters, digits and `-`, starting with a letter"
        ))
    }
}

/// The scheme of a URI (`tcp` of `tcp://h:2375`), when it has one.
pub fn scheme(uri: &str) -> Option<&str> {
    uri.split_once("://").map(|(s, _)| s).filter(|s| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_read_back_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("engines.toml");
        assert_eq!(Engines::load(&path).unwrap(), Engines::default());
        let mut e = Engines::default();
        e.engines.insert(
            "ci-1".into(),
            Endpoint {
                provider: "docker".into(),
                uri: "tcp://198.18.200.11:2375".into(),
                cert_path: None,
                labels: [("gpu".to_string(), "yes".to_string())].into(),
                max_machines: Some(4),
            },
        );
        e.save(&path).unwrap();
        let back = Engines::load(&path).unwrap();
        assert_eq!(back, e);
        assert!(back.of("docker").unwrap()[0].0 == "ci-1");
        assert!(back.of("libvirt").is_none());
        assert!(back.get("libvirt", "ci-1").is_none());
        std::fs::write(&path, "[engines.Bad]\nprovider='docker'\nuri='tcp://x:1'\n").unwrap();
        assert!(
            Engines::load(&path)
                .unwrap_err()
                .to_string()
                .contains("`Bad`")
        );
        std::fs::write(&path, "[engines.a]\nuri='tcp://x:1'\n").unwrap();
        assert!(Engines::load(&path).is_err());
    }

    #[test]
    fn schemes() {
        assert_eq!(scheme("qemu+tcp://h/system"), Some("qemu+tcp"));
        assert_eq!(scheme("tcp://h:1"), Some("tcp"));
        assert_eq!(scheme("h:1"), None);
        assert_eq!(scheme("://h"), None);
    }
}
