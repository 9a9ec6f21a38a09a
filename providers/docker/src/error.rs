//! Errors: every bollard call's error names the operation that failed ([`DockerError`]) and is
//! mapped into the provider-neutral [`ProviderError`].

use envrig_provider_api::ProviderError;

use crate::NAME;

/// A failed Docker API call, naming the operation.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {source}")]
pub struct DockerError {
    pub op: String,
    #[source]
    pub source: bollard::errors::Error,
}

pub(crate) fn map_err(op: impl Into<String>, e: bollard::errors::Error) -> ProviderError {
    use bollard::errors::Error as B;
    let op = op.into();
    match &e {
        B::DockerResponseServerError {
            status_code: 404,
            message,
        } => ProviderError::NotFound {
            what: message.clone(),
        },
        B::DockerResponseServerError {
            status_code: 409,
            message,
        } => ProviderError::Conflict {
            message: format!("{op}: {message}"),
        },
        B::SocketNotFoundError(_) | B::HyperLegacyError { .. } | B::IOError { .. } => {
            unavailable(e.to_string())
        }
        _ => ProviderError::Engine {
            provider: NAME,
            op: op.clone(),
            source: Box::new(DockerError { op, source: e }),
        },
    }
}

pub(crate) fn unavailable(message: String) -> ProviderError {
    ProviderError::Unavailable {
        provider: NAME,
        message,
        hint: Some(
            "start the Docker engine (`scripts/host-setup.sh` does it on Debian), or point \
             `DOCKER_HOST` at one"
                .to_string(),
        ),
    }
}

/// An error of envrig's own work around an engine call (a file, a tar, a JSON encoding),
/// naming the operation.
pub(crate) fn engine_err(
    op: impl Into<String>,
    e: impl std::error::Error + Send + Sync + 'static,
) -> ProviderError {
    ProviderError::Engine {
        provider: NAME,
        op: op.into(),
        source: Box::new(e),
    }
}
