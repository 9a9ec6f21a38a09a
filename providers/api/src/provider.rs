//! The [`Provider`] trait: what every engine does for the core (the crate docs hold the
//! contract every implementation keeps).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::{
    BakedLayer, BaseIdentity, BaseInfo, Capabilities, EngineInfo, ExecRequest, LogRequest,
    MachineInfo, MachineSpec, NetworkSpec, OtherResource, OutputSink, OutputStream, ProviderError,
    PullProgress, Result, Selector, SharedNetwork, Snapshot, SshEndpoint, StoredBox, Terminal,
    drift,
};

/// One engine that runs machines. Held as `Arc<dyn Provider>`; see the crate docs for the
/// contract every implementation keeps.
#[async_trait]
pub trait Provider: Send + Sync + fmt::Debug {
    /// The name used in Envfiles (`provider = "docker"`).
    fn name(&self) -> &'static str;

    fn capabilities(&self) -> Capabilities;

    /// Makes sure `reference` is available locally, fetching it when missing.
    async fn ensure_base(
        &self,
        reference: &str,
        progress: &mut (dyn FnMut(PullProgress) + Send),
    ) -> Result<BaseInfo>;

    /// The identity `reference` resolves to on this host, without fetching anything;
    /// `None` when it is not here.
    async fn resolve_base(&self, reference: &str) -> Result<Option<BaseIdentity>>;

    /// Creates the machine (not started). Fails with [`ProviderError::NotFound`] when the base
    /// is missing locally; the caller then calls [`Provider::ensure_base`] and tries again.
    async fn create(&self, spec: &MachineSpec) -> Result<MachineInfo>;

    async fn start(&self, id: &str) -> Result<()>;

    /// Starts machine `id`, which this provider has just created from `spec` (so it need
    /// not look the machine up again); returns a line for the user when it started in a way
    /// worth saying (restored warm, or booted cold when a warm start was asked and could not
    /// be made, with why). Default: [`Provider::start`], nothing to say.
    async fn start_created(&self, id: &str, spec: &MachineSpec) -> Result<Option<String>> {
        let _ = spec;
        self.start(id).await.map(|()| None)
    }

    /// Stops gracefully, then hard after `timeout`. Stopping a stopped machine succeeds.
    async fn stop(&self, id: &str, timeout: Duration) -> Result<()>;

    /// Stops a generation that another generation of the same machine replaces at once
    /// (started right after): what the machine holds beyond its own resource (host ports,
    /// names) stays for the next one. The default is [`Provider::stop`].
    async fn stop_for_handover(&self, id: &str, timeout: Duration) -> Result<()> {
        self.stop(id, timeout).await
    }

    /// Removes the machine and everything created only for it. Removing a missing one succeeds.
    async fn remove(&self, id: &str) -> Result<()>;

    async fn inspect(&self, id: &str) -> Result<MachineInfo>;

    /// What the engine says of itself: version, the host's CPUs and memory, its cluster.
    async fn engine_info(&self) -> Result<EngineInfo> {
        Err(ProviderError::NotSupported {
            provider: self.name(),
            what: "describing its engine".into(),
        })
    }

    /// Creates the environment's private network unless it exists (idempotent, safe to race);
    /// a network of that name that is not the environment's is a [`ProviderError::Conflict`].
    async fn ensure_network(&self, spec: &NetworkSpec) -> Result<()>;

    /// The environment's private network, made by [`Self::ensure_network`], as a bridge of
    /// this engine's host that another provider's machines there may join
    /// ([`NetworkSpec::join`]); `None` when it cannot be shared (no such capability, an
    /// engine on another host, a network made before it could be shared).
    async fn shared_network(&self, _spec: &NetworkSpec) -> Result<Option<SharedNetwork>> {
        Ok(None)
    }

    /// Makes `names` answer `address` in the DNS of the shared network `network` (a machine
    /// of the provider that joined it), taking them from whichever address had them.
    async fn name_on_network(
        &self,
        _network: &str,
        _address: &str,
        _names: &[String],
    ) -> Result<()> {
        Err(ProviderError::NotSupported {
            provider: self.name(),
            what: "naming another provider's machines on its network".into(),
        })
    }

    /// The machine's address on a shared network its provider joined ([`NetworkSpec::join`]),
    /// once it runs; `None` when it is on no shared network.
    async fn shared_address(&self, _id: &str) -> Result<Option<String>> {
        Ok(None)
    }

    /// Every non-machine resource (networks, volumes) whose labels match `selector`.
    async fn list_other(&self, selector: &Selector) -> Result<Vec<OtherResource>>;

    /// Every machine whose labels match `selector`, in any state.
    async fn list(&self, selector: &Selector) -> Result<Vec<MachineInfo>>;

    /// Removes every non-machine resource (networks, volumes) whose labels match `selector`;
    /// returns what it removed, one short description each.
    async fn purge(&self, selector: &Selector) -> Result<Vec<String>>;

    /// Runs a command to completion, streaming its output; returns its exit code.
    async fn exec(&self, id: &str, req: &ExecRequest, output: OutputSink<'_>) -> Result<i64>;

    /// Runs a command attached to a terminal (a TTY); returns its exit code.
    async fn exec_interactive(
        &self,
        id: &str,
        req: &ExecRequest,
        terminal: Terminal,
    ) -> Result<i64>;

    /// Unpacks a tar archive into `dest` (an absolute guest folder that exists). Folders an
    /// entry needs that do not exist are created (mode 0755, root); existing ones are kept.
    async fn upload(&self, id: &str, dest: &str, tar: Vec<u8>) -> Result<()>;

    /// Unpacks the tar archive in the host file `tar` into `dest` (an absolute guest folder
    /// that exists) of a running machine, streaming it: a large file is never held whole in
    /// memory (`envrig cp`). Entries keep their modes and the archive's owners.
    async fn copy_in(&self, _id: &str, _tar: &std::path::Path, _dest: &str) -> Result<()> {
        Err(ProviderError::NotSupported {
            provider: self.name(),
            what: "copying files into a machine".into(),
        })
    }

    /// Writes the guest path `src` of a running machine (a file, or a folder with all it
    /// holds) to the host file `tar` as a tar archive whose one top entry is `src`'s last
    /// component, streaming it (`envrig cp`). `NotFound` when there is no such path.
    async fn copy_out(&self, _id: &str, _src: &str, _tar: &std::path::Path) -> Result<()> {
        Err(ProviderError::NotSupported {
            provider: self.name(),
            what: "copying files out of a machine".into(),
        })
    }

    /// Streams a machine's log to `output` (`envrig logs`): a container's output, a VM's
    /// serial console or, with `req.journal`, its journal. With `req.follow` it goes on
    /// until the machine stops or the caller drops the call.
    async fn logs(&self, _id: &str, _req: &LogRequest, _output: OutputSink<'_>) -> Result<()> {
        Err(ProviderError::NotSupported {
            provider: self.name(),
            what: "logs".into(),
        })
    }

    /// The content of the small file `path` inside a running machine; `None` when there is
    /// no such file. The default runs `cat` in the machine.
    async fn read_file(&self, id: &str, path: &str) -> Result<Option<Vec<u8>>> {
        let req = ExecRequest {
            argv: vec!["cat".to_string(), "--".to_string(), path.to_string()],
            ..ExecRequest::default()
        };
        let mut out = Vec::new();
        let mut sink = |s: OutputStream, b: &[u8]| {
            if s == OutputStream::Stdout {
                out.extend_from_slice(b)
            }
        };
        let code = self.exec(id, &req, &mut sink).await?;
        Ok((code == 0).then_some(out))
    }

    /// Freezes a running machine's processes (for a consistent multi-machine snapshot).
    async fn pause(&self, id: &str) -> Result<()>;

    /// Suspends a running machine (`envrig suspend`): frees what it can while keeping where
    /// it was; [`Provider::unpause`] brings it back. By default a pause (the memory stays);
    /// libvirt saves the memory to disk and frees it.
    async fn suspend(&self, id: &str) -> Result<()> {
        self.pause(id).await
    }

    /// Thaws a paused machine. Resuming one that is not paused succeeds.
    async fn unpause(&self, id: &str) -> Result<()>;

    /// Saves machine `id` as snapshot `name`; `spec` is the machine's spec, `labels` are
    /// written on the snapshot (they carry the environment's identity), `running` says
    /// whether the machine runs (or is paused by the caller), as the caller just saw it: a
    /// restore leaves it that way. A running machine is saved consistently by the provider
    /// itself (frozen while saved); to save several at one moment the caller pauses them
    /// all first. Saving over an existing name is the caller's decision: the provider
    /// replaces it.
    async fn snapshot_save(
        &self,
        id: &str,
        name: &str,
        spec: &MachineSpec,
        labels: &BTreeMap<String, String>,
        running: bool,
    ) -> Result<Snapshot>;

    /// Every snapshot whose labels match `selector`.
    async fn snapshot_list(&self, selector: &Selector) -> Result<Vec<Snapshot>>;

    /// Replaces the machine (`current`, when it exists) by one made from `snap` with `spec`
    /// (whose labels name the environment it now belongs to), in the state it was saved in.
    async fn snapshot_restore(
        &self,
        snap: &Snapshot,
        current: Option<&str>,
        spec: &MachineSpec,
    ) -> Result<MachineInfo>;

    /// Deletes a snapshot; deleting one that is gone succeeds.
    async fn snapshot_delete(&self, snap: &Snapshot) -> Result<()>;

    /// Writes a snapshot's state to `dest` (a file), streaming; returns its size.
    async fn snapshot_export(&self, snap: &Snapshot, dest: &std::path::Path) -> Result<u64>;

    /// Checks a file that [`Provider::snapshot_export`] wrote on another host (a member of
    /// an archive given to `import`) before anything is loaded from it, without the engine:
    /// refuses ([`ProviderError::Refused`]) a file that reaches beyond itself, such as a
    /// disk image naming a host file as its backing file. The default accepts.
    async fn check_export(&self, _src: &std::path::Path) -> Result<()> {
        Ok(())
    }

    /// Whether this host can resume the running state an exported snapshot `src` carries
    /// (a VM's saved memory: its machine type, CPU model and memory), checked before
    /// anything is made unless the import is cold; refused ([`ProviderError::Refused`]) with
    /// why. A snapshot without running state, and the default, pass.
    async fn check_resume(&self, _src: &std::path::Path) -> Result<()> {
        Ok(())
    }

    /// Loads a snapshot exported by [`Provider::snapshot_export`] (checked by the caller),
    /// labelling it with `labels`; returns it as this engine knows it.
    async fn snapshot_import(
        &self,
        src: &std::path::Path,
        snap: &Snapshot,
        labels: &BTreeMap<String, String>,
    ) -> Result<Snapshot>;

    /// Bakes machine `id` into a new base named `name` (a docker image reference, a box),
    /// labelled with `labels`.
    async fn package(
        &self,
        id: &str,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<BaseInfo>;

    /// Adds a base to the provider's store from a local file or folder (providers with
    /// [`Capabilities::box_store`]); an existing name is replaced only with `force`. Never
    /// leaves a half-added box listed.
    async fn box_add(&self, name: &str, source: &std::path::Path, force: bool)
    -> Result<StoredBox>;

    /// The bases in the provider's store.
    async fn box_list(&self) -> Result<Vec<StoredBox>>;

    /// Removes a base from the store; refused while a machine uses it.
    async fn box_remove(&self, name: &str) -> Result<()>;

    /// How to reach the machine with OpenSSH, when the provider has SSH.
    async fn ssh_endpoint(&self, id: &str) -> Result<SshEndpoint>;

    /// Brings the machine's synced folders up to date where they are copies rather than
    /// live mounts (`provision` calls it before the steps); returns one line per folder
    /// copied, for the user. Live mounts need nothing: the default does nothing.
    async fn refresh_synced(&self, _id: &str) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// Asks a running machine to write what it holds in memory for its files to its disk,
    /// best effort, so that a snapshot's disk alone (an export) holds every file written
    /// before it. `snapshot save` calls it on every running machine while it does its own
    /// bookkeeping, before the moment is taken. Engines whose snapshot is the file system
    /// itself need nothing: the default does nothing.
    async fn flush(&self, _id: &str) -> Result<()> {
        Ok(())
    }

    /// Every baked layer on this host (labelled [`crate::labels::BAKED`]); none by default.
    async fn baked_layers(&self) -> Result<Vec<BakedLayer>> {
        Ok(Vec::new())
    }

    /// Removes baked layer `name`; refused (`Conflict`) while a machine is made from it.
    async fn remove_baked(&self, name: &str) -> Result<()> {
        Err(ProviderError::NotFound {
            what: format!("baked layer `{name}`"),
        })
    }

    /// Fetches the baked layer `reference` (`REGISTRY/REPOSITORY:TAG` in a registry: the team's
    /// layer cache) onto this engine as the layer `name`, checking what it receives (the
    /// registry's digests, and that it is the layer of `name`'s fingerprint). `base` is the
    /// base the machine would be made from without the layer: a provider whose layers lie
    /// over their base takes one only over the same base. `Ok(false)`: the registry has no
    /// such layer. Providers without a layer cache say `NotSupported`.
    async fn pull_baked(&self, reference: &str, name: &str, base: &str) -> Result<bool> {
        let _ = (reference, name, base);
        Err(ProviderError::NotSupported {
            provider: self.name(),
            what: "a layer cache in a registry".into(),
        })
    }

    /// Sends the baked layer `name` on this engine to the registry as `reference`.
    async fn push_baked(&self, name: &str, reference: &str) -> Result<()> {
        let _ = (name, reference);
        Err(ProviderError::NotSupported {
            provider: self.name(),
            what: "a layer cache in a registry".into(),
        })
    }

    /// Removes the work files and folders ([`crate::work`]) of envrig processes that are gone from
    /// the provider's own store (half-added boxes, unpacked imports, packaging folders);
    /// returns what went. Nothing by default.
    async fn sweep_work(&self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// Takes the machine's file system as it is now as the baseline [`Provider::drift`]
    /// compares with; called once its generation is provisioned (and after `provision`).
    async fn mark_baseline(&self, id: &str) -> Result<()>;

    /// The paths added, changed and deleted inside running machine `id` since its
    /// baseline, envrig's own records ([`drift::ENVRIG_DIR`]) left out; the core leaves out
    /// volatile and ignored paths.
    async fn drift(&self, id: &str) -> Result<Vec<drift::PathChange>>;
}
