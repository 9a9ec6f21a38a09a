//! envrig: identical, disposable dev and test environments from one committed Envfile.
//!
//! The library holds everything but the process edge: the Envfile model ([`envfile`]), the
//! environment's identity ([`identity`]), the local state cache ([`state`]), the pure planner
//! ([`plan`]), the registry of providers ([`providers`]) and the operations behind each
//! command ([`ops`]). The binary (`src/main.rs`) is the CLI ([`cli`]).

pub mod cli;
pub mod envfile;
pub mod identity;
pub mod lock;
pub mod ops;
pub mod plan;
pub mod providers;
pub mod provision;
pub mod state;

/// This build's version, as written on every resource.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
