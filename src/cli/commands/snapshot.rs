//! `snapshot save|restore|list|delete`, `export` and `package`: machines' state kept, as
//! snapshots, a portable file or a new box.

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
/// Where `export` puts its archive.
pub(super) enum Target {
    File(std::path::PathBuf),
    /// `REGISTRY/REPOSITORY:TAG`: written to a temporary file, then sent.
    Registry(String),
}

pub(super) async fn export(
    ctx: &Context,
    printer: &Printer,
    project: &Project,
    machines: &[String],
    snapshot: Option<&str>,
    target: &Target,
) -> i32 {
    let reference = match target {
        Target::File(output) => {
            return match settle(ctx, ops::export(ctx, project, snapshot, machines, output)).await {
                Ok(manifest) => {
                    printer.exported(output, &manifest);
                    0
                }
                Err(e) => fail(printer, e),
            };
        }
        Target::Registry(r) => r,
    };
    let dir = match super::temp_folder("envrig-export-") {
        Ok(d) => d,
        Err(e) => return fail(printer, e),
    };
    let file = dir.path().join("capsule.envrig");
    let sent = async {
        let manifest = ops::export(ctx, project, snapshot, machines, &file).await?;
        ops::push_capsule(ctx, &file, reference).await?;
        Ok::<_, ops::OpError>(manifest)
    };
    match settle(ctx, sent).await {
        Ok(manifest) => {
            printer.exported_to(reference, &file, &manifest);
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
