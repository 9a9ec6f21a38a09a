//! Running envrig as an ordinary user (the rootless tests): the account
//! `scripts/rootless-user.sh` prepares (`ENVRIG_TEST_USER`, default `envrig-user`), a copy of
//! the binaries it can read, project folders it owns, and its own engines' CLIs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::Run;

/// The test user.
pub struct User {
    pub name: String,
    pub uid: u32,
    pub home: PathBuf,
    /// A folder of this test's, owned by the user: the binaries and the projects.
    pub dir: PathBuf,
}

impl User {
    /// The test user, with a folder of this test's that holds a copy of envrig's binaries
    /// (the build's own folder may be closed to other users). Fails when the user is missing.
    pub fn for_test() -> User {
        let name = std::env::var("ENVRIG_TEST_USER").unwrap_or_else(|_| "envrig-user".into());
        let id = Command::new("id").args(["-u", &name]).output().expect("id");
        assert!(
            id.status.success(),
            "the test user {name} is missing; run scripts/host-setup.sh"
        );
        let uid: u32 = String::from_utf8_lossy(&id.stdout).trim().parse().unwrap();
        let entry = Command::new("getent")
            .args(["passwd", &name])
            .output()
            .expect("getent");
        let home = PathBuf::from(
            String::from_utf8_lossy(&entry.stdout)
                .trim()
                .split(':')
                .nth(5)
                .unwrap_or_else(|| panic!("no home for {name}")),
        );
        let dir = PathBuf::from(format!(
            "/tmp/envrig-user-{}-{}",
            std::process::id(),
            super::unique("u")
        ));
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        let exe = PathBuf::from(env!("CARGO_BIN_EXE_envrig"));
        for bin in ["envrig", "envrig-provider-libvirt"] {
            let from = exe.with_file_name(bin);
            if from.exists() {
                std::fs::copy(&from, dir.join("bin").join(bin)).unwrap();
            }
        }
        let user = User {
            name,
            uid,
            home,
            dir,
        };
        user.own(&user.dir);
        user
    }

    /// Gives `path` (and what is under it) to the user.
    pub fn own(&self, path: &Path) {
        let s = Command::new("chown")
            .args(["-R", &format!("{}:{}", self.name, self.name)])
            .arg(path)
            .status()
            .unwrap();
        assert!(s.success(), "chown {}", path.display());
    }

    /// `program` run as the user, from `dir`, with a plain user's environment and no stdin.
    pub fn command(&self, dir: &Path, program: &str) -> Command {
        self.command_env(dir, &[], program)
    }

    /// [`User::command`] with the variables `env` set too.
    pub fn command_env(&self, dir: &Path, env: &[(&str, &str)], program: &str) -> Command {
        let mut c = Command::new("runuser");
        c.args(["-u", &self.name, "--", "env", "-i"])
            .arg(format!("HOME={}", self.home.display()))
            .arg(format!("USER={}", self.name))
            .arg(format!("XDG_RUNTIME_DIR=/run/user/{}", self.uid))
            .arg(format!(
                "PATH={}:/usr/local/bin:/usr/bin:/bin",
                self.dir.join("bin").display()
            ))
            .arg("NO_COLOR=1")
            .arg(format!("TMPDIR={}", self.dir.display()))
            .arg(format!("ENVRIG_GC_SCOPE={}", self.dir.display()))
            .arg(format!("ENVRIG_PLUGINS={}", self.dir.join("bin").display()))
            .args(env.iter().map(|(k, v)| format!("{k}={v}")))
            .arg(program)
            .current_dir(dir)
            .stdin(Stdio::null());
        c
    }

    /// envrig run as the user in `dir`.
    pub fn envrig(&self, dir: &Path, args: &[&str]) -> Run {
        self.envrig_env(dir, &[], args)
    }

    /// envrig run as the user in `dir`, with the variables `env` set too.
    pub fn envrig_env(&self, dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Run {
        super::capture(self.command_env(dir, env, "envrig").args(args))
    }

    /// The user's own `podman` (rootless storage and networks).
    pub fn podman(&self, args: &[&str]) -> Run {
        super::capture(self.command(Path::new("/"), "podman").args(args))
    }

    /// A project folder owned by the user, with `envfile` in it.
    pub fn project(&self, name: &str, envfile: &str) -> PathBuf {
        let d = self.dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("Envfile"), envfile).unwrap();
        self.own(&d);
        d
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
