//! `box list|add|remove|outdated|update|prune`: the local store of base boxes.

use std::path::Path;

use super::{fail, settle};
use crate::cli::BoxCommand;
use crate::cli::output::Printer;
use crate::ops::{self, Context};

pub(super) async fn boxes(ctx: &Context, printer: &Printer, cwd: &Path, sub: &BoxCommand) -> i32 {
    let r = match sub {
        BoxCommand::List => ops::box_list(ctx).await.map(|rows| printer.boxes(&rows)),
        BoxCommand::Add {
            name,
            source,
            checksum,
            force,
        } => settle(
            ctx,
            ops::box_add(
                ctx,
                name,
                &ops::BoxSource::parse(source, cwd),
                checksum.as_deref(),
                *force,
            ),
        )
        .await
        .map(|row| printer.boxes_added(&row)),
        BoxCommand::Remove { name } => ops::box_remove(ctx, name)
            .await
            .map(|()| printer.done(&format!("removed box `{name}`"))),
        BoxCommand::Outdated => ops::box_outdated(ctx)
            .await
            .map(|rows| printer.boxes_outdated(&rows)),
        BoxCommand::Update { name } => {
            settle(ctx, ops::box_update(ctx, name))
                .await
                .map(|row| match row {
                    Some(row) => printer.boxes_added(&row),
                    None => printer.done(&format!("box `{name}` is up to date")),
                })
        }
        BoxCommand::Prune => {
            // What the lock file here pins is kept.
            let pinned: Vec<String> = crate::lock::read(&cwd.join(crate::lock::FILE_NAME))
                .ok()
                .flatten()
                .map(|l| {
                    l.boxes
                        .values()
                        .flat_map(|p| p.values().map(|b| b.id.clone()))
                        .collect()
                })
                .unwrap_or_default();
            ops::box_prune(ctx, &pinned)
                .await
                .map(|r| printer.boxes_pruned(&r))
        }
    };
    match r {
        Ok(()) => 0,
        Err(e) => fail(printer, e),
    }
}
