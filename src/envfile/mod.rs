//! The Envfile: its model, and loading it from disk into that model with every problem found.
//!
//! Loading is two steps kept apart, as ripgrep keeps low and high args apart: [`parse`]
//! walks the spanned TOML document, checks every key and value and merges `[defaults]`
//! (module `walk`, reading values through `read` and machines through `machine`); then each
//! machine is resolved against the providers this envrig has (its provider, its base, the
//! keys the provider's capabilities allow), and dependency cycles are found (`cycles`).
//! What providers own (their names, their tables' keys, box references) is read against
//! their schemas in `provider_schema`; the format itself names no provider. Every problem is a
//! [`Diagnostic`] with a span and a key path; all are reported at once.

mod cycles;
mod diag;
mod expand;
mod machine;
mod provider_schema;
mod read;
pub mod values;
mod walk;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use envrig_provider_api::{OptionValue, PortSpec};

pub use diag::{Diagnostic, Report, Severity, did_you_mean, line_col};
pub use expand::{ExpandError, expand};
pub use provider_schema::Providers;
pub use values::{Name, Subnet};

/// The file name envrig looks for.
pub const FILE_NAME: &str = "Envfile";

/// How many generations of a machine are kept when `[project] keep` does not say.
pub const DEFAULT_KEEP: u32 = 2;

/// A loaded, validated Envfile.
#[derive(Debug, Clone)]
pub struct Envfile {
    /// Absolute path of the file.
    pub path: PathBuf,
    /// Absolute folder holding it; relative paths in the file start here.
    pub dir: PathBuf,
    pub project: Project,
    pub network: Network,
    pub boxes: Vec<BoxDef>,
    /// In file order.
    pub machines: Vec<Machine>,
}

#[derive(Debug, Clone)]
pub struct Project {
    pub name: Name,
    /// Whether the name was derived from the folder rather than written.
    pub name_from_folder: bool,
    pub provider: Option<String>,
    pub immutable: bool,
    pub keep: u32,
    pub bake: bool,
    /// `warm = true`: machines whose provider can ([`envrig_provider_api::Capabilities::warm_start`])
    /// keep their running memory with their baked layer and start from it.
    pub warm: bool,
    /// `placement = "spread"`: with several engine endpoints, machines go to the engine
    /// with the most headroom each; else (`pack`) an environment's machines of one provider
    /// go to one engine.
    pub spread: bool,
    /// `cache = "REGISTRY/REPOSITORY"`: the team's layer cache (`ENVRIG_CACHE` overrides).
    pub cache: Option<String>,
    /// `cache_push = true`: layers baked here are pushed to the cache (as `up --push`).
    pub cache_push: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Network {
    pub subnet: Option<Subnet>,
}

/// `[boxes.NAME]`: one base, a reference per provider.
#[derive(Debug, Clone)]
pub struct BoxDef {
    pub name: String,
    /// Provider name to reference (`docker = "debian:12"`).
    pub refs: BTreeMap<String, String>,
}

/// Where a key of a machine was written (the machine's own table or `[defaults]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpan {
    pub path: String,
    pub span: Range<usize>,
}

/// One machine, with `[defaults]` merged in and its provider resolved.
#[derive(Debug, Clone)]
pub struct Machine {
    pub name: Name,
    /// The resolved provider name.
    pub provider: String,
    pub box_name: String,
    /// The provider's reference for the box (`debian:12`).
    pub base: String,
    pub cpus: Option<u32>,
    pub memory: Option<u64>,
    pub hostname: String,
    pub ports: Vec<PortSpec>,
    pub synced: Vec<Synced>,
    pub env: BTreeMap<String, String>,
    pub depends_on: Vec<Name>,
    pub ttl: Option<Duration>,
    pub command: Option<Vec<String>>,
    pub drift_ignore: Vec<String>,
    pub ready: Option<Ready>,
    pub provision: Vec<Step>,
    /// `engine = "NAME"`: pinned to that engine endpoint.
    pub engine: Option<String>,
    /// `warm`, when the machine says it (else `[project] warm`).
    pub warm: Option<bool>,
    /// `engine_labels = { k = "v" }`: any engine endpoint whose labels match.
    pub engine_labels: BTreeMap<String, String>,
    /// `[machines.NAME.<provider>]` tables, by provider name.
    pub provider_options: BTreeMap<String, BTreeMap<String, OptionValue>>,
    /// Where each key was written, for diagnostics found after parsing.
    pub origins: BTreeMap<&'static str, KeySpan>,
    /// The span of the machine's name in `[machines.NAME]`.
    pub span: Range<usize>,
}

impl Machine {
    /// The options for the machine's own provider.
    pub fn options(&self) -> BTreeMap<String, OptionValue> {
        self.provider_options
            .get(&self.provider)
            .cloned()
            .unwrap_or_default()
    }
}

/// A synced folder, host path resolved against the Envfile's folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synced {
    pub host: PathBuf,
    pub guest: String,
    pub read_only: bool,
}

/// `[machines.NAME.ready]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    pub command: String,
    pub timeout: Duration,
    pub interval: Duration,
}

/// One `[[machines.NAME.provision]]` step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub index: usize,
    pub name: Option<String>,
    pub kind: StepKind,
    pub run: RunPolicy,
    pub user: Option<String>,
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepKind {
    /// Inline shell, run with `/bin/sh -c`, not expanded on the host.
    Shell(String),
    /// A host file (relative to the Envfile) copied in and run.
    Script { path: String, args: Vec<String> },
    /// A host file or folder copied to a guest path.
    File { source: String, destination: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunPolicy {
    Once,
    Always,
    Never,
}

/// What loading needs from the outside world; tests pass their own.
pub struct LoadOptions<'a> {
    /// The host's environment, for `${VAR}`.
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// `--provider` / `ENVRIG_PROVIDER`.
    pub provider_override: Option<&'a str>,
    /// The providers this envrig has (names, the default first) and their schemas.
    pub providers: &'a dyn Providers,
    /// Whether host paths must exist. `false` when the files are not in place yet, as when
    /// `import` reads an archive's Envfile before writing anything.
    pub check_paths: bool,
}

/// Why an Envfile could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not valid", .0.display_path)]
    Invalid(Box<Report>),
}

/// Finds the Envfile: `explicit` if given, else `Envfile` in `start` or its parents.
pub fn find(start: &Path, explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(start.join(p));
    }
    let mut dir = Some(start);
    while let Some(d) = dir {
        let candidate = d.join(FILE_NAME);
        if candidate.is_file() {
            return Some(candidate);
        }
        dir = d.parent();
    }
    None
}

/// Reads and validates the Envfile at `path` (made absolute by the caller). On success the
/// report holds the warnings, if any.
pub fn load(
    path: &Path,
    display_path: &str,
    opts: &LoadOptions<'_>,
) -> Result<(Envfile, Report), LoadError> {
    let source = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&source, path, display_path, opts)
}

/// `[project] keep` of the Envfile at `path`, read on its own (for `gc`, which must not
/// depend on the rest of the file being valid): [`DEFAULT_KEEP`] when it is not written,
/// not between 1 and 100, or the file cannot be read (`gc` never removes more than an
/// Envfile it cannot read would).
pub fn keep_of(path: &Path) -> u32 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .and_then(|t| t.get("project")?.get("keep")?.as_integer())
        .filter(|k| (1..=100).contains(k))
        .map(|k| k as u32)
        .unwrap_or(DEFAULT_KEEP)
}

/// Validates `source` as the Envfile at `path`.
pub fn parse(
    source: &str,
    path: &Path,
    display_path: &str,
    opts: &LoadOptions<'_>,
) -> Result<(Envfile, Report), LoadError> {
    let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
    let (envfile, diagnostics) = walk::parse_document(source, path, &dir, opts);
    let report = Report {
        display_path: display_path.to_string(),
        source: source.to_string(),
        diagnostics,
    };
    match envfile {
        Some(e) if !report.has_errors() => Ok((e, report)),
        _ => Err(LoadError::Invalid(Box::new(report))),
    }
}

/// Every key the Envfile accepts, as `(table, key)` pairs in the order the parser checks
/// them, tables written as `docs/envfile.md` heads them: `""` (the top level), `project`,
/// `machines.NAME`, `machines.NAME.provision[]` (each step), `machines.NAME.synced[]`...
/// `[boxes.NAME]` and the `[machines.NAME.<provider>]` tables take what `providers` say of
/// themselves (a provider whose schema cannot be had adds its name only); `[defaults]`
/// takes the keys of `machines.NAME`. The reference page and `envrig help envfile` are
/// kept true by this list (`tests/docs.rs`).
pub fn known_keys(providers: &dyn Providers) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut add = |table: &str, keys: &[&str]| {
        out.extend(keys.iter().map(|k| (table.to_string(), k.to_string())));
    };
    add("", walk::TOP_KEYS);
    add("project", walk::PROJECT_KEYS);
    add("network", walk::NETWORK_KEYS);
    add("boxes.NAME", &providers.names());
    add("machines.NAME", machine::MACHINE_KEYS);
    add("machines.NAME", &providers.names());
    add("machines.NAME.ready", machine::READY_KEYS);
    add("machines.NAME.provision[]", machine::STEP_KEYS);
    add("machines.NAME.provision[].file", machine::FILE_KEYS);
    add("machines.NAME.synced[]", machine::SYNCED_KEYS);
    for name in providers.names() {
        if let Some(schema) = providers.schema(name) {
            let keys: Vec<&str> = schema.keys.iter().map(|k| k.name.as_str()).collect();
            add(&format!("machines.NAME.{name}"), &keys);
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests;
