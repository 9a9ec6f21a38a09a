//! Helpers shared by the integration tests: run the real `envrig` binary in a temp project,
//! and ask the real Docker engine (through its own CLI, independently of envrig's code)
//! what exists.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

pub mod follow;
pub mod rig;
pub mod user;

/// The local test image built by `scripts/host-setup.sh`.
pub const TEST_IMAGE: &str = "envrig-test/busybox:latest";

/// Checks that the engine and the test image are there. End-to-end tests are `#[ignore]`d
/// (so a plain `cargo test` reports them as ignored, never as passed); `scripts/test.sh` runs
/// them with `--run-ignored all`, and then a missing engine FAILS the test.
pub fn e2e() {
    scope_to_this_test();
    let v = Command::new("docker")
        .args(["version", "--format", "{{.Server.APIVersion}}"])
        .output()
        .expect("the `docker` CLI cannot be run; run scripts/host-setup.sh");
    assert!(
        v.status.success(),
        "no Docker engine answers ({}); run scripts/host-setup.sh",
        String::from_utf8_lossy(&v.stderr).trim()
    );
    let img = Command::new("docker")
        .args(["image", "inspect", TEST_IMAGE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("docker image inspect");
    assert!(
        img.success(),
        "{TEST_IMAGE} is missing; run scripts/host-setup.sh"
    );
}

/// Every test process (nextest runs one test per process) keeps its folders under a
/// folder of its own, and every `gc` it runs is limited to them (`ENVRIG_GC_SCOPE`): a test
/// that counts what a SIGKILL left never races another test's `gc`.
fn scope_to_this_test() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let d = std::env::temp_dir().join(format!("envrig-t{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let d = d.canonicalize().unwrap();
        // SAFETY: set once, before this test starts threads or creates folders.
        unsafe {
            std::env::set_var("TMPDIR", &d);
            std::env::set_var("ENVRIG_GC_SCOPE", &d);
        }
    });
}

/// The folder `gc` is limited to in this test (see [`e2e`]).
pub fn gc_scope() -> PathBuf {
    PathBuf::from(std::env::var_os("ENVRIG_GC_SCOPE").expect("e2e() sets ENVRIG_GC_SCOPE"))
}

/// A name no other test (or test run) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id() % 100000,
        nanos % 100000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// What a command printed and how it exited.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "expected success:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    /// The command's JSON document: the last line of stdout (docs/json.md); every line
    /// before it must be an `envrig.event/1` event.
    pub fn json(&self) -> serde_json::Value {
        let text = self.stdout.trim_end();
        let (events, last) = match text.rsplit_once('\n') {
            Some((events, last)) if last.starts_with('{') => (events, last),
            _ => ("", text),
        };
        for line in events.lines() {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}\nin: {text}"));
            assert_eq!(v["schema"], "envrig.event/1", "not an event: {line}");
        }
        serde_json::from_str(last).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// A project folder with an Envfile; destroys what it created when dropped.
pub struct Project {
    pub dir: tempfile::TempDir,
    pub destroy_on_drop: bool,
}

impl Project {
    pub fn new(envfile: &str) -> Project {
        let dir = tempfile::Builder::new()
            .prefix("envrig-test-")
            .tempdir()
            .unwrap();
        std::fs::write(dir.path().join("Envfile"), envfile).unwrap();
        Project {
            dir,
            destroy_on_drop: true,
        }
    }

    /// A project in a given subfolder of a temp dir (for "same name, different folder").
    pub fn in_subfolder(parent: &Path, name: &str, envfile: &str) -> PathBuf {
        let d = parent.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("Envfile"), envfile).unwrap();
        d
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, envfile: &str) {
        std::fs::write(self.path().join("Envfile"), envfile).unwrap();
    }

    pub fn envrig(&self, args: &[&str]) -> Run {
        envrig_in(self.path(), args)
    }

    /// The environment id, from `status --json`.
    pub fn env_id(&self) -> String {
        self.envrig(&["status", "--json"]).ok().json()["env_id"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if self.destroy_on_drop {
            let _ = envrig_in(self.path(), &["destroy", "-f"]);
            remove_by_folder(self.path());
        }
    }
}

/// Runs the real binary in `dir` with its own `ENVRIG_HOME` (box store, keys, lock
/// registry) and the extra environment `env`, with no stdin.
pub fn envrig_home_env(dir: &Path, home: &Path, env: &[(&str, &str)], args: &[&str]) -> Run {
    let o = Command::new(env!("CARGO_BIN_EXE_envrig"))
        .args(args)
        .current_dir(dir)
        .env("ENVRIG_HOME", home)
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run envrig");
    Run::from(o)
}

/// Runs the real binary in `dir` with its own `ENVRIG_HOME`.
pub fn envrig_home(dir: &Path, home: &Path, args: &[&str]) -> Run {
    envrig_home_env(dir, home, &[], args)
}

/// Runs the real binary in `dir` with no stdin.
pub fn envrig_in(dir: &Path, args: &[&str]) -> Run {
    let o = Command::new(env!("CARGO_BIN_EXE_envrig"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env_remove("ENVRIG_FILE")
        .env_remove("ENVRIG_PROVIDER")
        .stdin(Stdio::null())
        .output()
        .expect("run envrig");
    Run::from(o)
}

/// Runs `c` with no stdin and captures what it printed.
pub fn capture(c: &mut Command) -> Run {
    Run::from(c.stdin(Stdio::null()).output().expect("run a command"))
}

/// Runs the docker CLI.
pub fn docker(args: &[&str]) -> Run {
    Run::from(
        Command::new("docker")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run docker"),
    )
}

/// Container ids (all states) carrying `label`.
pub fn containers(label: &str) -> Vec<String> {
    docker(&[
        "ps",
        "-aq",
        "--no-trunc",
        "--filter",
        &format!("label={label}"),
    ])
    .ok()
    .stdout
    .lines()
    .map(str::to_string)
    .collect()
}

pub fn networks(label: &str) -> Vec<String> {
    docker(&["network", "ls", "-q", "--filter", &format!("label={label}")])
        .ok()
        .stdout
        .lines()
        .map(str::to_string)
        .collect()
}

pub fn volumes(label: &str) -> Vec<String> {
    docker(&["volume", "ls", "-q", "--filter", &format!("label={label}")])
        .ok()
        .stdout
        .lines()
        .map(str::to_string)
        .collect()
}

/// A container's state as docker reports it (`running`, `exited`, ...).
pub fn container_state(id: &str) -> String {
    docker(&["inspect", "--format", "{{.State.Status}}", id])
        .ok()
        .stdout
        .trim()
        .to_string()
}

/// Backstop cleanup: whatever carries this folder's label goes.
pub fn remove_by_folder(folder: &Path) {
    let folder = folder
        .canonicalize()
        .unwrap_or_else(|_| folder.to_path_buf());
    let label = format!("dev.envrig.folder={}", folder.display());
    let ids = containers(&label);
    if !ids.is_empty() {
        let mut args = vec!["rm", "-f"];
        args.extend(ids.iter().map(String::as_str));
        let _ = docker(&args);
    }
}

/// A free TCP port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The body of `GET /` on 127.0.0.1:`port` (bounded: 100 tries over about 10 s).
pub fn http_get(port: u16) -> String {
    use std::io::{Read, Write};
    let mut last = String::new();
    for _ in 0..100 {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(mut s) => {
                s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                    .unwrap();
                let _ = s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n");
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                if let Some((_, body)) = out.split_once("\r\n\r\n") {
                    return body.trim().to_string();
                }
                last = out;
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("nothing answers on 127.0.0.1:{port}: {last}");
}

/// The small test guest built by `scripts/build-test-guest.sh`, as a box path
/// (`ENVRIG_TEST_GUEST`, else the cached one).
pub fn guest() -> String {
    let g = std::env::var("ENVRIG_TEST_GUEST")
        .unwrap_or_else(|_| "/var/cache/envrig-test/guests/small-latest".into());
    std::fs::canonicalize(&g)
        .unwrap_or_else(|e| {
            panic!("the test guest {g} is missing ({e}); run scripts/host-setup.sh")
        })
        .display()
        .to_string()
}
