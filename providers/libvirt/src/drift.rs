//! Drift: the guest's files listed inside it, against the listing taken at the baseline (kept
//! in the machine's folder on the host, or as a volume of a remote host).

use envrig_provider_api::{ExecRequest, OutputStream, Result};

use crate::LibvirtProvider;
use crate::error::io;

/// The guest's file listing taken at the baseline, in the machine's folder.
pub(crate) const DRIFT_BASELINE: &str = "drift-baseline.tsv";
/// Beside the baseline when it was written before `up` asked for one (a warm clone's, from
/// its layer): the next [`LibvirtProvider::take_baseline`] keeps it.
pub(crate) const BASELINE_READY: &str = "drift-baseline.ready";

impl LibvirtProvider {
    /// Every file of the guest's root file system, listed inside it (`drift::LIST_SCRIPT`).
    pub(crate) async fn list_files(&self, id: &str) -> Result<String> {
        let req = ExecRequest {
            argv: vec![
                "/bin/sh".into(),
                "-c".into(),
                envrig_provider_api::drift::LIST_SCRIPT.into(),
            ],
            ..ExecRequest::default()
        };
        let mut out = Vec::new();
        let mut err = Vec::new();
        let code = {
            let mut sink = |s: OutputStream, b: &[u8]| match s {
                OutputStream::Stdout => out.extend_from_slice(b),
                OutputStream::Stderr => err.extend_from_slice(b),
            };
            self.exec_command(id, &req, &mut sink).await?
        };
        if code != 0 && out.is_empty() {
            return Err(io(
                "list the guest's files",
                std::io::Error::other(format!(
                    "exit {code}: {}",
                    String::from_utf8_lossy(&err).trim()
                )),
            ));
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    pub(crate) async fn take_baseline(&self, id: &str) -> Result<()> {
        let info = self.info(id).await?;
        if self.note_exists(&info.resource_name, BASELINE_READY).await {
            self.note_drop(&info.resource_name, BASELINE_READY).await;
            return Ok(());
        }
        let listing = self.list_files(id).await?;
        self.note_put(&info.resource_name, DRIFT_BASELINE, listing.as_bytes())
            .await
    }

    /// The guest's files listed now against the listing taken at the baseline (kept in the
    /// machine's folder on the host); no baseline yet: everything counts as added.
    pub(crate) async fn drift_since_baseline(
        &self,
        id: &str,
    ) -> Result<Vec<envrig_provider_api::drift::PathChange>> {
        use envrig_provider_api::drift;
        let info = self.info(id).await?;
        let base = self
            .note_read(&info.resource_name, DRIFT_BASELINE, u64::MAX)
            .await
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let now = self.list_files(id).await?;
        Ok(drift::compare(&drift::parse(&base), &drift::parse(&now)))
    }
}
