//! How the provider's failures become [`ProviderError`]s: libvirt's errors (a missing domain
//! is "not found"), I/O and SSH failures, what the provider cannot do, an imported disk
//! refused, and a login user the guest named that is not a user name.

use envrig_provider_api::{ProviderError, Result};

use crate::{NAME, ssh};

pub(crate) fn engine(op: impl Into<String>, e: virt::error::Error) -> ProviderError {
    let op = op.into();
    let msg = e.to_string();
    if msg.contains("Domain not found") || msg.contains("no domain with matching") {
        return ProviderError::NotFound {
            what: format!("domain ({op})"),
        };
    }
    ProviderError::Engine {
        provider: NAME,
        op,
        source: Box::new(e),
    }
}

pub(crate) fn io(op: impl Into<String>, e: std::io::Error) -> ProviderError {
    ProviderError::Engine {
        provider: NAME,
        op: op.into(),
        source: Box::new(e),
    }
}

/// `user` when it is a user name (see [`envrig_provider_api::valid_user_name`]); the guest
/// said it, so anything else is refused rather than passed on.
pub(crate) fn checked_user(user: &str) -> Result<String> {
    if envrig_provider_api::valid_user_name(user) {
        Ok(user.to_string())
    } else {
        Err(ProviderError::Conflict {
            message: format!(
                "the guest named its login user {user:?}, which is not a user name; \
                 envrig will not pass it to a command (recreate the machine: `envrig destroy` and `envrig up`)"
            ),
        })
    }
}

/// An imported disk that is refused, and why.
pub(crate) fn refused_disk(what: &str, why: &str) -> ProviderError {
    ProviderError::Refused {
        message: format!("the disk of `{what}` is refused: {why}"),
    }
}

pub(crate) fn unsupported(what: &str) -> ProviderError {
    ProviderError::NotSupported {
        provider: NAME,
        what: what.to_string(),
    }
}

pub(crate) fn ssh_err(op: &str, e: ssh::SshError) -> ProviderError {
    ProviderError::Engine {
        provider: NAME,
        op: op.to_string(),
        source: Box::new(e),
    }
}
