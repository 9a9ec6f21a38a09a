//! `envrig import FILE [-C DIR] [--dry-run] [--trust]`: shows what an archive's environment
//! would take from this host, and imports it only when nothing needs trust, or with
//! `--trust`, or when the person at the terminal says yes. Without a terminal, refused.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use crate::envfile::LoadError;
use crate::ops::trust::{self, Decision, TrustReport};
use crate::ops::{self, Context, ImportPlan, OpError, Project};

use super::{display_path, fail, settle};
use crate::cli::output::{self, Printer, json_line, out};

pub const SCHEMA_IMPORT_CHECK: &str = "envrig.import-check/1";

/// The flags of `import`.
pub struct ImportArgs<'a> {
    pub file: &'a Path,
    pub dir: Option<&'a Path>,
    pub dry_run: bool,
    pub trust: bool,
    pub cold: bool,
    pub provider: Option<String>,
}

pub async fn cmd_import(printer: &Printer, ctx: &Context, cwd: &Path, args: ImportArgs<'_>) -> i32 {
    let target = args
        .dir
        .map(|d| cwd.join(d))
        .unwrap_or_else(|| cwd.to_path_buf());
    // A capsule in a registry is taken into a file of its own first, then imported as one.
    let given = args.file.to_string_lossy().into_owned();
    let mut pulled = None;
    let file: PathBuf = if ops::is_capsule_reference(&given, cwd) {
        let dir = match super::temp_folder("envrig-import-") {
            Ok(d) => d,
            Err(e) => return fail(printer, e),
        };
        let file = dir.path().join("capsule.envrig");
        if let Err(e) = settle(ctx, ops::pull_capsule(ctx, &given, &file)).await {
            return fail(printer, e);
        }
        pulled = Some(dir);
        file
    } else {
        cwd.join(args.file)
    };
    let _pulled = pulled;
    let settings = ops::LoadSettings {
        provider_override: args.provider.clone(),
        instance: None,
    };
    let plan = match settle(
        ctx,
        ops::import_check(ctx, &file, &target, &settings, args.cold),
    )
    .await
    {
        Ok(plan) => plan,
        Err(e) => return fail(printer, e),
    };
    let shown = match &_pulled {
        Some(_) => given.clone(),
        None => display_path(cwd, &file),
    };
    if args.dry_run {
        print_check(printer, &plan, &shown, true);
        return 0;
    }
    let interactive =
        !printer.json && std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    match trust::decide(&plan.report, args.trust, interactive) {
        Decision::Proceed => {
            if !printer.json && !printer.quiet {
                print_check(printer, &plan, &shown, false);
            }
        }
        Decision::Ask => {
            print_check(printer, &plan, &shown, false);
            if !output::confirm("import it, with what it takes from this host?") {
                printer.done("nothing imported");
                return 1;
            }
        }
        Decision::Refuse => {
            print_check(printer, &plan, &shown, false);
            let cold = plan
                .report
                .risky()
                .any(|g| g.kind == trust::GrantKind::SavedMemory);
            printer.error(
                &refusal(&shown, &plan.report),
                Some(&format!(
                    "`envrig import {shown} --dry-run` shows everything it asks for; if you trust \
                     whoever made it, import it with `--trust`{}",
                    if cold {
                        "; `--cold` brings machines saved running back from their disks, booted"
                    } else {
                        ""
                    }
                )),
            );
            return 2;
        }
    }

    let registry = &ctx.registry;
    let load = |path: &Path| -> Result<Project, OpError> {
        Project::load(path, &display_path(cwd, path), registry, &settings).map_err(|e| match e {
            LoadError::Invalid(r) => OpError::Usage(format!(
                "the imported Envfile is not valid:\n{}",
                r.render(false)
            )),
            LoadError::Io { path, source } => OpError::Io {
                context: format!("cannot read {}", path.display()),
                source,
            },
        })
    };
    let grants = plan.report.grants.clone();
    match settle(ctx, ops::import_apply(ctx, plan, &load)).await {
        Ok(report) => {
            if printer.json {
                out(&json_line(&serde_json::json!({
                    "schema": output::SCHEMA_IMPORT,
                    "folder": report.folder,
                    "project": report.project,
                    "machines": report.machines,
                    "resumed": report.resumed,
                    "restarted": report.restarted,
                    "grants": grants,
                })));
            } else {
                printer.imported(&report);
            }
            0
        }
        Err(e) => fail(printer, e),
    }
}

/// Why an archive is refused without `--trust`: each risky grant, with where it is asked.
fn refusal(file: &str, report: &TrustReport) -> String {
    let mut s = format!("{file} is refused: it would take from this host what needs your trust:");
    for g in report.risky() {
        let who = g.machine.as_deref().unwrap_or("the environment");
        let why = g.risk.as_deref().unwrap_or_default();
        s.push_str(&format!("\n  {who}: {why} (`{}`)", g.key));
    }
    s
}

/// The report: a JSON document on stdout, or aligned lines (stdout for `--dry-run`, whose
/// data it is; stderr otherwise).
fn print_check(printer: &Printer, plan: &ImportPlan, file: &str, dry_run: bool) {
    let report = &plan.report;
    if printer.json {
        let machines: Vec<serde_json::Value> = plan
            .machines
            .iter()
            .map(|(m, p)| serde_json::json!({"machine": m, "provider": p}))
            .collect();
        out(&json_line(&serde_json::json!({
            "schema": SCHEMA_IMPORT_CHECK,
            "file": file,
            "folder": report.folder,
            "project": plan.project,
            "machines": machines,
            "grants": report.grants,
            "needs_trust": report.needs_trust(),
            "dry_run": dry_run,
        })));
        return;
    }
    let names: Vec<&str> = plan.machines.iter().map(|(m, _)| m.as_str()).collect();
    let mut lines = vec![format!(
        "{file} holds `{}` ({}); imported into {}, it gets from this host:",
        plan.project,
        if names.is_empty() {
            "no machine state".to_string()
        } else {
            format!("machines: {}", names.join(", "))
        },
        report.folder
    )];
    if report.grants.is_empty() {
        lines.push("  nothing beyond its own folder".to_string());
    }
    let who = |g: &trust::Grant| g.machine.clone().unwrap_or_else(|| "*".to_string());
    let w_who = report
        .grants
        .iter()
        .map(|g| who(g).len())
        .max()
        .unwrap_or(0);
    let w_kind = report
        .grants
        .iter()
        .map(|g| g.kind.as_str().len())
        .max()
        .unwrap_or(0);
    for g in &report.grants {
        let mut line = format!(
            "  {:w_who$}  {:w_kind$}  {}  ({})",
            who(g),
            g.kind.as_str(),
            g.what,
            g.key
        );
        if let Some(r) = &g.risk {
            line.push_str(&format!(
                "\n  {:w_who$}  {:w_kind$}  ! needs --trust: {r}",
                "", ""
            ));
        }
        lines.push(line);
    }
    let text = lines.join("\n");
    if dry_run {
        out(&text);
        if report.needs_trust() {
            out("importing it needs --trust (or a yes at a terminal)");
        }
    } else {
        eprintln!("{text}");
    }
}
