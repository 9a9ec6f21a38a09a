//! The operations behind the commands. Each takes a loaded [`Project`] (or none, for `ls`)
//! and a [`Context`], talks to providers through the registry, and returns data for the CLI
//! to print. Nothing here knows clap, colours or exit codes.

mod archive;
mod bake;
mod boxes;
mod cache;
mod catalog;
mod context;
mod copy;
mod create;
mod destroy;
mod drift;
mod engines;
mod error;
mod exec;
mod gc;
mod generations;
mod guest;
mod halt;
mod import;
mod init;
mod lockfile;
mod logs;
mod ls;
mod network;
mod observe;
mod parallel;
mod placement;
mod port;
mod project;
mod provision;
mod report;
mod resolved;
mod rollback;
mod run;
mod session;
mod share;
mod snapset;
mod snapshot;
mod spec;
mod staging;
mod start;
mod status;
mod suspend;
mod time;
pub mod trust;
mod up;

/// The archive verifier on its own, for the fuzz targets: checks a whole archive into a
/// staging folder and returns its manifest. Blocking.
pub use archive::verify as verify_archive;
pub use archive::{Manifest, export};
pub use boxes::{
    BoxRow, BoxSource, OutdatedRow, PruneReport, box_add, box_list, box_outdated, box_prune,
    box_remove, box_update,
};
pub use context::{Context, Unreachable, provider, running_engines};
pub use copy::{CopyReport, Place, copy, parse_place};
pub use destroy::{DestroySummary, destroy};
pub use drift::{DriftReport, drift};
pub use engines::{AddEngine, EngineRow, add as engine_add, ls as engine_ls, rm as engine_rm};
pub use envrig_provider_api::home::home_dir;
pub use error::OpError;
pub use exec::{exec, interactive, running_machine};
pub use gc::{GcItem, GcReport, gc};
pub use halt::halt;
pub use import::{ImportPlan, ImportReport, import_apply, import_check};
pub use init::{TEMPLATES, Template, init};
pub use lockfile::lock;
pub use logs::logs;
pub use ls::{EnvRow, ls};
pub use observe::{by_machine, observe};
pub use placement::{PlanAsk, PlanRow, up_plan};
pub use port::{parse_guest_port, port};
pub use project::{LoadSettings, Project, waves};
pub use provision::provision;
pub use report::{Phase, Reporter};
pub use resolved::Resolved;
pub use rollback::{RolledBack, rollback};
pub use run::{RunOptions, RunOutcome, run};
pub use session::Session;
pub use share::{is_reference as is_capsule_reference, pull_capsule, push_capsule};
pub use snapshot::{
    SnapshotRow, package, snapshot_delete, snapshot_list, snapshot_restore, snapshot_save,
};
pub use spec::{config_hash, machine_spec};
pub use status::{StatusReport, status};
pub use suspend::{Hold, suspend};
pub use time::{age, now_rfc3339, until};
pub use up::{UpOptions, UpOutcome, UpResult, up};
