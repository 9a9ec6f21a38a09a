//! `drift MACHINE`: what changed inside a running machine since its generation was
//! provisioned. The provider reports the raw changes (`Provider::drift`); volatile paths and
//! the machine's `drift_ignore` globs are left out here.

use envrig_provider_api::drift::PathChange;
use serde::Serialize;

use super::context::{Context, at};
use super::error::OpError;
use super::observe::{observe, runnable};
use super::project::Project;

/// Paths whose changes are never drift: kernel and runtime file systems, logs and caches.
pub const VOLATILE: &[&str] = &[
    "/proc",
    "/sys",
    "/dev",
    "/run",
    "/tmp",
    "/var/log",
    "/var/cache",
    // Written by the DHCP client (or resolvconf) at every lease.
    "/etc/resolv.conf",
];

/// What `drift` found.
#[derive(Debug, Clone, Serialize)]
pub struct DriftReport {
    pub machine: String,
    pub changes: Vec<PathChange>,
    /// Changes left out as volatile or by `drift_ignore`.
    pub ignored: usize,
}

/// Whether `path` is `dir` or inside it.
fn under(path: &str, dir: &str) -> bool {
    path == dir
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The globs of `drift_ignore`, compiled; a glob ending in `/**` also matches its folder.
fn ignore_set(globs: &[String]) -> Result<globset::GlobSet, OpError> {
    let mut b = globset::GlobSetBuilder::new();
    for g in globs {
        let mut add = |pattern: &str| -> Result<(), OpError> {
            let glob = globset::GlobBuilder::new(pattern)
                .literal_separator(true)
                .build()
                .map_err(|e| OpError::Usage(format!("drift_ignore: `{g}`: {e}")))?;
            b.add(glob);
            Ok(())
        };
        add(g)?;
        if let Some(dir) = g.strip_suffix("/**") {
            add(dir)?;
        }
    }
    b.build()
        .map_err(|e| OpError::Usage(format!("drift_ignore: {e}")))
}

/// Keeps the changes that are drift; returns them and how many were left out.
pub fn filter(
    changes: Vec<PathChange>,
    ignore: &[String],
) -> Result<(Vec<PathChange>, usize), OpError> {
    let set = ignore_set(ignore)?;
    let total = changes.len();
    let kept: Vec<PathChange> = changes
        .into_iter()
        .filter(|c| !VOLATILE.iter().any(|v| under(&c.path, v)) && !set.is_match(&c.path))
        .collect();
    let ignored = total - kept.len();
    Ok((kept, ignored))
}

pub async fn drift(
    ctx: &Context,
    project: &Project,
    machine: &str,
) -> Result<DriftReport, OpError> {
    let m = project
        .machine(machine)
        .ok_or_else(|| project.unknown_machine(machine))?;
    let observed = observe(ctx, project).await?;
    let o = runnable(machine, &observed)?;
    let p = at(ctx, o).await?;
    let changes = p
        .drift(&o.id)
        .await
        .map_err(|e| OpError::provider(format!("cannot read the changes inside `{machine}`"), e))?;
    let (changes, ignored) = filter(changes, &m.drift_ignore)?;
    Ok(DriftReport {
        machine: machine.to_string(),
        changes,
        ignored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use envrig_provider_api::drift::ChangeKind;

    fn c(path: &str) -> PathChange {
        PathChange {
            path: path.to_string(),
            kind: ChangeKind::Added,
        }
    }

    #[test]
    fn volatile_and_ignored_paths_are_left_out() {
        let (kept, ignored) = filter(
            vec![
                c("/tmp"),
                c("/tmp/x"),
                c("/tmpfile"),
                c("/var/log/syslog"),
                c("/srv/app/cache"),
                c("/srv/app/cache/a/b"),
                c("/srv/app/x.log"),
                c("/srv/app/sub/y.log"),
                c("/etc/motd"),
            ],
            &["/srv/app/cache/**".into(), "/srv/app/*.log".into()],
        )
        .unwrap();
        let paths: Vec<&str> = kept.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["/tmpfile", "/srv/app/sub/y.log", "/etc/motd"]);
        assert_eq!(ignored, 6);
    }

    #[test]
    fn a_bad_glob_is_a_usage_error() {
        assert!(filter(vec![], &["/a/[".into()]).is_err());
    }
}
