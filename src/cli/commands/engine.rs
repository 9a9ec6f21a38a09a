//! `engine add|ls|rm|check`: the engine endpoints beyond the local ones.

use super::fail;
use crate::cli::EngineCommand;
use crate::cli::output::Printer;
use crate::ops::{self, Context};

/// `provider` is the global `--provider`: which provider a URI's engine is, where several
/// serve its scheme.
pub(super) async fn engine(
    ctx: &Context,
    printer: &Printer,
    sub: &EngineCommand,
    provider: Option<&str>,
) -> i32 {
    let r = match sub {
        EngineCommand::Add {
            name,
            uri,
            labels,
            max_machines,
            cert_path,
            force,
        } => ops::engine_add(
            ctx,
            ops::AddEngine {
                name: name.clone(),
                uri: uri.clone(),
                labels: labels.clone(),
                max_machines: *max_machines,
                cert_path: cert_path.clone(),
                force: *force,
                provider: provider.map(str::to_string),
            },
        )
        .map(|e| {
            printer.done(&format!(
                "added engine `{name}` ({} at {}); `envrig engine check {name}` asks it",
                e.provider, e.uri
            ))
        }),
        EngineCommand::Ls => ops::engine_ls(ctx, &[]).await.map(|rows| {
            printer.engines(&rows);
        }),
        EngineCommand::Rm { name, force } => ops::engine_rm(ctx, name, *force)
            .await
            .map(|()| printer.done(&format!("removed engine `{name}`"))),
        EngineCommand::Check { names } => match ops::engine_ls(ctx, names).await {
            Ok(rows) => {
                printer.engines(&rows);
                return i32::from(rows.iter().any(|r| !r.reachable));
            }
            Err(e) => Err(e),
        },
    };
    match r {
        Ok(()) => 0,
        Err(e) => fail(printer, e),
    }
}
