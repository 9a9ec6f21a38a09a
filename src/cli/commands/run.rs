//! `run`: for CI, an environment of its own, one command in it, then destroyed.

use super::{exit_status, fail, settle};
use crate::cli::RunArgs;
use crate::cli::output::Printer;
use crate::ops::{self, Context, Project};

pub(super) async fn run(
    ctx: &Context,
    printer: &Printer,
    project: &mut Project,
    args: RunArgs,
) -> i32 {
    let RunArgs {
        machine,
        command,
        keep_on_failure,
        ttl,
        parallel,
    } = args;
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
    let r = settle(ctx, ops::run(ctx, project, &opts)).await;
    match r {
        Ok(outcome) => {
            printer.run(&outcome);
            exit_status(outcome.exit_code.unwrap_or(1))
        }
        Err((e, outcome)) => {
            printer.run(&outcome);
            let code = fail(printer, e);
            if ctx.cancelled() { 130 } else { code.max(1) }
        }
    }
}
