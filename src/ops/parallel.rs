//! One wave of machine resources handled side by side, as `halt` and `destroy` do.

use std::future::Future;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::Semaphore;

use super::error::OpError;
use crate::plan::Observed;

/// How many resources of one engine a wave handles at once.
const AT_ONCE: usize = 8;

/// Runs `each` on every resource of `wave`, at most eight at a time on each engine (engines
/// are apart: one is not held back by another), calls `done` with each one it succeeded on
/// as it finishes, and returns the failures as (machine, message).
pub(super) async fn each_in_wave<'a, F, Fut>(
    wave: impl IntoIterator<Item = &'a Observed>,
    each: F,
    mut done: impl FnMut(&'a Observed),
) -> Vec<(String, String)>
where
    F: Fn(&'a Observed) -> Fut,
    Fut: Future<Output = Result<(), OpError>>,
{
    let mut limits: std::collections::HashMap<(&str, &str), std::sync::Arc<Semaphore>> =
        Default::default();
    let jobs: FuturesUnordered<_> = wave
        .into_iter()
        .map(|o| {
            let limit = limits
                .entry((o.provider.as_str(), o.engine.as_str()))
                .or_insert_with(|| std::sync::Arc::new(Semaphore::new(AT_ONCE)))
                .clone();
            let each = &each;
            async move {
                let _permit = limit.acquire().await;
                (o, each(o).await)
            }
        })
        .collect();
    let mut results = jobs;
    let mut failures = Vec::new();
    while let Some((o, r)) = results.next().await {
        match r {
            Ok(()) => done(o),
            Err(e) => failures.push((o.machine.clone(), e.to_string())),
        }
    }
    failures
}
