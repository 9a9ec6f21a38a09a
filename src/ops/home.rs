//! envrig's own folder on this host, where what outlives one project is kept (the lock
//! files `gc` knows of, and the providers' stores).

/// envrig's own folder on this host: `$ENVRIG_HOME`, else `$XDG_DATA_HOME/envrig`, else
/// `~/.local/share/envrig` (the libvirt box store and keys live there too).
pub fn home_dir() -> std::path::PathBuf {
    if let Some(h) = std::env::var_os("ENVRIG_HOME") {
        return std::path::PathBuf::from(h);
    }
    std::env::var_os("XDG_DATA_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".local/share"))
        })
        .unwrap_or_else(|| std::path::PathBuf::from("/tmp"))
        .join("envrig")
}
