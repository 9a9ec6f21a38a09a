//! Files into and out of a guest as tar archives, streamed: over SSH as root where the
//! machine has it (`tar` reading stdin, writing stdout), else through the guest agent's file
//! calls in chunks of a temporary archive in the guest's `/tmp`. Provisioning's uploads and
//! `envrig cp` both come here.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use envrig_provider_api::{ProviderError, Result};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::LibvirtProvider;
use crate::error::ssh_err;
use crate::exec::{sh_quote, ssh_preferred};

/// A guest agent file call moves this much at once (base64 in a JSON line).
const AGENT_CHUNK: usize = 48 * 1024;
/// `copy_out`'s exit code when the guest path does not exist.
const NO_SUCH_PATH: i64 = 44;

/// Where an archive to unpack in a guest comes from.
pub(crate) enum TarSource<'a> {
    Bytes(Vec<u8>),
    File(&'a Path),
}

impl TarSource<'_> {
    async fn reader(self) -> Result<Box<dyn AsyncRead + Unpin + Send>> {
        Ok(match self {
            TarSource::Bytes(b) => Box::new(std::io::Cursor::new(b)),
            TarSource::File(p) => {
                Box::new(
                    tokio::fs::File::open(p)
                        .await
                        .map_err(|e| ProviderError::Conflict {
                            message: format!("cannot read {}: {e}", p.display()),
                        })?,
                )
            }
        })
    }
}

/// A guest path's folder and last component (`/etc/hosts`: `/etc`, `hosts`).
fn split_guest(path: &str) -> (String, String) {
    let trimmed = path.trim_end_matches('/');
    match trimmed.rsplit_once('/') {
        Some(("", name)) => ("/".into(), name.into()),
        Some((dir, name)) => (dir.into(), name.into()),
        None => (".".into(), trimmed.into()),
    }
}

impl LibvirtProvider {
    /// Unpacks `tar` into the guest folder `dest`. Over SSH when `ssh_first` (or when the
    /// agent does not answer) and the machine has SSH; else through the agent.
    pub(crate) async fn unpack_in_guest(
        &self,
        id: &str,
        dest: &str,
        tar: TarSource<'_>,
        ssh_first: bool,
    ) -> Result<()> {
        self.finish_boot(id).await?;
        let info = self.info(id).await?;
        let use_ssh = self.ssh_parts(&info).is_some()
            && (ssh_first || ssh_preferred() || !self.agent_answers(id).await);
        let line = format!("tar -xf - -C {}", sh_quote(dest));
        // SSH streams; where it does not answer, the agent is the way in (when it answers).
        let session = match use_ssh {
            true => match self
                .ssh_session(&info, "root", Duration::from_secs(30))
                .await
            {
                Ok(s) => Some(s),
                Err(e) if !ssh_first || !self.agent_answers(id).await => {
                    return Err(ssh_err("reach the machine over SSH", e));
                }
                Err(_) => None,
            },
            false => None,
        };
        let (code, err) = if let Some(session) = session {
            let mut err = Vec::new();
            let code = session
                .exec(&line, Some(tar.reader().await?), &mut |_, b| {
                    err.extend_from_slice(b)
                })
                .await
                .map_err(|e| ssh_err("copy over SSH", e));
            session.close().await;
            (code?, String::from_utf8_lossy(&err).into_owned())
        } else {
            let guest = self.agent_temp();
            let g = sh_quote(&guest);
            let written = match tar.reader().await {
                Ok(r) => self.agent_write(id, &guest, r).await,
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                let _ = self.run_sh(id, &format!("rm -f {g}")).await;
                return Err(e);
            }
            self.run_sh(id, &format!("{line} < {g}; s=$?; rm -f {g}; exit $s"))
                .await?
        };
        match code {
            0 => Ok(()),
            code => Err(ProviderError::Conflict {
                message: format!("unpacking into {dest} failed ({code}): {}", err.trim()),
            }),
        }
    }

    /// Writes guest path `src` as a tar archive to the host file `tar` (one top entry,
    /// `src`'s last component). Over SSH where the machine has it, else through the agent.
    pub(crate) async fn pack_in_guest(&self, id: &str, src: &str, tar: &Path) -> Result<()> {
        self.finish_boot(id).await?;
        let info = self.info(id).await?;
        let (dir, name) = split_guest(src);
        let line = format!(
            "[ -e {p} ] || [ -L {p} ] || exit {NO_SUCH_PATH}; tar -cf - -C {d} {n}",
            p = sh_quote(src),
            d = sh_quote(&dir),
            n = sh_quote(&name)
        );
        let io = |e: std::io::Error| ProviderError::Conflict {
            message: format!("cannot write {}: {e}", tar.display()),
        };
        let mut file = std::fs::File::create(tar).map_err(io)?;
        // SSH streams; the agent is the way in where the machine has no SSH or it fails.
        let session = match self.ssh_parts(&info) {
            Some(_) => self
                .ssh_session(&info, "root", Duration::from_secs(30))
                .await
                .ok(),
            None => None,
        };
        let (code, err) = if let Some(session) = session {
            let (mut err, mut failed) = (Vec::new(), None);
            let code = session
                .exec(&line, None, &mut |is_err, b| {
                    if is_err {
                        err.extend_from_slice(b)
                    } else if failed.is_none()
                        && let Err(e) = file.write_all(b)
                    {
                        failed = Some(e)
                    }
                })
                .await
                .map_err(|e| ssh_err("copy over SSH", e));
            session.close().await;
            if let Some(e) = failed {
                return Err(io(e));
            }
            (code?, String::from_utf8_lossy(&err).into_owned())
        } else {
            let guest = self.agent_temp();
            let g = sh_quote(&guest);
            let packed = self.run_sh(id, &format!("({line}) > {g}")).await;
            let Ok((code, err)) = packed else {
                let _ = self.run_sh(id, &format!("rm -f {g}")).await;
                return packed.map(|_| ());
            };
            if code == 0 {
                let read = self.agent_read(id, &guest, &mut file).await;
                let _ = self.run_sh(id, &format!("rm -f {g}")).await;
                read?;
            } else {
                let _ = self.run_sh(id, &format!("rm -f {g}")).await;
            }
            (code, err)
        };
        file.flush().map_err(io)?;
        match code {
            0 => Ok(()),
            NO_SUCH_PATH => Err(ProviderError::NotFound {
                what: format!("{src} in the machine"),
            }),
            code => Err(ProviderError::Conflict {
                message: format!("packing {src} failed ({code}): {}", err.trim()),
            }),
        }
    }

    /// A fresh temporary file name in the guest, for the agent's file calls.
    fn agent_temp(&self) -> String {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("/tmp/.envrig-copy-{}-{n}.tar", std::process::id())
    }

    /// Writes what `from` reads to the guest file `guest` through the agent, a chunk at a time.
    async fn agent_write(
        &self,
        id: &str,
        guest: &str,
        mut from: Box<dyn AsyncRead + Unpin + Send>,
    ) -> Result<()> {
        let handle = self.agent_open(id, guest, "w").await?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut buf = vec![0u8; AGENT_CHUNK];
        let written: Result<()> = async {
            loop {
                let n = read_full(&mut from, &mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                self.agent(
                    id,
                    serde_json::json!({"execute": "guest-file-write", "arguments": {"handle": handle, "buf-b64": b64.encode(&buf[..n])}}),
                    30,
                )
                .await?;
            }
        }
        .await;
        self.agent_close(id, handle).await;
        written
    }

    /// Appends the guest file `guest` to `to` through the agent, a chunk at a time.
    async fn agent_read(&self, id: &str, guest: &str, to: &mut std::fs::File) -> Result<()> {
        let handle = self.agent_open(id, guest, "r").await?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let read: Result<()> = async {
            // Bounded: a chunk at a time up to 64 GiB.
            for _ in 0..(64u64 << 30) / AGENT_CHUNK as u64 {
                let got = self
                    .agent(
                        id,
                        serde_json::json!({"execute": "guest-file-read", "arguments": {"handle": handle, "count": AGENT_CHUNK}}),
                        30,
                    )
                    .await?;
                let data = b64
                    .decode(got["buf-b64"].as_str().unwrap_or(""))
                    .map_err(|e| ProviderError::Conflict {
                        message: format!("the guest agent sent a chunk that is not base64: {e}"),
                    })?;
                to.write_all(&data).map_err(|e| ProviderError::Conflict {
                    message: format!("cannot write the copy: {e}"),
                })?;
                if got["eof"].as_bool() == Some(true) || data.is_empty() {
                    return Ok(());
                }
            }
            Err(ProviderError::Conflict {
                message: "the guest's archive is larger than 64 GiB".into(),
            })
        }
        .await;
        self.agent_close(id, handle).await;
        read
    }

    async fn agent_open(&self, id: &str, guest: &str, mode: &str) -> Result<i64> {
        let opened = self
            .agent(id, serde_json::json!({"execute": "guest-file-open", "arguments": {"path": guest, "mode": mode}}), 10)
            .await?;
        opened.as_i64().ok_or_else(|| ProviderError::Conflict {
            message: format!("the guest agent did not open {guest}"),
        })
    }

    async fn agent_close(&self, id: &str, handle: i64) {
        let _ = self
            .agent(
                id,
                serde_json::json!({"execute": "guest-file-close", "arguments": {"handle": handle}}),
                10,
            )
            .await;
    }
}

/// Reads until `buf` is full or the input ends; the count read.
async fn read_full(from: &mut (dyn AsyncRead + Unpin + Send), buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match from.read(&mut buf[n..]).await {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => {
                return Err(ProviderError::Conflict {
                    message: format!("cannot read what is copied: {e}"),
                });
            }
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_paths_split_into_folder_and_name() {
        assert_eq!(split_guest("/etc/hosts"), ("/etc".into(), "hosts".into()));
        assert_eq!(split_guest("/data/"), ("/".into(), "data".into()));
        assert_eq!(split_guest("/a/b/c"), ("/a/b".into(), "c".into()));
        assert_eq!(split_guest("rel"), (".".into(), "rel".into()));
    }
}
