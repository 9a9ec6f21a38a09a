//! Starting Podman's API service where nothing would: on a host without systemd (which
//! socket-activates `podman.socket`), no process listens on the documented socket until
//! someone runs `podman system service`. envrig does that for this user when the socket does
//! not answer and `podman` is installed: detached (its own process group, no terminal, its
//! output in `envrig-service.log` beside the socket), ending by itself after
//! [`IDLE_SECONDS`] without a client, as the socket-activated service does, so nothing is
//! left running for good. Said once, at the start.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use envrig_provider_api::{ProviderError, Result};

/// How long the started service lives without a client (Podman's own default is 5 s, which
/// would make every command start it again).
const IDLE_SECONDS: u32 = 600;

/// How long the service may take to answer (measured here: about 0.3 s).
const START_TIMEOUT: Duration = Duration::from_secs(20);

fn unavailable(message: String) -> ProviderError {
    ProviderError::Unavailable {
        provider: "podman",
        message,
        hint: Some(crate::Flavor::Podman.hint().to_string()),
    }
}

/// Starts `podman system service` on `socket` and waits, bounded, until it answers. Commands
/// started at once start one service: the first to take `envrig-service.lock` beside the
/// socket starts it, the others find it answering once they have the lock.
pub(crate) async fn start_service(socket: &Path) -> Result<()> {
    let Some(podman) = find_on_path("podman") else {
        return Err(ProviderError::NotInstalled {
            provider: "podman",
            message: format!(
                "nothing answers on {} and `podman` is not on PATH",
                socket.display()
            ),
            hint: Some(crate::Flavor::Podman.hint().to_string()),
        });
    };
    let dir = socket.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir)
        .map_err(|e| unavailable(format!("cannot make {}: {e}", dir.display())))?;
    let lock_path = dir.join("envrig-service.lock");
    let lock = std::fs::File::create(&lock_path)
        .map_err(|e| unavailable(format!("cannot write {}: {e}", lock_path.display())))?;
    let waited = Instant::now();
    // Bounded: the holder is starting the service, which takes START_TIMEOUT at most.
    while lock.try_lock().is_err() {
        if waited.elapsed() > START_TIMEOUT {
            return Err(unavailable(format!(
                "another command has been starting `podman system service` for over {} s ({})",
                START_TIMEOUT.as_secs(),
                lock_path.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if crate::ping_api_version(&socket.to_string_lossy())
        .await
        .is_some()
    {
        return Ok(());
    }
    let log_path = dir.join("envrig-service.log");
    let log = std::fs::File::create(&log_path)
        .map_err(|e| unavailable(format!("cannot write {}: {e}", log_path.display())))?;
    let err_log = log
        .try_clone()
        .map_err(|e| unavailable(format!("{}: {e}", log_path.display())))?;
    let mut service = std::process::Command::new(&podman);
    // Nor any descriptor this command inherited (a caller's lock or pipe would stay open as
    // long as the service runs, and whoever waits on it would wait minutes): all are marked
    // close-on-exec in the child (Linux 5.11; where refused, the service keeps them).
    // SAFETY: `close_range` is a system call, safe between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        service.pre_exec(|| {
            libc::close_range(
                3,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC as libc::c_int,
            );
            Ok(())
        });
    }
    let mut child = service
        .args(["system", "service", "--time", &IDLE_SECONDS.to_string()])
        .arg(format!("unix://{}", socket.display()))
        // It outlives this command and serves later ones: it gets what Podman needs of the
        // user's environment and nothing of this command's (a temporary folder removed
        // after, secrets, CONTAINER_HOST, which would make it a client of its own socket).
        .env_clear()
        .envs(std::env::vars().filter(|(k, _)| kept_for_service(k)))
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log)
        .process_group(0)
        .spawn()
        .map_err(|e| unavailable(format!("cannot start {}: {e}", podman.display())))?;
    tracing::warn!(
        "started `podman system service` for this user on {} (it stops after {} s unused; log: {})",
        socket.display(),
        IDLE_SECONDS,
        log_path.display()
    );
    let started = Instant::now();
    loop {
        if crate::ping_api_version(&socket.to_string_lossy())
            .await
            .is_some()
        {
            // The service outlives this command: it is not waited for (the kernel's reaper
            // takes it when it ends after this process has).
            drop(child);
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let said = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = said.lines().rev().take(5).collect();
            return Err(unavailable(format!(
                "`podman system service` ended ({status}) before answering on {}: {}",
                socket.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
            )));
        }
        if started.elapsed() > START_TIMEOUT {
            let _ = child.kill();
            return Err(unavailable(format!(
                "`podman system service` did not answer on {} within {} s (log: {})",
                socket.display(),
                START_TIMEOUT.as_secs(),
                log_path.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the variable `k` of this command's environment is given to the service it starts.
fn kept_for_service(k: &str) -> bool {
    matches!(
        k,
        "PATH"
            | "HOME"
            | "USER"
            | "LOGNAME"
            | "LANG"
            | "XDG_RUNTIME_DIR"
            | "XDG_CONFIG_HOME"
            | "XDG_DATA_HOME"
            | "REGISTRY_AUTH_FILE"
    ) || k.starts_with("LC_")
        || (k.starts_with("CONTAINERS_") && k != "CONTAINERS_CONF_OVERRIDE")
}

/// The first executable called `name` on `PATH`.
fn find_on_path(name: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}
