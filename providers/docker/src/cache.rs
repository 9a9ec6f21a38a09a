//! The team's layer cache in a registry: a baked layer is an image, pushed and pulled by
//! the engine itself (so its own checks apply: every blob's digest is verified on pull, and
//! the layers a host has already are not fetched again), under the tag the core names.
//!
//! A pulled layer is used only when it is what its name says: an image labelled baked, of
//! the fingerprint its name carries. The registry's tag is left on no image here: the
//! layer is known by its local name only, as one baked on this host is.

use bollard::auth::DockerCredentials;
use bollard::query_parameters::{CreateImageOptions, PushImageOptions, TagImageOptions};
use envrig_provider_api::registry::{credentials, registry_of, split_tag};
use envrig_provider_api::{ProviderError, Result, labels};
use futures_util::StreamExt;

use crate::DockerProvider;
use crate::error::map_err;

/// What the registry says when it has no such tag (Docker 20.10's and Podman's words).
fn is_missing(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("manifest unknown") || m.contains("not found") || m.contains("no such")
}

fn auth(reference: &str) -> Option<DockerCredentials> {
    let registry = registry_of(reference);
    credentials(registry).map(|c| DockerCredentials {
        username: Some(c.username),
        password: Some(c.password),
        serveraddress: Some(registry.to_string()),
        ..DockerCredentials::default()
    })
}

impl DockerProvider {
    /// Takes the name `reference` off its image (the image stays while it has another).
    async fn untag(&self, reference: &str) {
        let _ = self
            .docker
            .remove_image(
                reference,
                None::<bollard::query_parameters::RemoveImageOptions>,
                None,
            )
            .await;
    }

    pub(crate) async fn pull_layer(&self, reference: &str, name: &str) -> Result<bool> {
        let (repo, tag) = split_tag(reference);
        let options = CreateImageOptions {
            from_image: Some(repo.to_string()),
            tag: Some(tag.to_string()),
            ..CreateImageOptions::default()
        };
        let mut stream = self
            .docker
            .create_image(Some(options), None, auth(reference));
        while let Some(item) = stream.next().await {
            match item {
                Ok(_) => {}
                Err(bollard::errors::Error::DockerStreamError { error }) if is_missing(&error) => {
                    return Ok(false);
                }
                Err(e) => match map_err(format!("pull {reference}"), e) {
                    ProviderError::NotFound { .. } => return Ok(false),
                    other => return Err(other),
                },
            }
        }
        let checked = match self.check_pulled(reference, name).await {
            Ok(()) => self
                .docker
                .tag_image(
                    reference,
                    Some(TagImageOptions {
                        repo: Some(name.to_string()),
                        tag: Some("latest".to_string()),
                    }),
                )
                .await
                .map_err(|e| map_err(format!("tag {reference} as {name}"), e)),
            Err(e) => Err(e),
        };
        // The registry's name goes whatever happened: the layer is known by its own.
        self.untag(reference).await;
        checked.map(|()| true)
    }

    /// The image pulled as `reference` is the baked layer `name` names: labelled baked, of
    /// the fingerprint `name` carries (`envrig-baked-<fp16>[-…]`).
    async fn check_pulled(&self, reference: &str, name: &str) -> Result<()> {
        let img = self
            .docker
            .inspect_image(reference)
            .await
            .map_err(|e| map_err(format!("inspect {reference}"), e))?;
        let labels = img.config.and_then(|c| c.labels).unwrap_or_default();
        let baked = labels.get(labels::BAKED).map(String::as_str).unwrap_or("");
        let want = labels::baked_fingerprint(name);
        if want.is_empty() || !baked.starts_with(want) {
            return Err(ProviderError::Refused {
                message: format!(
                    "{reference} is not the baked layer {name} (it says fingerprint {:?}); not used",
                    baked
                ),
            });
        }
        Ok(())
    }

    pub(crate) async fn push_layer(&self, name: &str, reference: &str) -> Result<()> {
        let (repo, tag) = split_tag(reference);
        self.docker
            .tag_image(
                name,
                Some(TagImageOptions {
                    repo: Some(repo.to_string()),
                    tag: Some(tag.to_string()),
                }),
            )
            .await
            .map_err(|e| map_err(format!("tag {name} as {reference}"), e))?;
        let mut stream = self.docker.push_image(
            repo,
            Some(PushImageOptions {
                tag: Some(tag.to_string()),
                ..PushImageOptions::default()
            }),
            auth(reference),
        );
        let mut result = Ok(());
        while let Some(item) = stream.next().await {
            if let Err(e) = item {
                result = Err(map_err(format!("push {reference}"), e));
                break;
            }
        }
        self.untag(reference).await;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tag_is_told_apart_from_a_failure() {
        assert!(is_missing(
            "manifest for 127.0.0.1:5000/c:docker-ab not found: manifest unknown"
        ));
        assert!(!is_missing(
            "filesystem layer verification failed for digest sha256:00"
        ));
    }
}
