//! The command line: parses flags (clap), calls `ops`, prints, and maps results to exit
//! codes. The only layer that knows clap, colours, TTYs and exit codes.
//!
//! Exit codes: 0 done; 1 the operation failed; 2 bad usage or an invalid Envfile; `exec`
//! and `ssh` exit with the command's own status.

mod commands;
mod help;
mod output;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::envfile;
use output::Printer;

#[derive(Debug, Parser)]
#[command(
    name = "envrig",
    version,
    about = "Identical, disposable dev and test environments from one committed Envfile",
    propagate_version = true,
    max_term_width = 100,
    after_help = "The Envfile's tables and keys: `envrig help envfile` (every key: docs/envfile.md)."
)]
struct Cli {
    /// Run as if started in DIR
    #[arg(short = 'C', value_name = "DIR")]
    dir: Option<PathBuf>,

    /// The Envfile to use (default: ./Envfile, searching parent folders)
    #[arg(short = 'f', long = "file", value_name = "FILE", env = "ENVRIG_FILE")]
    file: Option<PathBuf>,

    /// Machine-readable output on stdout (logs go to stderr)
    #[arg(long, global = true)]
    json: bool,

    /// Quieter output
    #[arg(short, long, global = true)]
    quiet: bool,

    /// More output (-vv for even more); RUST_LOG works too
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    /// Override the default provider for this run (a built-in provider, or a plugin found)
    #[arg(long, global = true, env = "ENVRIG_PROVIDER")]
    provider: Option<String>,

    /// Address the environment of one `envrig run` (kept with --keep-on-failure)
    #[arg(long, global = true, env = "ENVRIG_INSTANCE", value_name = "ID", value_parser = parse_instance)]
    instance: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write an Envfile from a template (`--template list` lists them)
    Init {
        #[arg(long, default_value = "basic", value_name = "NAME")]
        template: String,
        /// Replace an existing Envfile
        #[arg(long)]
        force: bool,
    },
    /// Check the Envfile and every path it names
    Validate,
    /// Create and start machines; a second `up` changes nothing
    Up(UpArgs),
    /// Resolve every box to what it is on this host and write Envfile.lock
    Lock,
    /// Switch machines back to their previous kept generation
    Rollback { machines: Vec<String> },
    /// What changed inside a running machine since it was provisioned (added, changed,
    /// deleted paths)
    Drift {
        machine: String,
        /// Exit 3 when there is drift (for CI)
        #[arg(long)]
        exit_code: bool,
    },
    /// For CI: up an environment of its own, run CMD in it, destroy it whatever happened
    Run(RunArgs),
    /// Destroy expired machines and whatever belongs to environments that are gone
    Gc {
        /// Only say what would be removed
        #[arg(long)]
        dry_run: bool,
    },
    /// Run provisioning steps again on running machines
    Provision {
        machines: Vec<String>,
        /// Run every `once` step again, not only new and changed ones
        #[arg(long)]
        force: bool,
        /// Run only the steps with this `name` (`run = "never"` steps included)
        #[arg(long = "step", value_name = "NAME")]
        steps: Vec<String>,
    },
    /// One row per machine: name, provider, state, ports, age
    Status { machines: Vec<String> },
    /// Every environment on this host, from the engines' labels
    Ls,
    /// Run a command in a machine; its output and exit code are the command's
    Exec {
        /// Run as this user (name or uid) instead of the machine's login user
        #[arg(long, short = 'u')]
        user: Option<String>,
        machine: String,
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// An interactive shell in a machine (with a CMD and no TTY, like `exec`)
    Ssh {
        machine: String,
        #[arg(last = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// An OpenSSH config block for a machine, for scp, rsync and editors
    SshConfig { machine: Option<String> },
    /// Stop machines gracefully, keeping their disks
    Halt {
        machines: Vec<String>,
        /// Stop hard after this long
        #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "D")]
        timeout: Duration,
    },
    /// Hold running machines where they are, freeing what can be (libvirt: memory saved to
    /// disk; docker: paused); `resume` or `up` brings them back
    Suspend { machines: Vec<String> },
    /// Bring suspended machines back, running where they were
    Resume { machines: Vec<String> },
    /// Halt and up again; machines whose settings changed are recreated
    Reload { machines: Vec<String> },
    /// Remove machines and everything created for them
    Destroy {
        machines: Vec<String>,
        /// Do not ask
        #[arg(short = 'f', long)]
        force: bool,
    },
    /// Named snapshots of machines' whole state
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// One portable file holding machines (now, or as a snapshot) with their Envfile
    Export {
        machines: Vec<String>,
        /// Export this snapshot instead of the machines as they are now
        #[arg(long, value_name = "NAME")]
        snapshot: Option<String>,
        /// The file to write
        #[arg(
            short = 'o',
            long = "output",
            value_name = "FILE",
            required_unless_present = "to",
            conflicts_with = "to"
        )]
        output: Option<PathBuf>,
        /// Send it to a registry instead, as REGISTRY/REPOSITORY:TAG (an OCI artifact)
        #[arg(long, value_name = "REF")]
        to: Option<String>,
    },
    /// Recreate what an exported file holds, as a project of its own. An archive is
    /// untrusted: what it would take from this host is shown, and host paths outside DIR,
    /// privileges and host variables are refused unless `--trust`
    Import {
        /// The archive: a file, or REGISTRY/REPOSITORY:TAG that `export --to` sent
        file: PathBuf,
        /// The folder to import into (default: the current one)
        #[arg(short = 'C', value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Show what the archive holds and would take from this host, and stop
        #[arg(long)]
        dry_run: bool,
        /// Allow host paths outside DIR, privileged machines, host variables and resuming
        /// saved memory
        #[arg(long)]
        trust: bool,
        /// Bring machines back from their disks and boot them, even those saved with their
        /// memory (which otherwise resume where they were)
        #[arg(long)]
        cold: bool,
    },
    /// Bake a machine into a new base box (a docker image)
    Package {
        machine: String,
        /// The new box's name (for docker: an image reference like `myapp-dev:1`)
        #[arg(long = "as", value_name = "BOX", required = true)]
        as_box: String,
    },
    /// The local store of base boxes for libvirt
    #[command(subcommand)]
    Box(BoxCommand),
    /// Engine endpoints beyond the local ones (kept outside the Envfile, for this user or
    /// the file ENVRIG_ENGINES names)
    #[command(subcommand)]
    Engine(EngineCommand),
    /// The host side of a running machine's forwarded ports (all, or GUEST_PORT's: `80`,
    /// `53/udp`)
    Port {
        machine: String,
        #[arg(value_name = "GUEST_PORT", value_parser = parse_guest_port)]
        guest: Option<(u16, envrig_provider_api::Protocol)>,
    },
    /// Machines' logs: a container's output, a VM's serial console (or its journal);
    /// several machines interleave, each line marked with its machine
    Logs(LogsArgs),
    /// Copy a file or folder between the host and a running machine (MACHINE:/PATH on one
    /// side): into a folder that exists, else as that name
    Cp {
        #[arg(value_name = "SRC", value_parser = parse_place)]
        src: crate::ops::Place,
        #[arg(value_name = "DST", value_parser = parse_place)]
        dst: crate::ops::Place,
    },
    /// Print a shell completion script
    Completions { shell: clap_complete::Shell },
}

/// The flags of `logs`.
#[derive(Debug, Args)]
struct LogsArgs {
    /// The machines (default: every created one)
    machines: Vec<String>,
    /// Go on with what comes until Ctrl-C (or until the machines stop)
    #[arg(short = 'f', long)]
    follow: bool,
    /// Only what came since: a duration ago (`10m`) or a time (`2026-12-06T10:00:00Z`)
    #[arg(long, value_name = "D|TIME", value_parser = parse_since)]
    since: Option<i64>,
    /// Only the last N lines of each machine
    #[arg(short = 'n', long, value_name = "N")]
    tail: Option<u64>,
    /// A VM's journal (`journalctl` in the guest) instead of its serial console
    #[arg(long)]
    journal: bool,
}

/// The flags of `up`.
#[derive(Debug, Args)]
struct UpArgs {
    machines: Vec<String>,
    /// Recreate machines whose settings changed
    #[arg(long)]
    recreate: bool,
    /// How many machines to work on at once
    #[arg(long, default_value_t = 8, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    parallel: u16,
    /// Run no provisioning steps and no readiness checks
    #[arg(long, conflicts_with = "provision")]
    no_provision: bool,
    /// Run every `once` step again, not only new and changed ones
    #[arg(long)]
    provision: bool,
    /// `envrig gc` destroys machines created now this long after (replaces `ttl`)
    #[arg(long, value_parser = parse_duration, value_name = "D")]
    ttl: Option<Duration>,
    /// Refuse (exit 2) when Envfile.lock is missing or differs from the Envfile or this
    /// host (for CI)
    #[arg(long)]
    locked: bool,
    /// Ignore baked layers: machines created now run all their steps
    #[arg(long)]
    fresh: bool,
    /// Say what would be done and on which engine, doing nothing
    #[arg(long)]
    plan: bool,
    /// Make machines whose engine does not answer again on another one
    #[arg(long)]
    reschedule: bool,
    /// Push the layers baked here to the team's layer cache (`[project] cache` or
    /// ENVRIG_CACHE)
    #[arg(long)]
    push: bool,
}

/// The flags of `run`.
#[derive(Debug, Args)]
struct RunArgs {
    /// The machine to run in (default: the only one, or the first declared)
    machine: Option<String>,
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
    /// Keep the environment when the command fails, and say how to reach it
    #[arg(long)]
    keep_on_failure: bool,
    /// `envrig gc` destroys the environment this long after (if this process cannot)
    #[arg(long, value_parser = parse_duration, value_name = "D")]
    ttl: Option<Duration>,
    /// How many machines to work on at once
    #[arg(long, default_value_t = 8, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    parallel: u16,
}

#[derive(Debug, Subcommand)]
enum BoxCommand {
    /// The boxes in the store
    List,
    /// Add a box from a .qcow2, a vagrant-libvirt .box, a box folder, an http(s) URL of one
    /// of those files (downloaded with progress, resumed when run again after a break), or a
    /// Vagrant box catalog (metadata JSON: its newest version, kept as NAME@VERSION)
    Add {
        name: String,
        source: String,
        /// The source's sha256 (`sha256:HEX`): a box that differs is not added
        #[arg(long, value_name = "sha256:HEX")]
        checksum: Option<String>,
        /// Replace a box of that name
        #[arg(short = 'f', long)]
        force: bool,
    },
    /// Remove a box, or one version of it (NAME@VERSION); refused while a machine uses it
    Remove { name: String },
    /// Boxes from catalogs whose catalog has a newer version
    Outdated,
    /// Add the newest version of a box from its catalog, beside the versions here (machines
    /// keep the one they were made from)
    Update { name: String },
    /// Remove every version of a box but the newest, unless a machine or ./Envfile.lock
    /// uses it
    Prune,
}

#[derive(Debug, Subcommand)]
enum EngineCommand {
    /// Add an engine endpoint: Docker `unix://`, `tcp://`, `ssh://`; libvirt `qemu:///system`,
    /// `qemu+ssh://`, `qemu+tcp://`, `qemu+tls://`
    Add {
        name: String,
        uri: String,
        /// A label machines may ask for (`engine_labels` in the Envfile)
        #[arg(long = "label", value_name = "K=V")]
        labels: Vec<String>,
        /// At most this many envrig machines on it at a time
        #[arg(long, value_name = "N")]
        max_machines: Option<u32>,
        /// A folder with ca.pem, cert.pem and key.pem: reach the engine over TLS
        #[arg(long, value_name = "DIR")]
        cert_path: Option<std::path::PathBuf>,
        /// Replace an endpoint of that name
        #[arg(short = 'f', long)]
        force: bool,
    },
    /// Every endpoint: reachable?, version, CPUs, memory, envrig machines
    Ls,
    /// Stop using an endpoint (refused while it holds envrig machines, unless --force)
    Rm {
        name: String,
        #[arg(short = 'f', long)]
        force: bool,
    },
    /// Ask endpoints (all, or those named) whether they answer; exit 1 when one does not
    Check { names: Vec<String> },
}

#[derive(Debug, Subcommand)]
enum SnapshotCommand {
    /// Save machines (all, at one moment, when none is named) as snapshot NAME
    Save {
        name: String,
        machines: Vec<String>,
        /// Replace a snapshot of that name
        #[arg(short = 'f', long)]
        force: bool,
    },
    /// Bring machines back to snapshot NAME, in place
    Restore { name: String, machines: Vec<String> },
    /// The environment's snapshots
    List,
    /// Delete snapshot NAME of every machine
    Delete { name: String },
}

fn parse_instance(s: &str) -> Result<String, String> {
    let ok =
        s.starts_with("run-") && s.len() <= 40 && s[4..].chars().all(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "`{s}` is not a run instance id like `run-1a2b3c4d`"
        ))
    }
}

fn parse_guest_port(s: &str) -> Result<(u16, envrig_provider_api::Protocol), String> {
    crate::ops::parse_guest_port(s)
}

fn parse_place(s: &str) -> Result<crate::ops::Place, String> {
    crate::ops::parse_place(s)
}

/// `--since`: seconds since the epoch, from a duration ago or an RFC 3339 time.
fn parse_since(s: &str) -> Result<i64, String> {
    let now = std::time::SystemTime::now();
    let at = match humantime::parse_rfc3339_weak(s) {
        Ok(t) => t,
        Err(_) => {
            now - parse_duration(s).map_err(|_| {
                format!("`{s}` is neither a duration like 10m nor a time like 2026-12-06T10:00:00Z")
            })?
        }
    };
    Ok(at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    envfile::values::parse_duration(s)
}

/// The command line's definition, for generating its reference (`docs/cli.md`, the man
/// pages in `docs/man/`: `tests/docs.rs`).
pub fn command() -> clap::Command {
    Cli::command()
}

/// What `envrig help envfile` prints, given the providers whose keys it lists.
pub fn envfile_help(providers: &dyn envfile::Providers) -> String {
    help::envfile_summary(providers)
}

/// Runs the CLI with the process's arguments; returns the exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // `help envfile` is a topic, not a command: clap's `help` reports it unknown.
            let args: Vec<_> = std::env::args_os().skip(1).collect();
            let cmd = Cli::command();
            let takes_value = |flag: &str| {
                cmd.get_arguments().any(|a| {
                    a.get_action().takes_values()
                        && (a.get_short().is_some_and(|c| flag == format!("-{c}"))
                            || a.get_long().is_some_and(|l| flag == format!("--{l}")))
                })
            };
            if help::asks_for_envfile(&args, &takes_value) {
                let registry = crate::providers::Registry::discover("error");
                print!("{}", help::envfile_summary(&registry));
                return ExitCode::SUCCESS;
            }
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let log = init_tracing(&cli);
    let printer = Printer::new(cli.json, cli.quiet);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            printer.error(&format!("cannot start the async runtime: {e}"), None);
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(commands::run(cli, printer.clone(), log));
    // Exit at once: a blocking stdin reader (ssh) must not hold the runtime's shutdown.
    use std::io::Write;
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

/// Sets up logging; returns the level (`warn`, `debug`...) plugins are started with.
fn init_tracing(cli: &Cli) -> &'static str {
    let default = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (_, 0) => "warn",
        (_, 1) => "info",
        (_, 2) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .try_init();
    default
}
