//! envrig's own folder on this host, where what outlives one project is kept: the lock files
//! `gc` knows of, and the providers' stores (libvirt's boxes, keys and overlays).

use std::path::PathBuf;

/// envrig's own folder on this host: `$ENVRIG_HOME`, else `$XDG_DATA_HOME/envrig`, else
/// `~/.local/share/envrig`, else `/tmp/envrig`.
pub fn home_dir() -> PathBuf {
    if let Some(h) = std::env::var_os("ENVRIG_HOME") {
        return PathBuf::from(h);
    }
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("envrig")
}
