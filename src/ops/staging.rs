//! Where `export` and `import` put what is not whole yet: work folders and files under the
//! project's `.envrig/tmp/`, named for the process that writes them
//! ([`envrig_provider_api::work`]), renamed into place only when complete. What a killed
//! envrig left there is removed by the next `export`, `import`, `destroy` or `gc`.

use std::path::{Path, PathBuf};

use envrig_provider_api::work;

/// The work folder of the project in `folder`.
pub fn tmp_dir(folder: &Path) -> PathBuf {
    folder.join(".envrig").join("tmp")
}

/// Removes what killed envrigs left in the work folder of the project in `folder`; returns
/// what went.
pub fn sweep(folder: &Path) -> Vec<PathBuf> {
    let dir = tmp_dir(folder);
    let gone = work::sweep(&dir);
    // An empty work folder goes too (it fails harmlessly when another envrig works in it).
    let _ = std::fs::remove_dir(&dir);
    gone
}

/// A work folder of this process, removed (with everything in it) when dropped.
#[derive(Debug)]
pub struct WorkDir(PathBuf);

impl WorkDir {
    /// Makes `PREFIX.work-PID-START` in the work folder of the project in `folder`.
    pub fn new(folder: &Path, prefix: &str) -> std::io::Result<WorkDir> {
        let dir = tmp_dir(folder);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(work::name(prefix));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path)?;
        Ok(WorkDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Moves the whole file `from` to `to` in one rename. Across filesystems, it is copied
/// beside `to` under a work name first (and renamed), so `to` is never seen half-written.
pub fn persist(from: &Path, to: &Path) -> std::io::Result<()> {
    match std::fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(18) => {
            // EXDEV: another filesystem.
            let name = to
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let beside = to.with_file_name(work::name(&format!(".{name}")));
            let copied = std::fs::copy(from, &beside)
                .and_then(|_| std::fs::File::open(&beside)?.sync_all())
                .and_then(|_| std::fs::rename(&beside, to));
            if copied.is_err() {
                let _ = std::fs::remove_file(&beside);
            }
            let _ = std::fs::remove_file(from);
            copied
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_folders_go_when_dropped_and_files_arrive_whole() {
        let d = tempfile::tempdir().unwrap();
        let w = WorkDir::new(d.path(), "export").unwrap();
        std::fs::write(w.path().join("a"), b"1").unwrap();
        let out = d.path().join("out.bin");
        persist(&w.path().join("a"), &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"1");
        drop(w);
        // Only the file: no work folder or file is left, and the empty tmp goes.
        sweep(d.path());
        let mut left: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, vec![".envrig", "out.bin"]);
        assert_eq!(
            std::fs::read_dir(d.path().join(".envrig")).unwrap().count(),
            0
        );
    }
}
