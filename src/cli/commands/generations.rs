//! `rollback` and `drift`: an immutable machine's generations, and what changed inside the
//! running one.

use super::{fail, settle};
use crate::cli::output::Printer;
use crate::ops::{self, Context, Project};

pub(super) async fn rollback(
    ctx: &Context,
    printer: &Printer,
    project: &Project,
    machines: &[String],
) -> i32 {
    match settle(ctx, ops::rollback(ctx, project, machines)).await {
        Ok(done) => {
            if !printer
                .as_json(serde_json::json!({"schema": "envrig.rollback/1", "machines": done}))
            {
                for r in &done {
                    printer.done(&format!(
                        "`{}` rolled back: generation {} -> {}",
                        r.machine, r.from, r.to
                    ));
                }
            }
            0
        }
        Err(e) => fail(printer, e),
    }
}

/// `drift`: with `exit_code`, exits 3 when there is drift.
pub(super) async fn drift(
    ctx: &Context,
    printer: &Printer,
    project: &Project,
    machine: &str,
    exit_code: bool,
) -> i32 {
    match settle(ctx, ops::drift(ctx, project, machine)).await {
        Ok(r) => {
            let doc = serde_json::json!({
                "schema": "envrig.drift/1",
                "machine": r.machine,
                "drifted": !r.changes.is_empty(),
                "changes": r.changes,
                "ignored": r.ignored,
            });
            if !printer.as_json(doc) {
                if r.changes.is_empty() {
                    printer.done(&format!(
                        "no drift in `{}` since it was provisioned",
                        r.machine
                    ));
                } else {
                    for c in &r.changes {
                        println!("{} {}", c.kind.letter(), c.path);
                    }
                }
            }
            if exit_code && !r.changes.is_empty() {
                3
            } else {
                0
            }
        }
        Err(e) => fail(printer, e),
    }
}
