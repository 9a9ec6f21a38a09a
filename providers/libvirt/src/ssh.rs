//! SSH access to machines, with `russh`: one key pair per environment (0600, in a 0700
//! folder of the user's data folder, never shared between environments), and each
//! machine's host key recorded at first contact and checked on every later one, in a
//! `known_hosts` file OpenSSH reads too (`envrig ssh`, `ssh-config`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey};

/// What can go wrong reaching a machine over SSH.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("cannot connect to 127.0.0.1:{port}: {source}")]
    Connect {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("SSH on port {port}: {message}")]
    Protocol { port: u16, message: String },
    #[error(
        "the machine on port {port} shows host key {got}, not the {expected} recorded at first contact; if it was recreated by hand, `envrig destroy` it and `envrig up` again"
    )]
    HostKeyChanged {
        port: u16,
        expected: String,
        got: String,
    },
    #[error("the machine on port {port} refused the key for user `{user}`")]
    Rejected { port: u16, user: String },
    #[error("no SSH answer on port {port} within {secs}s")]
    Timeout { port: u16, secs: u64 },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The key pair and known hosts of one environment: `ROOT/ENV/`.
#[derive(Debug, Clone)]
pub struct EnvKeys {
    pub dir: PathBuf,
}

/// Serialises changes to known_hosts files within this process (machines of one
/// environment start in parallel; other processes are kept out by the project's lock).
static KNOWN_HOSTS: Mutex<()> = Mutex::new(());

impl EnvKeys {
    pub fn new(root: &Path, env: &str) -> EnvKeys {
        EnvKeys {
            dir: root.join(env),
        }
    }

    pub fn identity(&self) -> PathBuf {
        self.dir.join("id_ed25519")
    }

    pub fn known_hosts(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }

    /// The environment's private key, made (Ed25519, from the OS's random source) the
    /// first time.
    pub fn ensure(&self) -> std::io::Result<PrivateKey> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
        let path = self.identity();
        if let Ok(k) = PrivateKey::read_openssh_file(&path) {
            return Ok(k);
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))?;
        let mut seed = [0u8; 32];
        use std::io::Read;
        std::fs::File::open("/dev/urandom")?.read_exact(&mut seed)?;
        let mut key = PrivateKey::from(russh::keys::ssh_key::private::Ed25519Keypair::from_seed(
            &seed,
        ));
        key.set_comment("envrig");
        let pem = key
            .to_openssh(russh::keys::ssh_key::LineEnding::LF)
            .map_err(std::io::Error::other)?;
        // Written aside with mode 0600 from the start, then renamed: never readable by others,
        // never half-written.
        let tmp = self.dir.join(format!(".id_ed25519-{}", std::process::id()));
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(pem.as_bytes())?;
        }
        std::fs::rename(&tmp, &path)?;
        std::fs::write(
            self.dir.join("id_ed25519.pub"),
            format!("{}\n", public_line(key.public_key())?),
        )?;
        Ok(key)
    }

    /// The host key recorded for the machine on `port`.
    pub fn pinned(&self, port: u16) -> Option<PublicKey> {
        let text = std::fs::read_to_string(self.known_hosts()).ok()?;
        let host = host_pattern(port);
        text.lines().find_map(|l| {
            let (h, key) = l.split_once(' ')?;
            (h == host)
                .then(|| PublicKey::from_openssh(key).ok())
                .flatten()
        })
    }

    /// Records `key` for the machine on `port` (replacing what was recorded there).
    pub fn pin(&self, port: u16, key: &PublicKey) -> std::io::Result<()> {
        let _g = KNOWN_HOSTS.lock().unwrap_or_else(|e| e.into_inner());
        let mut lines = self.lines_without(port);
        lines.insert(host_pattern(port), public_line(key)?);
        self.write_lines(&lines)
    }

    /// Forgets the machine on `port` (it was removed).
    pub fn unpin(&self, port: u16) -> std::io::Result<()> {
        let _g = KNOWN_HOSTS.lock().unwrap_or_else(|e| e.into_inner());
        let lines = self.lines_without(port);
        if self.known_hosts().exists() {
            self.write_lines(&lines)?;
        }
        Ok(())
    }

    fn lines_without(&self, port: u16) -> BTreeMap<String, String> {
        let host = host_pattern(port);
        std::fs::read_to_string(self.known_hosts())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(h, _)| *h != host)
            .map(|(h, k)| (h.to_string(), k.to_string()))
            .collect()
    }

    fn write_lines(&self, lines: &BTreeMap<String, String>) -> std::io::Result<()> {
        let text: String = lines.iter().map(|(h, k)| format!("{h} {k}\n")).collect();
        let tmp = self
            .dir
            .join(format!(".known_hosts-{}", std::process::id()));
        std::fs::write(&tmp, text)?;
        std::fs::rename(tmp, self.known_hosts())
    }
}

/// How OpenSSH names a host on a non-standard port in known_hosts.
fn host_pattern(port: u16) -> String {
    format!("[127.0.0.1]:{port}")
}

/// `ssh-ed25519 AAAA...` (no comment), as authorized_keys and known_hosts hold it.
pub fn public_line(key: &PublicKey) -> std::io::Result<String> {
    let mut k = key.clone();
    k.set_comment("");
    k.to_openssh().map_err(std::io::Error::other)
}

fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Checks the server's host key against the one expected (any, at first contact) and
/// remembers what it saw.
struct Pin {
    expect: Option<PublicKey>,
    seen: Arc<Mutex<Option<PublicKey>>>,
}

impl client::Handler for Pin {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } = server else {
            return Ok(false);
        };
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(key.clone());
        Ok(match &self.expect {
            Some(e) => e.key_data() == key.key_data(),
            None => true,
        })
    }
}

/// An authenticated connection to a machine.
pub struct Session {
    handle: client::Handle<Pin>,
    pub port: u16,
    /// The host key the machine showed.
    pub host_key: PublicKey,
}

/// Connects to 127.0.0.1:`port` as `user` with `key`, checking the host key against
/// `expect` (none: first contact, any is taken), within `limit`.
pub async fn connect(
    port: u16,
    user: &str,
    key: &PrivateKey,
    expect: Option<PublicKey>,
    limit: Duration,
) -> Result<Session, SshError> {
    let seen = Arc::new(Mutex::new(None));
    let pin = Pin {
        expect: expect.clone(),
        seen: seen.clone(),
    };
    let config = Arc::new(client::Config {
        inactivity_timeout: Some(Duration::from_secs(3600)),
        ..Default::default()
    });
    let work = async {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|source| SshError::Connect { port, source })?;
        let _ = stream.set_nodelay(true);
        let mut handle = match client::connect_stream(config, stream, pin).await {
            Ok(h) => h,
            Err(e) => {
                let got = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
                if let (Some(exp), Some(got)) = (&expect, got)
                    && exp.key_data() != got.key_data()
                {
                    return Err(SshError::HostKeyChanged {
                        port,
                        expected: fingerprint(exp),
                        got: fingerprint(&got),
                    });
                }
                return Err(SshError::Protocol {
                    port,
                    message: e.to_string(),
                });
            }
        };
        let hash = handle
            .best_supported_rsa_hash()
            .await
            .ok()
            .flatten()
            .flatten();
        let auth = handle
            .authenticate_publickey(
                user,
                PrivateKeyWithHashAlg::new(Arc::new(key.clone()), hash),
            )
            .await
            .map_err(|e| SshError::Protocol {
                port,
                message: e.to_string(),
            })?;
        if !auth.success() {
            return Err(SshError::Rejected {
                port,
                user: user.to_string(),
            });
        }
        let host_key = seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| SshError::Protocol {
                port,
                message: "no host key was shown".into(),
            })?;
        Ok(Session {
            handle,
            port,
            host_key,
        })
    };
    tokio::time::timeout(limit, work)
        .await
        .map_err(|_| SshError::Timeout {
            port,
            secs: limit.as_secs(),
        })?
}

impl Session {
    /// Runs `command` (a shell line), feeding it `stdin` as it reads, streaming its output to
    /// `output(is_stderr, bytes)` as it arrives; returns its exit status (128 + signal
    /// when killed).
    pub async fn exec(
        &self,
        command: &str,
        stdin: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send + '_>>,
        output: &mut (dyn FnMut(bool, &[u8]) + Send),
    ) -> Result<i64, SshError> {
        let port = self.port;
        let proto = |e: russh::Error| SshError::Protocol {
            port,
            message: e.to_string(),
        };
        let mut ch = self.handle.channel_open_session().await.map_err(proto)?;
        ch.exec(true, command).await.map_err(proto)?;
        if let Some(data) = stdin {
            ch.data(data).await.map_err(proto)?;
        }
        ch.eof().await.map_err(proto)?;
        let mut code = None;
        while let Some(msg) = ch.wait().await {
            match msg {
                russh::ChannelMsg::Data { data } => output(false, &data),
                russh::ChannelMsg::ExtendedData { data, .. } => output(true, &data),
                russh::ChannelMsg::ExitStatus { exit_status } => {
                    code = Some(i64::from(exit_status))
                }
                russh::ChannelMsg::ExitSignal { .. } => code = code.or(Some(128 + 9)),
                _ => {}
            }
        }
        code.ok_or_else(|| SshError::Protocol {
            port,
            message: "the command ended without an exit status".into(),
        })
    }

    pub async fn close(self) {
        let _ = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_made_once_private_and_host_keys_are_pinned_per_port() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let keys = EnvKeys::new(root.path(), "env1");
        let k1 = keys.ensure().unwrap();
        let k2 = keys.ensure().unwrap();
        assert_eq!(k1.public_key().key_data(), k2.public_key().key_data());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&keys.identity()), 0o600);
        assert_eq!(mode(&keys.dir), 0o700);
        let pub_line = std::fs::read_to_string(keys.dir.join("id_ed25519.pub")).unwrap();
        assert!(pub_line.starts_with("ssh-ed25519 "), "{pub_line}");
        // Another environment gets another key.
        let other = EnvKeys::new(root.path(), "env2").ensure().unwrap();
        assert_ne!(other.public_key().key_data(), k1.public_key().key_data());

        let (h1, h2) = (k1.public_key().clone(), other.public_key().clone());
        assert!(keys.pinned(2222).is_none());
        keys.pin(2222, &h1).unwrap();
        keys.pin(2223, &h2).unwrap();
        assert_eq!(keys.pinned(2222).unwrap().key_data(), h1.key_data());
        keys.pin(2222, &h2).unwrap();
        assert_eq!(keys.pinned(2222).unwrap().key_data(), h2.key_data());
        keys.unpin(2222).unwrap();
        assert!(keys.pinned(2222).is_none());
        assert!(keys.pinned(2223).is_some());
        let text = std::fs::read_to_string(keys.known_hosts()).unwrap();
        assert!(text.starts_with("[127.0.0.1]:2223 ssh-ed25519 "), "{text}");
    }
}
