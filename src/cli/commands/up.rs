//! `up`, `reload`, `provision` and `lock`: making machines what the Envfile says.

use std::time::Duration;

use super::{fail, settle};
use crate::cli::UpArgs;
use crate::cli::output::Printer;
use crate::ops::{self, Context, Project, UpOptions};

pub(super) async fn up(
    ctx: &Context,
    printer: &Printer,
    project: &mut Project,
    args: UpArgs,
) -> i32 {
    let UpArgs {
        machines,
        recreate,
        parallel,
        no_provision,
        provision,
        ttl,
        locked,
        fresh,
        plan,
        reschedule,
        push,
    } = args;
    project.ttl = ttl;
    let opts = UpOptions {
        reschedule,
        machines,
        recreate,
        parallel: usize::from(parallel),
        no_provision,
        force_provision: provision,
        locked,
        fresh,
        push,
    };
    if plan {
        let ask = ops::PlanAsk {
            machines: opts.machines.clone(),
            locked: opts.locked,
            recreate: opts.recreate,
            reschedule: opts.reschedule,
        };
        return match ops::up_plan(ctx, project, &ask).await {
            Ok(rows) => {
                printer.up_plan(&rows);
                0
            }
            Err(e) => fail(printer, e),
        };
    }
    run_up(ctx, printer, project, &opts).await
}

/// Runs `up` with `opts` and prints what it did.
async fn run_up(ctx: &Context, printer: &Printer, project: &Project, opts: &UpOptions) -> i32 {
    match settle(ctx, ops::up(ctx, project, opts)).await {
        Ok(outcomes) => {
            printer.up(project, &outcomes);
            0
        }
        Err(e) => fail(printer, e),
    }
}

/// `reload`: halt, then `up --recreate`.
pub(super) async fn reload(
    ctx: &Context,
    printer: &Printer,
    project: &Project,
    machines: Vec<String>,
) -> i32 {
    if let Err(e) = settle(
        ctx,
        ops::halt(ctx, project, &machines, Duration::from_secs(60)),
    )
    .await
    {
        return fail(printer, e);
    }
    let opts = UpOptions {
        reschedule: false,
        machines,
        recreate: true,
        parallel: 8,
        no_provision: false,
        force_provision: false,
        locked: false,
        fresh: false,
        push: false,
    };
    run_up(ctx, printer, project, &opts).await
}

pub(super) async fn provision(
    ctx: &Context,
    printer: &Printer,
    project: &Project,
    machines: &[String],
    force: bool,
    steps: &[String],
) -> i32 {
    match settle(ctx, ops::provision(ctx, project, machines, force, steps)).await {
        Ok(done) => {
            printer.provisioned(&done);
            0
        }
        Err(e) => fail(printer, e),
    }
}

pub(super) async fn lock(ctx: &Context, printer: &Printer, project: &Project) -> i32 {
    match settle(ctx, ops::lock(ctx, project)).await {
        Ok(l) => {
            if !printer.as_json(serde_json::json!({"schema": "envrig.lock/1", "lock": l})) {
                printer.done(&format!(
                    "wrote {} ({} boxes, {} machines)",
                    crate::lock::FILE_NAME,
                    l.boxes.len(),
                    l.machines.len()
                ));
            }
            0
        }
        Err(e) => fail(printer, e),
    }
}
