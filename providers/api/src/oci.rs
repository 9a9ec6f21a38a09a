//! Artifacts of envrig's own in an OCI registry, with `oci-client`: files pushed and pulled
//! as blobs, streamed, each checked against its digest here as it arrives. The one place
//! that speaks the distribution protocol for the core (capsules) and the providers that keep
//! their layers as files (libvirt).
//!
//! Registries on loopback (`localhost`, 127.0.0.0/8, `::1`) are spoken to over HTTP, as
//! Docker does by default; others over HTTPS. Credentials come from [`crate::registry`].

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{OciDescriptor, OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::Digest;
use tokio::io::AsyncWriteExt;

use crate::registry::{credentials, registry_of};

/// The annotation that names a blob's file.
pub const TITLE: &str = "org.opencontainers.image.title";

/// Bytes moved so far, told as they move.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// One repository and tag of one registry, connected.
pub struct Artifact {
    client: Client,
    image: Reference,
    auth: RegistryAuth,
    reference: String,
}

/// The file name a blob carries, if any.
pub fn title(d: &OciDescriptor) -> &str {
    d.annotations
        .as_ref()
        .and_then(|a| a.get(TITLE))
        .map(String::as_str)
        .unwrap_or("")
}

impl Artifact {
    /// The artifact at `reference` (`REGISTRY/REPOSITORY:TAG`), with this user's credentials.
    pub async fn open(reference: &str) -> Result<Artifact, String> {
        // reqwest's TLS needs a process-wide crypto provider: ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let image: Reference = reference
            .parse()
            .map_err(|e| format!("`{reference}` is not a registry reference: {e}"))?;
        let registry = registry_of(reference).to_string();
        let host = match registry.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
            _ => registry.as_str(),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
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
            // A registry that stops sending fails the transfer rather than holding `up`.
            read_timeout: Some(std::time::Duration::from_secs(60)),
            ..ClientConfig::default()
        };
        let auth = match credentials(&registry) {
            Some(c) => RegistryAuth::Basic(c.username, c.password),
            None => RegistryAuth::Anonymous,
        };
        let client = Client::new(config);
        client
            .store_auth_if_needed(image.resolve_registry(), &auth)
            .await;
        Ok(Artifact {
            client,
            image,
            auth,
            reference: reference.to_string(),
        })
    }

    /// Pushes the file at `path` as a blob of `media_type` titled `title`, streamed.
    pub async fn push_file(
        &self,
        path: &Path,
        media_type: &str,
        title: &str,
        progress: Option<Progress>,
    ) -> Result<OciDescriptor, String> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| format!("open {}: {e}", path.display()))?;
        let mut sent = 0u64;
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20).map(move |r| {
            if let (Ok(b), Some(p)) = (&r, &progress) {
                sent += b.len() as u64;
                p(sent);
            }
            r.map_err(oci_client::errors::OciDistributionError::IoError)
        });
        let pushed = self
            .client
            .push_blob_stream_chunked(&self.image, stream)
            .await
            .map_err(|e| format!("push {title} to {}: {e}", self.reference))?;
        Ok(OciDescriptor {
            media_type: media_type.to_string(),
            digest: pushed.blob_digest,
            size: pushed.size as i64,
            urls: None,
            annotations: Some(BTreeMap::from([(TITLE.to_string(), title.to_string())])),
            artifact_type: None,
        })
    }

    /// Pushes the manifest naming `config` (a small JSON document of `config_type`) and
    /// `blobs`, as an artifact of `artifact_type`, under the reference's tag.
    pub async fn push_manifest(
        &self,
        artifact_type: &str,
        config_type: &str,
        config: Vec<u8>,
        blobs: Vec<OciDescriptor>,
    ) -> Result<(), String> {
        let digest = format!("sha256:{}", crate::hash::sha256_hex(&config));
        let size = config.len() as i64;
        self.client
            .push_blob(&self.image, config, &digest)
            .await
            .map_err(|e| format!("push the config to {}: {e}", self.reference))?;
        let manifest = OciImageManifest {
            schema_version: 2,
            media_type: Some("application/vnd.oci.image.manifest.v1+json".to_string()),
            config: OciDescriptor {
                media_type: config_type.to_string(),
                digest,
                size,
                urls: None,
                annotations: None,
                artifact_type: None,
            },
            layers: blobs,
            subject: None,
            artifact_type: Some(artifact_type.to_string()),
            annotations: None,
        };
        self.client
            .push_manifest(&self.image, &OciManifest::Image(manifest))
            .await
            .map(|_| ())
            .map_err(|e| format!("push the manifest of {}: {e}", self.reference))
    }

    /// The artifact's manifest; `None` when the registry has no such tag.
    pub async fn manifest(&self) -> Result<Option<OciImageManifest>, String> {
        match self.client.pull_manifest(&self.image, &self.auth).await {
            Ok((OciManifest::Image(m), _)) => Ok(Some(m)),
            Ok((OciManifest::ImageIndex(_), _)) => {
                Err(format!("{} is an index, not an artifact", self.reference))
            }
            Err(e) => {
                let said = e.to_string().to_ascii_lowercase();
                if said.contains("not found") || said.contains("unknown") {
                    Ok(None)
                } else {
                    Err(format!("the manifest of {}: {e}", self.reference))
                }
            }
        }
    }

    /// The blob `d` into the file `path` (created), streamed; its bytes must hash to its
    /// digest and number its size, else the file is removed and the pull refused.
    pub async fn pull_to(
        &self,
        d: &OciDescriptor,
        path: &Path,
        progress: Option<Progress>,
    ) -> Result<(), String> {
        let result = self.pull_checked(d, path, progress).await;
        if result.is_err() {
            let _ = std::fs::remove_file(path);
        }
        result
    }

    async fn pull_checked(
        &self,
        d: &OciDescriptor,
        path: &Path,
        progress: Option<Progress>,
    ) -> Result<(), String> {
        let want = d
            .digest
            .strip_prefix("sha256:")
            .ok_or_else(|| format!("{}: not a sha256 digest", d.digest))?;
        let mut out = tokio::fs::File::create(path)
            .await
            .map_err(|e| format!("write {}: {e}", path.display()))?;
        let mut stream = self
            .client
            .pull_blob_stream(&self.image, d)
            .await
            .map_err(|e| format!("pull {} of {}: {e}", title(d), self.reference))?;
        let mut hasher = sha2::Sha256::new();
        let mut got = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| format!("pull {}: {e}", title(d)))?;
            got += chunk.len() as u64;
            if got > d.size.max(0) as u64 {
                return Err(format!("{} is longer than its manifest says", title(d)));
            }
            hasher.update(&chunk);
            out.write_all(&chunk)
                .await
                .map_err(|e| format!("write {}: {e}", path.display()))?;
            if let Some(p) = &progress {
                p(got);
            }
        }
        out.flush()
            .await
            .map_err(|e| format!("write {}: {e}", path.display()))?;
        let have = format!("{:x}", hasher.finalize());
        if have != want || got != d.size.max(0) as u64 {
            return Err(format!(
                "{} does not match its digest (sha256:{} expected, sha256:{} received, {got} of {} bytes)",
                title(d),
                &want[..want.len().min(12)],
                &have[..12],
                d.size
            ));
        }
        Ok(())
    }

    /// A small blob (a config) in memory, checked, at most `limit` bytes.
    pub async fn pull_small(&self, d: &OciDescriptor, limit: u64) -> Result<Vec<u8>, String> {
        if d.size < 0 || d.size as u64 > limit {
            return Err(format!(
                "{}'s config is {} bytes: too big",
                self.reference, d.size
            ));
        }
        let mut out = Vec::new();
        self.client
            .pull_blob(&self.image, d, &mut out)
            .await
            .map_err(|e| format!("pull the config of {}: {e}", self.reference))?;
        Ok(out)
    }
}
