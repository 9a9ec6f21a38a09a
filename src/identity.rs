//! An environment's identity: the project name plus the folder it lives in.
//!
//! Two checkouts of one project (same name, different folders, as on a CI runner) get
//! different identities, so they never see or touch each other's machines: Compose's classic
//! collision, avoided. The identity is written on every resource as labels.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use envrig_provider_api::labels;
use sha2::{Digest, Sha256};

use crate::envfile::Name;

/// Who an environment is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub project: Name,
    /// The Envfile's folder, canonicalised.
    pub folder: PathBuf,
    /// The Envfile itself.
    pub envfile: PathBuf,
    /// `sha256(project NUL folder)`, 16 hex digits.
    pub env_id: String,
}

impl Identity {
    pub fn new(project: &Name, folder: &Path, envfile: &Path) -> Identity {
        let folder = folder
            .canonicalize()
            .unwrap_or_else(|_| folder.to_path_buf());
        let mut h = Sha256::new();
        h.update(project.as_str().as_bytes());
        h.update([0]);
        h.update(folder.to_string_lossy().as_bytes());
        let env_id = hex(&h.finalize())[..16].to_string();
        Identity {
            project: project.clone(),
            folder,
            envfile: envfile.to_path_buf(),
            env_id,
        }
    }

    /// The short form of the id shown to people and used in resource names.
    pub fn short_id(&self) -> &str {
        &self.env_id[..8]
    }

    /// The engine-side name of a machine's resource: `shop-3f2a9c1b-web-1`. Only validated
    /// names reach it, so it is always a valid container or domain name.
    pub fn resource_name(&self, machine: &Name, generation: u32) -> String {
        format!(
            "{}-{}-{}-{generation}",
            self.project,
            self.short_id(),
            machine
        )
    }

    /// The labels of a machine's resources, except the config hash and provider.
    pub fn labels(
        &self,
        machine: &Name,
        generation: u32,
        created: &str,
    ) -> BTreeMap<String, String> {
        BTreeMap::from([
            (labels::ENV.to_string(), self.env_id.clone()),
            (labels::PROJECT.to_string(), self.project.to_string()),
            (
                labels::FOLDER.to_string(),
                self.folder.to_string_lossy().into_owned(),
            ),
            (
                labels::ENVFILE.to_string(),
                self.envfile.to_string_lossy().into_owned(),
            ),
            (labels::MACHINE.to_string(), machine.to_string()),
            (labels::GENERATION.to_string(), generation.to_string()),
            (labels::VERSION.to_string(), crate::VERSION.to_string()),
            (labels::CREATED.to_string(), created.to_string()),
        ])
    }
}

/// Lower-case hex of some bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The sha256 of `bytes`, in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_name_in_two_folders_gives_two_identities() {
        let name = Name::parse("shop").unwrap();
        let a = Identity::new(
            &name,
            Path::new("/nonexistent/a/shop"),
            Path::new("/nonexistent/a/shop/Envfile"),
        );
        let b = Identity::new(
            &name,
            Path::new("/nonexistent/b/shop"),
            Path::new("/nonexistent/b/shop/Envfile"),
        );
        assert_ne!(a.env_id, b.env_id);
        assert_eq!(a.env_id.len(), 16);
        let web = Name::parse("web").unwrap();
        assert_eq!(
            a.resource_name(&web, 1),
            format!("shop-{}-web-1", &a.env_id[..8])
        );
        let again = Identity::new(
            &name,
            Path::new("/nonexistent/a/shop"),
            Path::new("/nonexistent/a/shop/Envfile"),
        );
        assert_eq!(a, again, "the identity is stable");
    }
}
