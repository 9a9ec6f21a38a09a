//! Errors: every bollard call's error names the operation that failed ([`DockerError`]) and is
//! mapped into the provider-neutral [`ProviderError`].

use envrig_provider_api::ProviderError;

use crate::Flavor;

/// The name errors are made with; [`as_flavor`] renames them for Podman.
pub(crate) const NAME: &str = "docker";

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
            unavailable(Flavor::Docker, e.to_string())
        }
        _ => ProviderError::Engine {
            provider: NAME,
            op: op.clone(),
            source: Box::new(DockerError { op, source: e }),
        },
    }
}

pub(crate) fn unavailable(flavor: Flavor, message: String) -> ProviderError {
    ProviderError::Unavailable {
        provider: flavor.name(),
        message,
        hint: Some(flavor.hint().to_string()),
    }
}

/// An error made in this crate, said as `flavor`'s: its provider's name, and what to do
/// when the engine does not answer.
pub(crate) fn as_flavor(e: ProviderError, flavor: Flavor) -> ProviderError {
    if flavor == Flavor::Docker {
        return e;
    }
    match e {
        ProviderError::Unavailable { message, .. } => unavailable(flavor, message),
        ProviderError::NotInstalled { message, hint, .. } => ProviderError::NotInstalled {
            provider: flavor.name(),
            message,
            hint,
        },
        ProviderError::NotSupported { what, .. } => ProviderError::NotSupported {
            provider: flavor.name(),
            what,
        },
        ProviderError::Engine { op, source, .. } => ProviderError::Engine {
            provider: flavor.name(),
            op,
            source,
        },
        other => other,
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

/// Whether the engine refused to pause (freeze) a container because it cannot: rootless
/// Podman on cgroup v1 has no freezer ("can not pause containers on rootless containers
/// with cgroup V1").
pub(crate) fn cannot_pause(e: &bollard::errors::Error) -> Option<&str> {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. }
            if message.contains("can not pause") =>
        {
            Some(message)
        }
        _ => None,
    }
}
