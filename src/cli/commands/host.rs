//! `ls` and `gc`: commands that look at the whole host, not one environment.

use super::{fail, settle};
use crate::cli::output::Printer;
use crate::ops::{self, Context};

pub(super) async fn ls(ctx: &Context, printer: &Printer) -> i32 {
    match ops::ls(ctx).await {
        Ok(rows) => {
            printer.ls(&rows);
            0
        }
        Err(e) => fail(printer, e),
    }
}

pub(super) async fn gc(ctx: &Context, printer: &Printer, dry_run: bool) -> i32 {
    match settle(ctx, ops::gc(ctx, dry_run)).await {
        Ok(report) => {
            printer.gc(&report);
            0
        }
        Err(e) => fail(printer, e),
    }
}
