//! One wave of machine resources handled side by side, as `halt` and `destroy` do.

use std::future::Future;

use futures_util::StreamExt;

use super::error::OpError;
use crate::plan::Observed;

/// How many resources one wave handles at once.
const AT_ONCE: usize = 8;

/// Runs `each` on every resource of `wave`, at most eight at a time, calls `done` with each
/// one it succeeded on as it finishes, and returns the failures as (machine, message).
pub(super) async fn each_in_wave<'a, F, Fut>(
    wave: impl IntoIterator<Item = &'a Observed>,
    each: F,
    mut done: impl FnMut(&'a Observed),
) -> Vec<(String, String)>
where
    F: Fn(&'a Observed) -> Fut,
    Fut: Future<Output = Result<(), OpError>>,
{
    let jobs = wave.into_iter().map(|o| {
        let job = each(o);
        async move { (o, job.await) }
    });
    let mut results = futures_util::stream::iter(jobs).buffer_unordered(AT_ONCE);
    let mut failures = Vec::new();
    while let Some((o, r)) = results.next().await {
        match r {
            Ok(()) => done(o),
            Err(e) => failures.push((o.machine.clone(), e.to_string())),
        }
    }
    failures
}
