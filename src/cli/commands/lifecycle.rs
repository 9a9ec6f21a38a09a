//! `status`, `halt` and `destroy`: looking at, stopping and removing an environment's
//! machines.

use std::io::IsTerminal;
use std::time::Duration;

use super::{fail, settle};
use crate::cli::output::{self, Printer};
use crate::ops::{self, Context, Project};

pub(super) async fn status(
    ctx: &Context,
    printer: &Printer,
    project: &Project,
    machines: &[String],
) -> i32 {
    match ops::status(ctx, project, machines).await {
        Ok(report) => {
            printer.status(&report);
            0
        }
        Err(e) => fail(printer, e),
    }
}

pub(super) async fn halt(
    ctx: &Context,
    printer: &Printer,
    project: &Project,
    machines: &[String],
    timeout: Duration,
) -> i32 {
    match settle(ctx, ops::halt(ctx, project, machines, timeout)).await {
        Ok(stopped) => {
            printer.halt(&stopped);
            0
        }
        Err(e) => fail(printer, e),
    }
}

/// `suspend` / `resume`.
pub(super) async fn suspend(
    ctx: &Context,
    printer: &Printer,
    project: &Project,
    machines: &[String],
    how: ops::Hold,
) -> i32 {
    match settle(ctx, ops::suspend(ctx, project, machines, how)).await {
        Ok(did) => {
            printer.held(&did, how == ops::Hold::Suspend);
            0
        }
        Err(e) => fail(printer, e),
    }
}

/// `destroy`: asks first on a terminal, unless `force` or `--json`.
pub(super) async fn destroy(
    ctx: &Context,
    printer: &Printer,
    project: &Project,
    machines: &[String],
    force: bool,
) -> i32 {
    if !force && !printer.json && std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
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
    match settle(ctx, ops::destroy(ctx, project, machines)).await {
        Ok(summary) => {
            printer.destroy(&summary);
            0
        }
        Err(e) => fail(printer, e),
    }
}
