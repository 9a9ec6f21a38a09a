//! The command line: parses flags (clap), calls `ops`, prints, and maps results to exit
//! codes. The only layer that knows clap, colours, TTYs and exit codes.
//!
//! Exit codes: 0 done; 1 the operation failed; 2 bad usage or an invalid Envfile; `exec`
//! and `ssh` exit with the command's own status.

mod import;
mod output;
mod ssh;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};

use crate::envfile::{self, LoadError};
use crate::ops::{self, Context, OpError, Project, UpOptions};
use crate::providers::Registry;
use output::{Printer, json_line};

#[derive(Debug, Parser)]
#[command(
    name = "envrig",
    version,
    about = "Identical, disposable dev and test environments from one committed Envfile",
    propagate_version = true,
    max_term_width = 100
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

    /// Override the default provider for this run
    #[arg(long, global = true, env = "ENVRIG_PROVIDER", value_parser = ["docker", "libvirt"])]
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
    Up {
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
    },
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
    Run {
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
    },
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
        #[arg(short = 'o', long = "output", value_name = "FILE", required = true)]
        output: PathBuf,
    },
    /// Recreate what an exported file holds, as a project of its own. An archive is
    /// untrusted: what it would take from this host is shown, and host paths outside DIR,
    /// privileges and host variables are refused unless `--trust`
    Import {
        file: PathBuf,
        /// The folder to import into (default: the current one)
        #[arg(short = 'C', value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Show what the archive holds and would take from this host, and stop
        #[arg(long)]
        dry_run: bool,
        /// Allow host paths outside DIR, privileged machines and host variables
        #[arg(long)]
        trust: bool,
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
    /// Print a shell completion script
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, Subcommand)]
enum BoxCommand {
    /// The boxes in the store
    List,
    /// Add a box from a .qcow2, a vagrant-libvirt .box, a box folder, or an http(s) URL of
    /// one of those files (downloaded with progress, resumed when run again after a break)
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
    /// Remove a box (refused while a machine uses it)
    Remove { name: String },
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

fn parse_duration(s: &str) -> Result<Duration, String> {
    envfile::values::parse_duration(s)
}

/// Runs the CLI with the process's arguments; returns the exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
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
    let code = runtime.block_on(run(cli, printer.clone(), log));
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

/// Runs one command; returns the process's exit code.
async fn run(cli: Cli, printer: Printer, log: &str) -> i32 {
    let cwd = match &cli.dir {
        Some(d) => match std::env::current_dir().map(|c| c.join(d)) {
            Ok(d) if d.is_dir() => d,
            _ => {
                printer.error(&format!("`-C {}`: no such folder", d.display()), None);
                return 2;
            }
        },
        None => match std::env::current_dir() {
            Ok(d) => d,
            Err(e) => {
                printer.error(&format!("cannot read the current folder: {e}"), None);
                return 1;
            }
        },
    };
    let registry = Registry::discover(log);
    let reporter: Arc<dyn ops::Reporter> = printer.reporter();
    let ctx = Context::new(registry, reporter, interrupts(printer.clone()));

    // Commands that need no Envfile.
    match &cli.command {
        Command::Init { template, force } => return cmd_init(&printer, &cwd, template, *force),
        Command::Ls => {
            return match ops::ls(&ctx).await {
                Ok(rows) => {
                    printer.ls(&rows);
                    0
                }
                Err(e) => fail(&printer, e),
            };
        }
        Command::Gc { dry_run } => {
            return match settle(&ctx, ops::gc(&ctx, *dry_run)).await {
                Ok(report) => {
                    printer.gc(&report);
                    0
                }
                Err(e) => fail(&printer, e),
            };
        }
        Command::Box(sub) => {
            let r = match sub {
                BoxCommand::List => ops::box_list(&ctx).await.map(|rows| printer.boxes(&rows)),
                BoxCommand::Add {
                    name,
                    source,
                    checksum,
                    force,
                } => settle(
                    &ctx,
                    ops::box_add(
                        &ctx,
                        name,
                        &ops::BoxSource::parse(source, &cwd),
                        checksum.as_deref(),
                        *force,
                    ),
                )
                .await
                .map(|row| printer.boxes_added(&row)),
                BoxCommand::Remove { name } => ops::box_remove(&ctx, name)
                    .await
                    .map(|()| printer.done(&format!("removed box `{name}`"))),
            };
            return match r {
                Ok(()) => 0,
                Err(e) => fail(&printer, e),
            };
        }
        Command::Import {
            file,
            dir,
            dry_run,
            trust,
        } => {
            let args = import::ImportArgs {
                file,
                dir: dir.as_deref(),
                dry_run: *dry_run,
                trust: *trust,
                provider: cli.provider.clone(),
            };
            return import::cmd_import(&printer, &ctx, &cwd, args).await;
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "envrig",
                &mut std::io::stdout(),
            );
            return 0;
        }
        _ => {}
    }

    let run_instance =
        matches!(cli.command, Command::Run { .. }).then(crate::identity::new_instance_id);
    let settings = ops::LoadSettings {
        provider_override: cli.provider.clone(),
        instance: run_instance.clone().or_else(|| cli.instance.clone()),
    };
    let mut project = match load(&printer, &ctx, &cwd, cli.file.as_deref(), &settings) {
        Ok(p) => p,
        Err(code) => return code,
    };
    if !project.warnings.diagnostics.is_empty() && !cli.quiet {
        eprint!("{}", project.warnings.render(printer.color));
    }

    match cli.command {
        Command::Init { .. }
        | Command::Ls
        | Command::Gc { .. }
        | Command::Import { .. }
        | Command::Box(_)
        | Command::Completions { .. } => 0,
        Command::Snapshot(sub) => {
            let r = match sub {
                SnapshotCommand::Save {
                    name,
                    machines,
                    force,
                } => settle(
                    &ctx,
                    ops::snapshot_save(&ctx, &project, &name, &machines, force),
                )
                .await
                .map(|m| printer.snapshot_done("saved", &name, &m)),
                SnapshotCommand::Restore { name, machines } => settle(
                    &ctx,
                    ops::snapshot_restore(&ctx, &project, &name, &machines),
                )
                .await
                .map(|m| printer.snapshot_done("restored", &name, &m)),
                SnapshotCommand::Delete { name } => {
                    settle(&ctx, ops::snapshot_delete(&ctx, &project, &name))
                        .await
                        .map(|m| printer.snapshot_done("deleted", &name, &m))
                }
                SnapshotCommand::List => ops::snapshot_list(&ctx, &project)
                    .await
                    .map(|rows| printer.snapshots(&rows)),
            };
            match r {
                Ok(()) => 0,
                Err(e) => fail(&printer, e),
            }
        }
        Command::Export {
            machines,
            snapshot,
            output,
        } => {
            match settle(
                &ctx,
                ops::export(
                    &ctx,
                    &project,
                    snapshot.as_deref(),
                    &machines,
                    &cwd.join(&output),
                ),
            )
            .await
            {
                Ok(manifest) => {
                    printer.exported(&cwd.join(&output), &manifest);
                    0
                }
                Err(e) => fail(&printer, e),
            }
        }
        Command::Package { machine, as_box } => {
            match settle(&ctx, ops::package(&ctx, &project, &machine, &as_box)).await {
                Ok(id) => {
                    printer.packaged(&machine, &as_box, &id);
                    0
                }
                Err(e) => fail(&printer, e),
            }
        }
        Command::Run {
            machine,
            command,
            keep_on_failure,
            ttl,
            parallel,
        } => {
            project.owner = Some(crate::identity::owner_token());
            project.ttl = ttl;
            let instance = project.identity.instance.clone().unwrap_or_default();
            printer.done(&format!(
                "run `{instance}` of `{}`",
                project.identity.project
            ));
            let opts = ops::RunOptions {
                machine,
                command,
                keep_on_failure,
                parallel: usize::from(parallel),
            };
            let r = settle(&ctx, ops::run(&ctx, &project, &opts)).await;
            match r {
                Ok(outcome) => {
                    printer.run(&outcome);
                    exit_status(outcome.exit_code.unwrap_or(1))
                }
                Err((e, outcome)) => {
                    printer.run(&outcome);
                    let code = fail(&printer, e);
                    if ctx.cancelled() { 130 } else { code.max(1) }
                }
            }
        }
        Command::Validate => {
            if cli.json {
                println!(
                    "{}",
                    json_line(
                        &serde_json::json!({"schema": output::SCHEMA_VALIDATE, "ok": true, "diagnostics": project.warnings.diagnostics.iter().map(|d| output::diagnostic_json(&project.warnings, d)).collect::<Vec<_>>()})
                    )
                );
            } else {
                println!("ok");
            }
            0
        }
        Command::Up {
            machines,
            recreate,
            parallel,
            no_provision,
            provision,
            ttl,
            locked,
            fresh,
        } => {
            project.ttl = ttl;
            let opts = UpOptions {
                machines,
                recreate,
                parallel: usize::from(parallel),
                no_provision,
                force_provision: provision,
                locked,
                fresh,
            };
            match settle(&ctx, ops::up(&ctx, &project, &opts)).await {
                Ok(outcomes) => {
                    printer.up(&project, &outcomes);
                    0
                }
                Err(e) => fail(&printer, e),
            }
        }
        Command::Lock => match settle(&ctx, ops::lock(&ctx, &project)).await {
            Ok(l) => {
                if printer.json {
                    println!(
                        "{}",
                        serde_json::json!({"schema": "envrig.lock/1", "lock": l})
                    );
                } else {
                    printer.done(&format!(
                        "wrote {} ({} boxes, {} machines)",
                        crate::lock::FILE_NAME,
                        l.boxes.len(),
                        l.machines.len()
                    ));
                }
                0
            }
            Err(e) => fail(&printer, e),
        },
        Command::Rollback { machines } => {
            match settle(&ctx, ops::rollback(&ctx, &project, &machines)).await {
                Ok(done) => {
                    if printer.json {
                        println!(
                            "{}",
                            serde_json::json!({"schema": "envrig.rollback/1", "machines": done})
                        );
                    } else {
                        for r in &done {
                            printer.done(&format!(
                                "`{}` rolled back: generation {} -> {}",
                                r.machine, r.from, r.to
                            ));
                        }
                    }
                    0
                }
                Err(e) => fail(&printer, e),
            }
        }
        Command::Drift { machine, exit_code } => {
            match settle(&ctx, ops::drift(&ctx, &project, &machine)).await {
                Ok(r) => {
                    if printer.json {
                        println!(
                            "{}",
                            serde_json::json!({
                                "schema": "envrig.drift/1",
                                "machine": r.machine,
                                "drifted": !r.changes.is_empty(),
                                "changes": r.changes,
                                "ignored": r.ignored,
                            })
                        );
                    } else if r.changes.is_empty() {
                        printer.done(&format!(
                            "no drift in `{}` since it was provisioned",
                            r.machine
                        ));
                    } else {
                        for c in &r.changes {
                            println!("{} {}", c.kind.letter(), c.path);
                        }
                    }
                    if exit_code && !r.changes.is_empty() {
                        3
                    } else {
                        0
                    }
                }
                Err(e) => fail(&printer, e),
            }
        }
        Command::Provision {
            machines,
            force,
            steps,
        } => match settle(
            &ctx,
            ops::provision(&ctx, &project, &machines, force, &steps),
        )
        .await
        {
            Ok(done) => {
                printer.provisioned(&done);
                0
            }
            Err(e) => fail(&printer, e),
        },
        Command::Status { machines } => match ops::status(&ctx, &project, &machines).await {
            Ok(report) => {
                printer.status(&report);
                0
            }
            Err(e) => fail(&printer, e),
        },
        Command::Exec {
            machine,
            command,
            user,
        } => match ops::exec(&ctx, &project, &machine, command, user).await {
            Ok(code) => exit_status(code),
            Err(e) => fail(&printer, e),
        },
        Command::Ssh { machine, command } => {
            ssh::cmd_ssh(&ctx, &printer, &project, &machine, command).await
        }
        Command::SshConfig { machine } => {
            ssh::cmd_ssh_config(&ctx, &printer, &project, machine).await
        }
        Command::Halt { machines, timeout } => {
            match settle(&ctx, ops::halt(&ctx, &project, &machines, timeout)).await {
                Ok(stopped) => {
                    printer.halt(&stopped);
                    0
                }
                Err(e) => fail(&printer, e),
            }
        }
        Command::Reload { machines } => {
            if let Err(e) = settle(
                &ctx,
                ops::halt(&ctx, &project, &machines, Duration::from_secs(60)),
            )
            .await
            {
                return fail(&printer, e);
            }
            let opts = UpOptions {
                machines,
                recreate: true,
                parallel: 8,
                no_provision: false,
                force_provision: false,
                locked: false,
                fresh: false,
            };
            match settle(&ctx, ops::up(&ctx, &project, &opts)).await {
                Ok(outcomes) => {
                    printer.up(&project, &outcomes);
                    0
                }
                Err(e) => fail(&printer, e),
            }
        }
        Command::Destroy { machines, force } => {
            if !force
                && !printer.json
                && std::io::stdin().is_terminal()
                && std::io::stderr().is_terminal()
            {
                let what = if machines.is_empty() {
                    format!(
                        "every machine of `{}` ({})",
                        project.identity.project,
                        project.identity.folder.display()
                    )
                } else {
                    format!(
                        "{} of `{}`",
                        machines
                            .iter()
                            .map(|m| format!("`{m}`"))
                            .collect::<Vec<_>>()
                            .join(", "),
                        project.identity.project
                    )
                };
                if !output::confirm(&format!("destroy {what}?")) {
                    printer.done("nothing destroyed");
                    return 1;
                }
            }
            match settle(&ctx, ops::destroy(&ctx, &project, &machines)).await {
                Ok(summary) => {
                    printer.destroy(&summary);
                    0
                }
                Err(e) => fail(&printer, e),
            }
        }
    }
}

/// Awaits an operation, then settles the live display before anything else is printed.
async fn settle<T>(ctx: &Context, op: impl std::future::Future<Output = T>) -> T {
    let r = op.await;
    ctx.reporter.finish();
    r
}

/// A command's exit code as this process's: codes outside 0-255 become 1 (or 255).
fn exit_status(code: i64) -> i32 {
    match code {
        0..=255 => code as i32,
        c if c < 0 => 1,
        _ => 255,
    }
}

fn fail(printer: &Printer, e: OpError) -> i32 {
    printer.error(&e.to_string(), e.hint().as_deref());
    match e {
        OpError::Interrupted { .. } => 130,
        e if e.is_usage() => 2,
        _ => 1,
    }
}

/// Ctrl-C and SIGTERM: the first asks operations to start no new work and finish cleanly;
/// a second one exits at once.
fn interrupts(printer: Printer) -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            return;
        };
        for round in 0..2 {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            if round == 0 {
                printer.done("interrupted: finishing what is in flight and cleaning up (again to stop at once)");
                let _ = tx.send(true);
            } else {
                std::process::exit(130);
            }
        }
    });
    rx
}

fn display_path(cwd: &Path, path: &Path) -> String {
    path.strip_prefix(cwd)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| path.to_string_lossy().into_owned())
}

fn load(
    printer: &Printer,
    ctx: &Context,
    cwd: &Path,
    file: Option<&Path>,
    settings: &ops::LoadSettings,
) -> Result<Project, i32> {
    let Some(path) = envfile::find(cwd, file) else {
        printer.error(
            &format!("no Envfile in {} or its parent folders", cwd.display()),
            Some("`envrig init` writes one, or point `-f FILE` at one"),
        );
        return Err(2);
    };
    let shown = display_path(cwd, &path);
    match Project::load(&path, &shown, &ctx.registry, settings) {
        Ok(p) => Ok(p),
        Err(LoadError::Io { path, source }) => {
            printer.error(&format!("cannot read {}: {source}", path.display()), None);
            Err(2)
        }
        Err(LoadError::Invalid(report)) => {
            if printer.json {
                println!(
                    "{}",
                    json_line(
                        &serde_json::json!({"schema": output::SCHEMA_VALIDATE, "ok": false, "diagnostics": report.diagnostics.iter().map(|d| output::diagnostic_json(&report, d)).collect::<Vec<_>>()})
                    )
                );
            }
            eprint!("{}", report.render(printer.color));
            Err(2)
        }
    }
}

fn cmd_init(printer: &Printer, cwd: &Path, template: &str, force: bool) -> i32 {
    if template == "list" {
        for t in ops::TEMPLATES {
            println!("{:<8}  {}", t.name, t.summary);
        }
        return 0;
    }
    match ops::init(cwd, template, force) {
        Ok(path) => {
            printer.done(&format!(
                "wrote {} from the `{template}` template",
                display_path(cwd, &path)
            ));
            printer
                .hint("`envrig up` builds it; add `.envrig/` to .gitignore (envrig's local cache)");
            0
        }
        Err(e) => fail(printer, e),
    }
}
