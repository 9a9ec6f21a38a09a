//! The rig of extra engines `scripts/engines.sh` makes (Docker daemons and libvirt hosts in
//! network namespaces of their own, on one link), and a registry on that link for them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The rig's endpoints (`NAME URI`), started when needed.
pub fn rig() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = Command::new("bash")
        .arg(root.join("scripts/engines.sh"))
        .args(["up", "3", "2"])
        .output()
        .expect("run scripts/engines.sh");
    assert!(
        o.status.success(),
        "scripts/engines.sh up 3 2 failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(n, u)| (n.to_string(), u.to_string()))
        .collect()
}

/// The URI of the rig's engine `name`.
pub fn engine(rig: &[(String, String)], name: &str) -> String {
    rig.iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no {name} in the rig: {rig:?}"))
        .1
        .clone()
}

/// A registry (Debian's `docker-registry`) of this test's, on this machine's address on the
/// rig's link (its engines treat that /24 as HTTP registries), storing into a folder of its
/// own; stopped when dropped.
pub struct Registry {
    pub addr: String,
    pub root: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts one on the link of `rig` (this machine is `.1` there).
    pub fn on_link(rig: &[(String, String)]) -> Registry {
        let d1 = engine(rig, "d1");
        let host = d1
            .trim_start_matches("tcp://")
            .split(':')
            .next()
            .unwrap()
            .to_string();
        let prefix = host.rsplit_once('.').unwrap().0;
        Registry::on(&format!("{prefix}.1"))
    }

    /// Starts one on `ip` (an address of this machine), on a free port.
    pub fn on(ip: &str) -> Registry {
        let port = std::net::TcpListener::bind((ip, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("{ip}:{port}");
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        let conf = dir.path().join("registry.yml");
        std::fs::write(
            &conf,
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                root.display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("registry.log")).unwrap())
            .spawn()
            .expect("docker-registry (scripts/host-setup.sh installs it)");
        let r = Registry {
            addr,
            root,
            child,
            _dir: dir,
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(&r.addr).is_ok() {
                return r;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("the test registry does not answer on {}", r.addr);
    }

    /// `GET path` (HTTP/1.0) with `accept`; the body.
    pub fn get(&self, path: &str, accept: &str) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: {}\r\nAccept: {accept}\r\n\r\n",
            self.addr
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default()
    }

    /// The file holding blob `digest` (`sha256:…`) in the registry's storage.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.root
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
