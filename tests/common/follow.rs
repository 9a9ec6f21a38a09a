//! A command that goes on until interrupted (`logs -f`): its output lines read as they come,
//! each wait bounded.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct Following {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every line so far.
    pub seen: Vec<String>,
}

impl Following {
    /// Starts the real binary in `dir` with `args`.
    pub fn start(dir: &Path, args: &[&str]) -> Following {
        Self::spawn(
            Command::new(env!("CARGO_BIN_EXE_envrig"))
                .args(args)
                .current_dir(dir),
        )
    }

    /// Starts the real binary in `dir` with `args` and its own `ENVRIG_HOME`.
    pub fn start_home(dir: &Path, home: &Path, args: &[&str]) -> Following {
        Self::spawn(
            Command::new(env!("CARGO_BIN_EXE_envrig"))
                .args(args)
                .current_dir(dir)
                .env("ENVRIG_HOME", home),
        )
    }

    fn spawn(cmd: &mut Command) -> Following {
        let mut child = cmd
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start envrig");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Following {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Whether a line equal to `want` came (or had come) within `limit`.
    pub fn wait_for(&mut self, want: &str, limit: Duration) -> bool {
        self.wait_until(|l| l == want, limit)
    }

    /// Whether a line `hit` takes came (or had come) within `limit`.
    pub fn wait_until(&mut self, hit: impl Fn(&str) -> bool, limit: Duration) -> bool {
        if self.seen.iter().any(|l| hit(l)) {
            return true;
        }
        let deadline = Instant::now() + limit;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = hit(&line);
                    self.seen.push(line);
                    if hit {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
        false
    }

    /// Ctrl-C; the exit code when it ended within 15 s (else it is killed: `None`).
    pub fn interrupt(mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        for _ in 0..150 {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `len` bytes of a fixed pseudo-random sequence (nothing compresses it) to `path`,
/// a MiB at a time; their SHA-256 in hex.
pub fn write_big(path: &Path, len: usize) -> String {
    use sha2::Digest;
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let (mut x, mut left, mut h) = (0x9e37_79b9_7f4a_7c15u64, len, sha2::Sha256::new());
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        let n = left.min(buf.len());
        f.write_all(&buf[..n]).expect("write");
        h.update(&buf[..n]);
        left -= n;
    }
    f.flush().expect("flush");
    format!("{:x}", h.finalize())
}

/// The SHA-256 of the file at `path`, in hex.
pub fn sha256_of(path: &Path) -> String {
    envrig_provider_api::hash::sha256_file(path)
        .expect("read")
        .0
}
