//! `box list|add|remove`: the local store of base boxes.

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
    };
    match r {
        Ok(()) => 0,
        Err(e) => fail(printer, e),
    }
}
