//! `snapshot save|restore|list|delete`, `export` and `package`: machines' state kept, as
//! snapshots, a portable file or a new box.

use std::path::Path;

use super::{fail, settle};
use crate::cli::SnapshotCommand;
use crate::cli::output::Printer;
use crate::ops::{self, Context, Project};

pub(super) async fn snapshot(
    ctx: &Context,
    printer: &Printer,
    project: &Project,
    sub: SnapshotCommand,
) -> i32 {
    let r = match sub {
        SnapshotCommand::Save {
            name,
            machines,
            force,
        } => settle(
            ctx,
            ops::snapshot_save(ctx, project, &name, &machines, force),
        )
        .await
        .map(|m| printer.snapshot_done("saved", &name, &m)),
        SnapshotCommand::Restore { name, machines } => {
            settle(ctx, ops::snapshot_restore(ctx, project, &name, &machines))
                .await
                .map(|m| printer.snapshot_done("restored", &name, &m))
        }
        SnapshotCommand::Delete { name } => settle(ctx, ops::snapshot_delete(ctx, project, &name))
            .await
            .map(|m| printer.snapshot_done("deleted", &name, &m)),
        SnapshotCommand::List => ops::snapshot_list(ctx, project)
            .await
            .map(|rows| printer.snapshots(&rows)),
    };
    match r {
        Ok(()) => 0,
        Err(e) => fail(printer, e),
    }
}

/// `export`: `output` is already joined to the current folder.
pub(super) async fn export(
    ctx: &Context,
    printer: &Printer,
    project: &Project,
    machines: &[String],
    snapshot: Option<&str>,
    output: &Path,
) -> i32 {
    match settle(ctx, ops::export(ctx, project, snapshot, machines, output)).await {
        Ok(manifest) => {
            printer.exported(output, &manifest);
            0
        }
        Err(e) => fail(printer, e),
    }
}

pub(super) async fn package(
    ctx: &Context,
    printer: &Printer,
    project: &Project,
    machine: &str,
    as_box: &str,
) -> i32 {
    match settle(ctx, ops::package(ctx, project, machine, as_box)).await {
        Ok(id) => {
            printer.packaged(machine, as_box, &id);
            0
        }
        Err(e) => fail(printer, e),
    }
}
