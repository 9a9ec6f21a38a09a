//! Work names: the files and folders envrig writes before they are whole (a staging folder,
//! an archive being written, a box being added) carry the process that writes them, so that
//! what a killed envrig left is recognised and removed by whoever looks next (`gc`,
//! `destroy`, the next command of the same kind), while the work of a live envrig is left
//! alone.
//!
//! A work name is `PREFIX.work-PID-START`, where START is the process's start time in clock
//! ticks since boot (field 22 of `/proc/PID/stat`): a reused PID has another start time. A
//! zombie (state `Z` or `X`) is dead. A name without that tail is not a work name and is
//! never touched.

use std::path::{Path, PathBuf};

/// The marker between a work name's prefix and its owner.
const MARK: &str = ".work-";

/// `(state letter, start time)` of process `pid`, from `/proc/PID/stat`.
fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: skip past it.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.nth(18)?.parse().ok()?))
}

/// This process's owner tail: `PID-START`.
fn me() -> String {
    let pid = std::process::id();
    let start = proc_stat(pid).map(|(_, s)| s).unwrap_or(0);
    format!("{pid}-{start}")
}

/// A work name for `prefix` owned by this process: `PREFIX.work-PID-START`.
pub fn name(prefix: &str) -> String {
    format!("{prefix}{MARK}{}", me())
}

/// A work name (as [`name`]) of its own within this process too: tasks of one envrig that
/// work at once on the same thing never share a work folder.
pub fn unique_name(prefix: &str) -> String {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}.{n}", name(prefix))
}

/// The owner of a work name, `(pid, start)`; `None` for a name that is not one.
fn owner(file_name: &str) -> Option<(u32, u64)> {
    let (_, tail) = file_name.rsplit_once(MARK)?;
    // A suffix after the owner (`.tar.zst`, a counter) is allowed after a `.`.
    let tail = tail.split('.').next()?;
    let (pid, start) = tail.split_once('-')?;
    Some((pid.parse().ok()?, start.parse().ok()?))
}

/// Whether `file_name` is a work name whose process is gone (dead, a zombie, or its PID now
/// another process). A name that is not a work name is never "abandoned".
pub fn abandoned(file_name: &str) -> bool {
    let Some((pid, start)) = owner(file_name) else {
        return false;
    };
    match proc_stat(pid) {
        Some(('Z' | 'X' | 'x', _)) | None => true,
        Some((_, t)) => t != start,
    }
}

/// Removes every abandoned work file or folder directly in `dir`; returns what went. A
/// folder that cannot be read is left alone (nothing is guessed).
pub fn sweep(dir: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return removed;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !abandoned(&name) {
            continue;
        }
        let path = e.path();
        let gone = match e.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
            _ => std::fs::remove_file(&path),
        };
        if gone.is_ok() {
            removed.push(path);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_names_tell_live_owners_from_dead_ones() {
        let mine = name("export");
        assert!(mine.starts_with("export.work-"), "{mine}");
        assert!(!abandoned(&mine), "this process is alive: {mine}");
        assert!(!abandoned(&format!("{mine}.tar.zst")));
        let pid = std::process::id();
        assert!(abandoned(&format!("x.work-{pid}-1")), "another start time");
        assert!(abandoned("x.work-4194304999-5"), "no such process");
        for plain in ["state.json", "lock", "x.work-", "x.work-12", "x.work-a-b"] {
            assert!(!abandoned(plain), "{plain}");
        }
    }

    #[test]
    fn sweep_removes_only_abandoned_work() {
        let d = std::env::temp_dir().join(name("sweep-test"));
        std::fs::create_dir_all(d.join("dead.work-4194304999-1/inner")).unwrap();
        std::fs::write(d.join("file.work-4194304999-1.tmp"), b"x").unwrap();
        std::fs::write(d.join(name("live")), b"x").unwrap();
        std::fs::write(d.join("state.json"), b"{}").unwrap();
        let gone = sweep(&d);
        assert_eq!(gone.len(), 2, "{gone:?}");
        let mut left: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, vec![name("live"), "state.json".to_string()]);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
