//! The messages of the plugin protocol, one JSON object a line (see `docs/plugins.md`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{
    ExecRequest, LogRequest, MachineSpec, NetworkSpec, OutputStream, ProviderError, PullProgress,
    Selector, Snapshot,
};

/// The protocol's version: a plugin and a core agree on it in the hello, or part.
pub const PROTOCOL: u32 = 1;

/// The first line a plugin writes, before it is asked anything (and before it connects to
/// its engine): who it is, what it can do and its Envfile keys, its [`crate::Schema`]
/// (`name`, `capabilities`, `keys`, `box_ref`) beside the protocol version on one level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    #[serde(flatten)]
    pub schema: crate::Schema,
}

/// A line from the core to the plugin: a call, or the cancellation of one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToPlugin {
    /// Chosen by the core, unique among the calls in flight; every answer names it.
    pub id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<Call>,
    /// The core no longer waits for call `id`: the plugin stops it where it can.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel: bool,
}

/// A line from the plugin to the core, about call `id`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FromPlugin {
    pub id: u64,
    #[serde(flatten)]
    pub body: Body,
}

/// What a plugin says about a call: any number of events, then one `ok` or `error`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Body {
    /// The call's result (its shape is the trait method's return type).
    Ok(serde_json::Value),
    Error(WireError),
    /// A chunk of an `exec`'s or a `logs`' output.
    Output {
        stream: OutputStream,
        data: Bytes,
    },
    /// Progress of an `ensure_base`.
    Progress(PullProgress),
}

/// One call of a [`crate::Provider`] method, with its arguments. (Made once per call and
/// written out at once: its size does not matter.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "method", content = "params", rename_all = "snake_case")]
pub enum Call {
    /// Connects to the engine at `engine` (the provider's local engine when none); every
    /// other call connects to the local engine first when this one did not come first.
    Connect {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        engine: Option<crate::EngineAddress>,
    },
    /// What the engine says of itself ([`crate::EngineInfo`]).
    EngineInfo,
    EnsureBase {
        reference: String,
    },
    ResolveBase {
        reference: String,
    },
    Create {
        spec: MachineSpec,
    },
    Start {
        id: String,
    },
    StartCreated {
        id: String,
        spec: MachineSpec,
    },
    Stop {
        id: String,
        timeout_ms: u64,
    },
    StopForHandover {
        id: String,
        timeout_ms: u64,
    },
    Remove {
        id: String,
    },
    Inspect {
        id: String,
    },
    EnsureNetwork {
        spec: NetworkSpec,
    },
    SharedNetwork {
        spec: NetworkSpec,
    },
    NameOnNetwork {
        network: String,
        address: String,
        names: Vec<String>,
    },
    SharedAddress {
        id: String,
    },
    ListOther {
        selector: Selector,
    },
    List {
        selector: Selector,
    },
    Purge {
        selector: Selector,
    },
    Exec {
        id: String,
        request: ExecRequest,
    },
    Upload {
        id: String,
        dest: String,
        tar: Bytes,
    },
    ReadFile {
        id: String,
        path: String,
    },
    CopyIn {
        id: String,
        tar: PathBuf,
        dest: String,
    },
    CopyOut {
        id: String,
        src: String,
        tar: PathBuf,
    },
    Logs {
        id: String,
        request: LogRequest,
    },
    Pause {
        id: String,
    },
    Unpause {
        id: String,
    },
    Suspend {
        id: String,
    },
    SnapshotSave {
        id: String,
        name: String,
        spec: MachineSpec,
        labels: BTreeMap<String, String>,
        running: bool,
    },
    SnapshotList {
        selector: Selector,
    },
    SnapshotRestore {
        snapshot: Snapshot,
        current: Option<String>,
        spec: MachineSpec,
    },
    SnapshotDelete {
        snapshot: Snapshot,
    },
    SnapshotExport {
        snapshot: Snapshot,
        dest: PathBuf,
    },
    CheckExport {
        src: PathBuf,
    },
    CheckResume {
        src: PathBuf,
    },
    SnapshotImport {
        src: PathBuf,
        snapshot: Snapshot,
        labels: BTreeMap<String, String>,
    },
    Package {
        id: String,
        name: String,
        labels: BTreeMap<String, String>,
    },
    BoxAdd {
        name: String,
        source: PathBuf,
        force: bool,
    },
    BoxList,
    BoxRemove {
        name: String,
    },
    SshEndpoint {
        id: String,
    },
    RefreshSynced {
        id: String,
    },
    Flush {
        id: String,
    },
    BakedLayers,
    RemoveBaked {
        name: String,
    },
    PullBaked {
        reference: String,
        name: String,
        base: String,
    },
    PushBaked {
        name: String,
        reference: String,
    },
    SweepWork,
    MarkBaseline {
        id: String,
    },
    Drift {
        id: String,
    },
}

/// A [`ProviderError`] on the wire: its kind and its words (an engine error's causes are
/// joined into its message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WireError {
    Unavailable {
        message: String,
        hint: Option<String>,
    },
    NotInstalled {
        message: String,
        hint: Option<String>,
    },
    NotFound {
        what: String,
    },
    NotSupported {
        what: String,
    },
    Conflict {
        message: String,
    },
    Refused {
        message: String,
    },
    Engine {
        op: String,
        message: String,
    },
}

impl From<&ProviderError> for WireError {
    fn from(e: &ProviderError) -> Self {
        match e {
            ProviderError::Unavailable { message, hint, .. } => WireError::Unavailable {
                message: message.clone(),
                hint: hint.clone(),
            },
            ProviderError::NotInstalled { message, hint, .. } => WireError::NotInstalled {
                message: message.clone(),
                hint: hint.clone(),
            },
            ProviderError::NotFound { what } => WireError::NotFound { what: what.clone() },
            ProviderError::NotSupported { what, .. } => {
                WireError::NotSupported { what: what.clone() }
            }
            ProviderError::Conflict { message } => WireError::Conflict {
                message: message.clone(),
            },
            ProviderError::Refused { message } => WireError::Refused {
                message: message.clone(),
            },
            ProviderError::Engine { op, source, .. } => {
                let mut message = source.to_string();
                let mut cause = source.source();
                while let Some(c) = cause {
                    message.push_str(": ");
                    message.push_str(&c.to_string());
                    cause = c.source();
                }
                WireError::Engine {
                    op: op.clone(),
                    message,
                }
            }
        }
    }
}

impl WireError {
    /// The error as the provider called `provider` returned it.
    pub fn into_error(self, provider: &'static str) -> ProviderError {
        match self {
            WireError::Unavailable { message, hint } => ProviderError::Unavailable {
                provider,
                message,
                hint,
            },
            WireError::NotInstalled { message, hint } => ProviderError::NotInstalled {
                provider,
                message,
                hint,
            },
            WireError::NotFound { what } => ProviderError::NotFound { what },
            WireError::NotSupported { what } => ProviderError::NotSupported { provider, what },
            WireError::Conflict { message } => ProviderError::Conflict { message },
            WireError::Refused { message } => ProviderError::Refused { message },
            WireError::Engine { op, message } => ProviderError::Engine {
                provider,
                op,
                source: message.into(),
            },
        }
    }
}

/// Bytes, written as standard base64 in JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map(Bytes)
            .map_err(serde::de::Error::custom)
    }
}
