//! What every provider answers [`crate::Provider::check_export`] with, from the check of an
//! exported archive its own format reader made.

use crate::{ProviderError, Result};

/// Runs `check` (a blocking read of an archive: `Ok(Err(why))` when it is refused, `Err`
/// when it cannot be read at all) off the async threads, and turns what it found into
/// [`ProviderError::Refused`]: "its `refused` is refused: why", "its `unreadable` cannot be
/// read as a tar: error". `failed` maps a check that panicked or was cancelled.
pub async fn check_archive(
    check: impl FnOnce() -> std::io::Result<std::result::Result<(), String>> + Send + 'static,
    refused: &str,
    unreadable: &str,
    failed: impl FnOnce(tokio::task::JoinError) -> ProviderError,
) -> Result<()> {
    match tokio::task::spawn_blocking(check).await.map_err(failed)? {
        Ok(Ok(())) => Ok(()),
        Ok(Err(why)) => Err(ProviderError::Refused {
            message: format!("its {refused} is refused: {why}"),
        }),
        Err(e) => Err(ProviderError::Refused {
            message: format!("its {unreadable} cannot be read as a tar: {e}"),
        }),
    }
}
