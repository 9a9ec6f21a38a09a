//! One file per command group, as cargo's `commands/` are: each parses nothing (clap did),
//! calls `ops`, prints through the [`Printer`] and returns the exit code. This file
//! dispatches, loads the project for the commands that need one, and holds what they share
//! (awaiting an operation, mapping an error to an exit code).

mod boxes;
mod engine;
mod files;
mod generations;
mod host;
mod import;
mod init;
mod lifecycle;
mod run;
mod snapshot;
mod ssh;
mod up;

use std::path::Path;
use std::sync::Arc;

use clap::CommandFactory;

use super::output::{self, Printer, json_line};
use super::{Cli, Command};
use crate::envfile::{self, LoadError};
use crate::ops::{self, Context, OpError, Project};
use crate::providers::Registry;

/// Runs one command; returns the process's exit code.
/// `log` is the verbosity plugins are started with.
pub(super) async fn run(cli: Cli, printer: Printer, log: &str) -> i32 {
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
    if let Some(name) = &cli.provider
        && let Some((message, hint)) = registry.unknown(name)
    {
        printer.error(&format!("`--provider {name}`: {message}"), Some(&hint));
        return 2;
    }
    let engines = match crate::engines::Engines::load(&crate::engines::file()) {
        Ok(e) => e,
        Err(e) => {
            printer.error(
                &format!("the engine endpoints: {e}"),
                Some("fix the file, or remove it to use the local engines"),
            );
            return 2;
        }
    };
    let reporter: Arc<dyn ops::Reporter> = printer.reporter();
    let ctx = Context::new(registry, engines, reporter, interrupts(printer.clone()));

    // Commands that need no Envfile.
    match &cli.command {
        Command::Init { template, force } => {
            return init::init(&printer, &cwd, template, *force);
        }
        Command::Ls => return host::ls(&ctx, &printer).await,
        Command::Gc { dry_run } => return host::gc(&ctx, &printer, *dry_run).await,
        Command::Box(sub) => return boxes::boxes(&ctx, &printer, &cwd, sub).await,
        Command::Engine(sub) => {
            return engine::engine(&ctx, &printer, sub, cli.provider.as_deref()).await;
        }
        Command::Import {
            file,
            dir,
            dry_run,
            trust,
            cold,
        } => {
            let args = import::ImportArgs {
                file,
                dir: dir.as_deref(),
                dry_run: *dry_run,
                trust: *trust,
                cold: *cold,
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
        matches!(cli.command, Command::Run(_)).then(crate::identity::new_instance_id);
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
        | Command::Engine(_)
        | Command::Completions { .. } => 0,
        Command::Snapshot(sub) => snapshot::snapshot(&ctx, &printer, &project, sub).await,
        Command::Export {
            machines,
            snapshot,
            output,
            to,
        } => {
            let target = match (output, to) {
                (Some(o), _) => snapshot::Target::File(cwd.join(o)),
                (None, Some(r)) => snapshot::Target::Registry(r.clone()),
                (None, None) => unreachable!("clap requires --output or --to"),
            };
            snapshot::export(
                &ctx,
                &printer,
                &project,
                &machines,
                snapshot.as_deref(),
                &target,
            )
            .await
        }
        Command::Package { machine, as_box } => {
            snapshot::package(&ctx, &printer, &project, &machine, &as_box).await
        }
        Command::Run(args) => run::run(&ctx, &printer, &mut project, args).await,
        Command::Validate => init::validate(&project, cli.json),
        Command::Up(args) => up::up(&ctx, &printer, &mut project, args).await,
        Command::Lock => up::lock(&ctx, &printer, &project).await,
        Command::Rollback { machines } => {
            generations::rollback(&ctx, &printer, &project, &machines).await
        }
        Command::Logs(a) => {
            let flags = files::LogsFlags {
                machines: a.machines,
                follow: a.follow,
                since: a.since,
                tail: a.tail,
                journal: a.journal,
            };
            files::logs(&ctx, &printer, &project, flags).await
        }
        Command::Cp { src, dst } => files::cp(&ctx, &printer, &project, &src, &dst).await,
        Command::Port { machine, guest } => {
            ssh::port(&ctx, &printer, &project, &machine, guest).await
        }
        Command::Drift { machine, exit_code } => {
            generations::drift(&ctx, &printer, &project, &machine, exit_code).await
        }
        Command::Provision {
            machines,
            force,
            steps,
        } => up::provision(&ctx, &printer, &project, &machines, force, &steps).await,
        Command::Status { machines } => {
            lifecycle::status(&ctx, &printer, &project, &machines).await
        }
        Command::Exec {
            machine,
            command,
            user,
        } => ssh::cmd_exec(&ctx, &printer, &project, &machine, command, user).await,
        Command::Ssh { machine, command } => {
            ssh::cmd_ssh(&ctx, &printer, &project, &machine, command).await
        }
        Command::SshConfig { machine } => {
            ssh::cmd_ssh_config(&ctx, &printer, &project, machine).await
        }
        Command::Halt { machines, timeout } => {
            lifecycle::halt(&ctx, &printer, &project, &machines, timeout).await
        }
        Command::Suspend { machines } => {
            lifecycle::suspend(&ctx, &printer, &project, &machines, ops::Hold::Suspend).await
        }
        Command::Resume { machines } => {
            lifecycle::suspend(&ctx, &printer, &project, &machines, ops::Hold::Resume).await
        }
        Command::Reload { machines } => up::reload(&ctx, &printer, &project, machines).await,
        Command::Destroy { machines, force } => {
            lifecycle::destroy(&ctx, &printer, &project, &machines, force).await
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

/// A temporary folder (removed when dropped) for an archive on its way to or from a
/// registry.
fn temp_folder(prefix: &str) -> Result<tempfile::TempDir, ops::OpError> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|e| ops::OpError::Io {
            context: "make a temporary folder".into(),
            source: e,
        })
}
