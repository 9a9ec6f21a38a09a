//! The core's side: a provider that lives in another process.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::wire::{Body, Call, FromPlugin, Hello, PROTOCOL, ToPlugin};
use crate::{Capabilities, ProviderError, Result};

/// How long a plugin may take to say hello after it was started.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of a plugin's stderr is kept to explain why it stopped.
const STDERR_KEPT: usize = 4096;

/// A plugin process that has said hello and is not connected to its engine yet.
pub struct Plugin {
    path: PathBuf,
    hello: Hello,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
    stderr: Words,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("path", &self.path)
            .field("hello", &self.hello)
            .finish()
    }
}

impl Plugin {
    /// Starts the plugin at `path` and reads its hello: the plugin named `name` must answer
    /// as `name`, in this protocol version, within [`HELLO_TIMEOUT`]. Its stderr is passed
    /// on to this process's stderr as it comes.
    /// `log` is the verbosity envrig runs at (`warn`, `debug`...), passed to the plugin as
    /// `ENVRIG_PLUGIN_LOG`.
    pub fn start(path: &Path, name: &str, log: &str) -> std::result::Result<Plugin, String> {
        let mut child = Command::new(path)
            .env("ENVRIG_PLUGIN_LOG", log)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", path.display()))?;
        let (Some(stdin), Some(stdout), Some(err)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            return Err(format!("cannot talk to {}", path.display()));
        };
        let stderr = pass_on_stderr(err);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut stdout = BufReader::new(stdout);
            let mut line = String::new();
            let r = stdout.read_line(&mut line).map(|_| line);
            let _ = tx.send((r, stdout));
        });
        let stopped = |child: &mut Child, why: String| {
            let _ = child.kill();
            let status = child.wait().ok();
            let words = stderr_tail(&stderr);
            let status = status.map(|s| format!(" ({s})")).unwrap_or_default();
            format!("{}: {why}{status}{words}", path.display())
        };
        let (line, stdout) = match rx.recv_timeout(HELLO_TIMEOUT) {
            Ok((Ok(line), stdout)) if !line.is_empty() => (line, stdout),
            Ok((Ok(_), _)) => {
                return Err(stopped(&mut child, "stopped before saying hello".into()));
            }
            Ok((Err(e), _)) => return Err(stopped(&mut child, format!("unreadable hello: {e}"))),
            Err(_) => {
                return Err(stopped(
                    &mut child,
                    format!("no hello within {} s", HELLO_TIMEOUT.as_secs()),
                ));
            }
        };
        let hello: Hello = serde_json::from_str(&line)
            .map_err(|e| stopped(&mut child, format!("a hello envrig cannot read ({e})")))?;
        if hello.protocol != PROTOCOL {
            return Err(stopped(
                &mut child,
                format!(
                    "speaks plugin protocol {}, this envrig speaks {PROTOCOL}",
                    hello.protocol
                ),
            ));
        }
        if hello.schema.name != name {
            return Err(stopped(
                &mut child,
                format!("calls itself `{}`, not `{name}`", hello.schema.name),
            ));
        }
        Ok(Plugin {
            path: path.to_path_buf(),
            hello,
            child,
            stdin,
            stdout,
            stderr,
        })
    }

    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// Asks the plugin to connect to the engine at `engine` (its local engine when none);
    /// the provider it serves, once it has.
    pub async fn connect(self, engine: Option<&crate::EngineAddress>) -> Result<PluginProvider> {
        let name: &'static str = intern(&self.hello.schema.name);
        let conn = Arc::new(Conn {
            name,
            path: self.path,
            stdin: Mutex::new(Some(self.stdin)),
            pending: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            ended: Mutex::new(None),
            child: Mutex::new(self.child),
            stderr: self.stderr,
        });
        let reader = conn.clone();
        let stdout = self.stdout;
        std::thread::spawn(move || reader.read_answers(stdout));
        let p = PluginProvider {
            name,
            capabilities: self.hello.schema.capabilities,
            conn,
        };
        p.call::<()>(Call::Connect {
            engine: engine.cloned(),
        })
        .await?;
        Ok(p)
    }
}

/// A plugin's last words on stderr, and whether its stderr has ended.
type Words = Arc<(Mutex<String>, std::sync::atomic::AtomicBool)>;

/// Copies a plugin's stderr to this process's stderr, keeping its last words.
fn pass_on_stderr(mut err: std::process::ChildStderr) -> Words {
    let kept: Words = Arc::new((Mutex::new(String::new()), Default::default()));
    let k = kept.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = err.read(&mut buf) {
            if n == 0 {
                break;
            }
            let _ = std::io::stderr().write_all(&buf[..n]);
            let mut k = k.0.lock().unwrap_or_else(|p| p.into_inner());
            k.push_str(&String::from_utf8_lossy(&buf[..n]));
            if k.len() > STDERR_KEPT {
                let cut = k.len() - STDERR_KEPT;
                let cut = (cut..k.len()).find(|i| k.is_char_boundary(*i)).unwrap_or(0);
                k.drain(..cut);
            }
        }
        k.1.store(true, Ordering::Release);
    });
    kept
}

/// The last line a plugin that stopped wrote on stderr: waits (up to a second) for its
/// stderr to end first, so the words are not lost to the race with its exit.
fn stderr_tail(kept: &Words) -> String {
    let t0 = std::time::Instant::now();
    while !kept.1.load(Ordering::Acquire) && t0.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let k = kept.0.lock().unwrap_or_else(|p| p.into_inner());
    let t = k.trim();
    if t.is_empty() {
        String::new()
    } else {
        format!(": {}", t.lines().last().unwrap_or(t))
    }
}

/// A name given out for the life of the process (provider names and resource kinds are few).
pub(super) fn intern(s: &str) -> &'static str {
    static SEEN: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(v) = seen.get(s) {
        return v;
    }
    let v: &'static str = Box::leak(s.to_string().into_boxed_str());
    seen.insert(v);
    v
}

struct Conn {
    name: &'static str,
    path: PathBuf,
    stdin: Mutex<Option<ChildStdin>>,
    pending: Mutex<HashMap<u64, mpsc::UnboundedSender<Body>>>,
    next: AtomicU64,
    /// Why the plugin can no longer answer, once it cannot.
    ended: Mutex<Option<String>>,
    child: Mutex<Child>,
    stderr: Words,
}

impl Conn {
    fn read_answers(&self, stdout: BufReader<std::process::ChildStdout>) {
        for line in stdout.lines() {
            let Ok(line) = line else { break };
            let Ok(msg) = serde_json::from_str::<FromPlugin>(&line) else {
                eprintln!(
                    "envrig: the {} plugin said something unreadable: {line}",
                    self.name
                );
                continue;
            };
            let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(tx) = pending.get(&msg.id) {
                let _ = tx.send(msg.body);
            }
        }
        // Stopped: every call still waiting learns it (its sender goes). Its last words
        // first: by the time its stderr ends, the process has exited.
        let words = stderr_tail(&self.stderr);
        let status = self
            .child
            .lock()
            .map(|mut c| c.try_wait().ok().flatten())
            .ok()
            .flatten()
            .map(|s| format!(" ({s})"))
            .unwrap_or_default();
        *self.ended.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!(
            "its plugin {} stopped{status}{words}",
            self.path.display(),
        ));
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    fn gone(&self) -> ProviderError {
        let why = self
            .ended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| format!("its plugin {} stopped", self.path.display()));
        ProviderError::Unavailable {
            provider: self.name,
            message: why,
            hint: None,
        }
    }

    fn write(&self, msg: &ToPlugin) -> bool {
        let Ok(mut line) = serde_json::to_string(msg) else {
            return false;
        };
        line.push('\n');
        let mut stdin = self.stdin.lock().unwrap_or_else(|p| p.into_inner());
        let written = stdin
            .as_mut()
            .is_some_and(|s| s.write_all(line.as_bytes()).and_then(|_| s.flush()).is_ok());
        if !written {
            *stdin = None;
        }
        written
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Its stdin closes with it: the plugin exits.
        self.stdin.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// A call in flight: when its caller stops waiting, the plugin is told to stop it.
struct Waiting<'a> {
    conn: &'a Conn,
    id: u64,
    done: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.conn
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
        if !self.done {
            self.conn.write(&ToPlugin {
                id: self.id,
                call: None,
                cancel: true,
            });
        }
    }
}

/// A provider served by a plugin process ([`super::serve`]), speaking the plugin protocol.
pub struct PluginProvider {
    pub(super) name: &'static str,
    pub(super) capabilities: Capabilities,
    conn: Arc<Conn>,
}

impl std::fmt::Debug for PluginProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginProvider")
            .field("name", &self.name)
            .field("path", &self.conn.path)
            .finish()
    }
}

impl PluginProvider {
    /// Makes `call`, handing its events to `on_event`; its result as `T`.
    pub(super) async fn call_with<T: DeserializeOwned>(
        &self,
        call: Call,
        mut on_event: impl FnMut(Body),
    ) -> Result<T> {
        let conn = &*self.conn;
        let id = conn.next.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::unbounded_channel();
        conn.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        let mut waiting = Waiting {
            conn,
            id,
            done: false,
        };
        if conn
            .ended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
            || !conn.write(&ToPlugin {
                id,
                call: Some(call),
                cancel: false,
            })
        {
            waiting.done = true;
            return Err(conn.gone());
        }
        while let Some(body) = rx.recv().await {
            match body {
                Body::Ok(v) => {
                    waiting.done = true;
                    return serde_json::from_value(v).map_err(|e| ProviderError::Engine {
                        provider: self.name,
                        op: "read the plugin's answer".into(),
                        source: e.into(),
                    });
                }
                Body::Error(e) => {
                    waiting.done = true;
                    return Err(e.into_error(self.name));
                }
                event => on_event(event),
            }
        }
        waiting.done = true;
        Err(conn.gone())
    }

    pub(super) async fn call<T: DeserializeOwned>(&self, call: Call) -> Result<T> {
        self.call_with(call, |_| {}).await
    }
}
