//! The plugin's side: a provider served over stdin and stdout.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{OnceCell, mpsc};

use super::wire::{Body, Bytes, Call, FromPlugin, Hello, PROTOCOL, ToPlugin, WireError};
use crate::{OutputStream, Provider, ProviderError, Result, Schema};

/// Serves a provider to the envrig that started this process, until its stdin closes:
/// writes the [`Hello`], then answers calls, many at once, each in a task of its own.
/// `connect` runs once, at the first call. The process exits when stdin closes (the
/// envrig that started it is done, or was killed): calls still running stop with it, as
/// they would have inside envrig. Ctrl-C at a terminal reaches the whole process group;
/// this process ignores it and lets envrig decide.
pub async fn serve<F, Fut>(schema: Schema, connect: F) -> !
where
    F: FnOnce(Option<crate::EngineAddress>) -> Fut,
    Fut: Future<Output = Result<Arc<dyn Provider>>>,
{
    let _interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt());
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        let mut out = tokio::io::stdout();
        while let Some(line) = rx.recv().await {
            if out.write_all(line.as_bytes()).await.is_err() || out.flush().await.is_err() {
                // envrig is gone: as when stdin closes.
                // SAFETY: `_exit` ends the process without touching any of its state.
                unsafe { libc::_exit(0) }
            }
        }
    });
    let name = schema.name.clone();
    let hello = Hello {
        protocol: PROTOCOL,
        schema,
    };
    send_line(&tx, &hello);
    let provider: Arc<OnceCell<Arc<dyn Provider>>> = Arc::new(OnceCell::new());
    let mut connect = Some(connect);
    let tasks: Arc<Mutex<HashMap<u64, tokio::task::AbortHandle>>> = Default::default();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) | Err(_) => break,
        };
        if line.trim().is_empty() {
            continue;
        }
        let msg: ToPlugin = match serde_json::from_str(&line) {
            Ok(m) => m,
            Err(e) => {
                // A call of a newer envrig (a method or argument this plugin does not know)
                // is answered, so envrig never waits for it; a line with no id is dropped.
                eprintln!("envrig-provider-{name}: unreadable request ({e})");
                if let Some(id) = serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| v.get("id").and_then(|i| i.as_u64()))
                {
                    let method = serde_json::from_str::<serde_json::Value>(&line)
                        .ok()
                        .and_then(|v| v["call"]["method"].as_str().map(str::to_string))
                        .unwrap_or_default();
                    let e = ProviderError::NotSupported {
                        provider: "plugin",
                        what: format!(
                            "the call `{method}` (this envrig-provider-{name} does not know it: it is older than envrig; install the plugin built with it)"
                        ),
                    };
                    reply(&tx, id, Err(e));
                }
                continue;
            }
        };
        if msg.cancel {
            if let Some(t) = tasks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&msg.id)
            {
                t.abort();
            }
            continue;
        }
        let Some(call) = msg.call else { continue };
        // The first call connects; later ones wait for it.
        if provider.get().is_none()
            && let Some(c) = connect.take()
        {
            // The engine named by a first `connect`; the local one for any other call.
            let engine = match &call {
                Call::Connect { engine } => engine.clone(),
                _ => None,
            };
            match c(engine).await {
                Ok(p) => {
                    let _ = provider.set(p);
                }
                Err(e) => {
                    reply(&tx, msg.id, Err(e));
                    connect = None;
                    continue;
                }
            }
        }
        let Some(p) = provider.get().cloned() else {
            let e = ProviderError::Unavailable {
                provider: "plugin",
                message: format!("the {name} provider could not connect to its engine"),
                hint: None,
            };
            reply(&tx, msg.id, Err(e));
            continue;
        };
        let (tx2, tasks2, id) = (tx.clone(), tasks.clone(), msg.id);
        let task = tokio::spawn(async move {
            let body = answer(&*p, call, id, &tx2).await;
            tasks2.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            send_line(&tx2, &FromPlugin { id, body });
        });
        tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, task.abort_handle());
    }
    drop((tx, writer));
    // At once, like the envrig that is gone: no exit handlers, and no thread of this
    // process makes another engine call (a process that lingers would create what the
    // next envrig, already settled, does not see; tests/e2e_faults.rs kills at random).
    // SAFETY: `_exit` ends the process without touching any of its state.
    unsafe { libc::_exit(0) }
}

fn send_line<T: Serialize>(tx: &mpsc::UnboundedSender<String>, msg: &T) {
    if let Ok(mut line) = serde_json::to_string(msg) {
        line.push('\n');
        let _ = tx.send(line);
    }
}

/// A sink that sends each chunk of a call's output (`exec`, `logs`) as an `output` event.
fn output_events(
    tx: &mpsc::UnboundedSender<String>,
    id: u64,
) -> impl FnMut(OutputStream, &[u8]) + Send + '_ {
    move |stream, b| {
        let body = Body::Output {
            stream,
            data: Bytes(b.to_vec()),
        };
        send_line(tx, &FromPlugin { id, body })
    }
}

fn reply(tx: &mpsc::UnboundedSender<String>, id: u64, r: Result<serde_json::Value>) {
    let body = match r {
        Ok(v) => Body::Ok(v),
        Err(e) => Body::Error(WireError::from(&e)),
    };
    send_line(tx, &FromPlugin { id, body });
}

fn ok<T: Serialize>(r: Result<T>) -> Body {
    match r.and_then(|v| {
        serde_json::to_value(v).map_err(|e| ProviderError::Engine {
            provider: "plugin",
            op: "write the answer".into(),
            source: e.into(),
        })
    }) {
        Ok(v) => Body::Ok(v),
        Err(e) => Body::Error(WireError::from(&e)),
    }
}

/// Runs one call on the provider; events go out as they come.
async fn answer(p: &dyn Provider, call: Call, id: u64, tx: &mpsc::UnboundedSender<String>) -> Body {
    let ms = Duration::from_millis;
    match call {
        Call::Connect { .. } => ok(Ok(())),
        Call::EngineInfo => ok(p.engine_info().await),
        Call::EnsureBase { reference } => {
            let mut progress = |pr| {
                send_line(
                    tx,
                    &FromPlugin {
                        id,
                        body: Body::Progress(pr),
                    },
                )
            };
            ok(p.ensure_base(&reference, &mut progress).await)
        }
        Call::ResolveBase { reference } => ok(p.resolve_base(&reference).await),
        Call::Create { spec } => ok(p.create(&spec).await),
        Call::Start { id } => ok(p.start(&id).await),
        Call::StartCreated { id, spec } => ok(p.start_created(&id, &spec).await),
        Call::Stop { id, timeout_ms } => ok(p.stop(&id, ms(timeout_ms)).await),
        Call::StopForHandover { id, timeout_ms } => {
            ok(p.stop_for_handover(&id, ms(timeout_ms)).await)
        }
        Call::Remove { id } => ok(p.remove(&id).await),
        Call::Inspect { id } => ok(p.inspect(&id).await),
        Call::EnsureNetwork { spec } => ok(p.ensure_network(&spec).await),
        Call::SharedNetwork { spec } => ok(p.shared_network(&spec).await),
        Call::NameOnNetwork {
            network,
            address,
            names,
        } => ok(p.name_on_network(&network, &address, &names).await),
        Call::SharedAddress { id } => ok(p.shared_address(&id).await),
        Call::ListOther { selector } => ok(p.list_other(&selector).await),
        Call::List { selector } => ok(p.list(&selector).await),
        Call::Purge { selector } => ok(p.purge(&selector).await),
        Call::Exec {
            id: machine,
            request,
        } => ok(p.exec(&machine, &request, &mut output_events(tx, id)).await),
        Call::Upload { id, dest, tar } => ok(p.upload(&id, &dest, tar.0).await),
        Call::CopyIn { id, tar, dest } => ok(p.copy_in(&id, &tar, &dest).await),
        Call::CopyOut { id, src, tar } => ok(p.copy_out(&id, &src, &tar).await),
        Call::Logs {
            id: machine,
            request,
        } => ok(p.logs(&machine, &request, &mut output_events(tx, id)).await),
        Call::ReadFile { id, path } => ok(p.read_file(&id, &path).await.map(|o| o.map(Bytes))),
        Call::Pause { id } => ok(p.pause(&id).await),
        Call::Unpause { id } => ok(p.unpause(&id).await),
        Call::Suspend { id } => ok(p.suspend(&id).await),
        Call::SnapshotSave {
            id,
            name,
            spec,
            labels,
            running,
        } => ok(p.snapshot_save(&id, &name, &spec, &labels, running).await),
        Call::SnapshotList { selector } => ok(p.snapshot_list(&selector).await),
        Call::SnapshotRestore {
            snapshot,
            current,
            spec,
        } => ok(p
            .snapshot_restore(&snapshot, current.as_deref(), &spec)
            .await),
        Call::SnapshotDelete { snapshot } => ok(p.snapshot_delete(&snapshot).await),
        Call::SnapshotExport { snapshot, dest } => ok(p.snapshot_export(&snapshot, &dest).await),
        Call::CheckExport { src } => ok(p.check_export(&src).await),
        Call::CheckResume { src } => ok(p.check_resume(&src).await),
        Call::SnapshotImport {
            src,
            snapshot,
            labels,
        } => ok(p.snapshot_import(&src, &snapshot, &labels).await),
        Call::Package { id, name, labels } => ok(p.package(&id, &name, &labels).await),
        Call::BoxAdd {
            name,
            source,
            force,
        } => ok(p.box_add(&name, &source, force).await),
        Call::BoxList => ok(p.box_list().await),
        Call::BoxRemove { name } => ok(p.box_remove(&name).await),
        Call::SshEndpoint { id } => ok(p.ssh_endpoint(&id).await),
        Call::RefreshSynced { id } => ok(p.refresh_synced(&id).await),
        Call::Flush { id } => ok(p.flush(&id).await),
        Call::BakedLayers => ok(p.baked_layers().await),
        Call::RemoveBaked { name } => ok(p.remove_baked(&name).await),
        Call::PullBaked {
            reference,
            name,
            base,
        } => ok(p.pull_baked(&reference, &name, &base).await),
        Call::PushBaked { name, reference } => ok(p.push_baked(&name, &reference).await),
        Call::SweepWork => ok(p.sweep_work().await),
        Call::MarkBaseline { id } => ok(p.mark_baseline(&id).await),
        Call::Drift { id } => ok(p.drift(&id).await),
    }
}
