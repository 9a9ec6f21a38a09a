//! [`PluginProvider`] is a [`Provider`]: each method is one call of the protocol.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use super::client::{PluginProvider, intern};
use super::wire::{Body, Bytes, Call};
use crate::{
    BakedLayer, BaseIdentity, BaseInfo, Capabilities, ExecRequest, LogRequest, MachineInfo,
    MachineSpec, NetworkSpec, OtherResource, OutputSink, Provider, ProviderError, PullProgress,
    Result, Selector, Snapshot, SshEndpoint, StoredBox, Terminal, drift,
};

/// [`OtherResource`] as it travels (its kind is a `&'static str` on this side).
#[derive(Deserialize)]
struct WireOther {
    kind: String,
    name: String,
    labels: BTreeMap<String, String>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[async_trait]
impl Provider for PluginProvider {
    fn name(&self) -> &'static str {
        self.name
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    async fn ensure_base(
        &self,
        reference: &str,
        progress: &mut (dyn FnMut(PullProgress) + Send),
    ) -> Result<BaseInfo> {
        let call = Call::EnsureBase {
            reference: reference.into(),
        };
        self.call_with(call, |b| {
            if let Body::Progress(p) = b {
                progress(p)
            }
        })
        .await
    }

    async fn resolve_base(&self, reference: &str) -> Result<Option<BaseIdentity>> {
        self.call(Call::ResolveBase {
            reference: reference.into(),
        })
        .await
    }

    async fn create(&self, spec: &MachineSpec) -> Result<MachineInfo> {
        self.call(Call::Create { spec: spec.clone() }).await
    }

    async fn start(&self, id: &str) -> Result<()> {
        self.call(Call::Start { id: id.into() }).await
    }

    async fn start_created(&self, id: &str, spec: &MachineSpec) -> Result<Option<String>> {
        let call = Call::StartCreated {
            id: id.into(),
            spec: spec.clone(),
        };
        self.call(call).await
    }

    async fn stop(&self, id: &str, timeout: Duration) -> Result<()> {
        let call = Call::Stop {
            id: id.into(),
            timeout_ms: ms(timeout),
        };
        self.call(call).await
    }

    async fn stop_for_handover(&self, id: &str, timeout: Duration) -> Result<()> {
        let call = Call::StopForHandover {
            id: id.into(),
            timeout_ms: ms(timeout),
        };
        self.call(call).await
    }

    async fn remove(&self, id: &str) -> Result<()> {
        self.call(Call::Remove { id: id.into() }).await
    }

    async fn inspect(&self, id: &str) -> Result<MachineInfo> {
        self.call(Call::Inspect { id: id.into() }).await
    }

    async fn engine_info(&self) -> Result<crate::EngineInfo> {
        self.call(Call::EngineInfo).await
    }

    async fn ensure_network(&self, spec: &NetworkSpec) -> Result<()> {
        self.call(Call::EnsureNetwork { spec: spec.clone() }).await
    }

    async fn shared_network(&self, spec: &NetworkSpec) -> Result<Option<crate::SharedNetwork>> {
        self.call(Call::SharedNetwork { spec: spec.clone() }).await
    }

    async fn name_on_network(&self, network: &str, address: &str, names: &[String]) -> Result<()> {
        let call = Call::NameOnNetwork {
            network: network.into(),
            address: address.into(),
            names: names.to_vec(),
        };
        self.call(call).await
    }

    async fn shared_address(&self, id: &str) -> Result<Option<String>> {
        self.call(Call::SharedAddress { id: id.into() }).await
    }

    async fn list_other(&self, selector: &Selector) -> Result<Vec<OtherResource>> {
        let call = Call::ListOther {
            selector: selector.clone(),
        };
        let wire: Vec<WireOther> = self.call(call).await?;
        Ok(wire
            .into_iter()
            .map(|w| OtherResource {
                kind: intern(&w.kind),
                name: w.name,
                labels: w.labels,
            })
            .collect())
    }

    async fn list(&self, selector: &Selector) -> Result<Vec<MachineInfo>> {
        let call = Call::List {
            selector: selector.clone(),
        };
        self.call(call).await
    }

    async fn purge(&self, selector: &Selector) -> Result<Vec<String>> {
        let call = Call::Purge {
            selector: selector.clone(),
        };
        self.call(call).await
    }

    async fn exec(&self, id: &str, req: &ExecRequest, output: OutputSink<'_>) -> Result<i64> {
        let call = Call::Exec {
            id: id.into(),
            request: req.clone(),
        };
        self.call_with(call, output_events(output)).await
    }

    async fn exec_interactive(
        &self,
        _id: &str,
        _req: &ExecRequest,
        _terminal: Terminal,
    ) -> Result<i64> {
        Err(ProviderError::NotSupported {
            provider: self.name,
            what: "an interactive terminal through a plugin (use `envrig ssh`)".into(),
        })
    }

    async fn upload(&self, id: &str, dest: &str, tar: Vec<u8>) -> Result<()> {
        let call = Call::Upload {
            id: id.into(),
            dest: dest.into(),
            tar: Bytes(tar),
        };
        self.call(call).await
    }

    async fn copy_in(&self, id: &str, tar: &std::path::Path, dest: &str) -> Result<()> {
        let call = Call::CopyIn {
            id: id.into(),
            tar: tar.into(),
            dest: dest.into(),
        };
        self.call(call).await
    }

    async fn copy_out(&self, id: &str, src: &str, tar: &std::path::Path) -> Result<()> {
        let call = Call::CopyOut {
            id: id.into(),
            src: src.into(),
            tar: tar.into(),
        };
        self.call(call).await
    }

    async fn logs(&self, id: &str, req: &LogRequest, output: OutputSink<'_>) -> Result<()> {
        let call = Call::Logs {
            id: id.into(),
            request: req.clone(),
        };
        self.call_with(call, output_events(output)).await
    }

    async fn read_file(&self, id: &str, path: &str) -> Result<Option<Vec<u8>>> {
        let call = Call::ReadFile {
            id: id.into(),
            path: path.into(),
        };
        let b: Option<Bytes> = self.call(call).await?;
        Ok(b.map(|b| b.0))
    }

    async fn pause(&self, id: &str) -> Result<()> {
        self.call(Call::Pause { id: id.into() }).await
    }

    async fn unpause(&self, id: &str) -> Result<()> {
        self.call(Call::Unpause { id: id.into() }).await
    }

    async fn suspend(&self, id: &str) -> Result<()> {
        self.call(Call::Suspend { id: id.into() }).await
    }

    async fn snapshot_save(
        &self,
        id: &str,
        name: &str,
        spec: &MachineSpec,
        labels: &BTreeMap<String, String>,
        running: bool,
    ) -> Result<Snapshot> {
        let call = Call::SnapshotSave {
            id: id.into(),
            name: name.into(),
            spec: spec.clone(),
            labels: labels.clone(),
            running,
        };
        self.call(call).await
    }

    async fn snapshot_list(&self, selector: &Selector) -> Result<Vec<Snapshot>> {
        let call = Call::SnapshotList {
            selector: selector.clone(),
        };
        self.call(call).await
    }

    async fn snapshot_restore(
        &self,
        snap: &Snapshot,
        current: Option<&str>,
        spec: &MachineSpec,
    ) -> Result<MachineInfo> {
        let call = Call::SnapshotRestore {
            snapshot: snap.clone(),
            current: current.map(str::to_string),
            spec: spec.clone(),
        };
        self.call(call).await
    }

    async fn snapshot_delete(&self, snap: &Snapshot) -> Result<()> {
        let call = Call::SnapshotDelete {
            snapshot: snap.clone(),
        };
        self.call(call).await
    }

    async fn snapshot_export(&self, snap: &Snapshot, dest: &Path) -> Result<u64> {
        let call = Call::SnapshotExport {
            snapshot: snap.clone(),
            dest: dest.to_path_buf(),
        };
        self.call(call).await
    }

    async fn check_export(&self, src: &Path) -> Result<()> {
        let call = Call::CheckExport {
            src: src.to_path_buf(),
        };
        self.call(call).await
    }

    async fn check_resume(&self, src: &std::path::Path) -> Result<()> {
        let call = Call::CheckResume {
            src: src.to_path_buf(),
        };
        self.call(call).await
    }

    async fn snapshot_import(
        &self,
        src: &Path,
        snap: &Snapshot,
        labels: &BTreeMap<String, String>,
    ) -> Result<Snapshot> {
        let call = Call::SnapshotImport {
            src: src.to_path_buf(),
            snapshot: snap.clone(),
            labels: labels.clone(),
        };
        self.call(call).await
    }

    async fn package(
        &self,
        id: &str,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<BaseInfo> {
        let call = Call::Package {
            id: id.into(),
            name: name.into(),
            labels: labels.clone(),
        };
        self.call(call).await
    }

    async fn box_add(&self, name: &str, source: &Path, force: bool) -> Result<StoredBox> {
        let call = Call::BoxAdd {
            name: name.into(),
            source: source.to_path_buf(),
            force,
        };
        self.call(call).await
    }

    async fn box_list(&self) -> Result<Vec<StoredBox>> {
        self.call(Call::BoxList).await
    }

    async fn box_remove(&self, name: &str) -> Result<()> {
        self.call(Call::BoxRemove { name: name.into() }).await
    }

    async fn ssh_endpoint(&self, id: &str) -> Result<SshEndpoint> {
        self.call(Call::SshEndpoint { id: id.into() }).await
    }

    async fn refresh_synced(&self, id: &str) -> Result<Vec<String>> {
        self.call(Call::RefreshSynced { id: id.into() }).await
    }

    async fn flush(&self, id: &str) -> Result<()> {
        self.call(Call::Flush { id: id.into() }).await
    }

    async fn baked_layers(&self) -> Result<Vec<BakedLayer>> {
        self.call(Call::BakedLayers).await
    }

    async fn remove_baked(&self, name: &str) -> Result<()> {
        self.call(Call::RemoveBaked { name: name.into() }).await
    }

    async fn pull_baked(&self, reference: &str, name: &str, base: &str) -> Result<bool> {
        self.call(Call::PullBaked {
            reference: reference.into(),
            name: name.into(),
            base: base.into(),
        })
        .await
    }

    async fn push_baked(&self, name: &str, reference: &str) -> Result<()> {
        self.call(Call::PushBaked {
            name: name.into(),
            reference: reference.into(),
        })
        .await
    }

    async fn sweep_work(&self) -> Result<Vec<String>> {
        self.call(Call::SweepWork).await
    }

    async fn mark_baseline(&self, id: &str) -> Result<()> {
        self.call(Call::MarkBaseline { id: id.into() }).await
    }

    async fn drift(&self, id: &str) -> Result<Vec<drift::PathChange>> {
        self.call(Call::Drift { id: id.into() }).await
    }
}

/// Passes a call's `output` events (`exec`, `logs`) on to `output`.
fn output_events(output: OutputSink<'_>) -> impl FnMut(Body) + '_ {
    move |b| {
        if let Body::Output { stream, data } = b {
            output(stream, &data.0)
        }
    }
}
