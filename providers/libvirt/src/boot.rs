//! Booting a guest until it is ready: the guest agent or SSH answers, the environment's key is
//! installed (through the agent, or over SSH with Vagrant's insecure key), SSH takes it; a
//! boot that fails says so with the end of the console. The files that mark work in progress
//! in a machine's folder (`booting`, and the work markers `gc` sweeps) are here too.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use envrig_provider_api::{ExecRequest, MachineState, OutputStream, ProviderError, Result};

use crate::error::{checked_user, io, ssh_err};
use crate::exec::sh_quote;
use crate::{LibvirtProvider, ssh};

/// A file in a machine's folder from the moment envrig starts (or reverts) the domain until
/// the guest is ready: when envrig was killed in between, the next command that reaches
/// into the guest waits for it first ([`LibvirtProvider::finish_boot`]).
pub(crate) const BOOTING: &str = "booting";

impl LibvirtProvider {
    /// The boot timeout: `ENVRIG_BOOT_TIMEOUT` seconds, else 180.
    fn boot_timeout() -> Duration {
        std::env::var("ENVRIG_BOOT_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(180))
    }

    /// Waits (bounded by `limit`) until the guest agent answers.
    pub(crate) async fn wait_agent_only(&self, id: &str, limit: Duration) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if self.agent_answers(id).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// When an envrig that started (or reverted) the machine was killed before its guest
    /// was ready, waits for it as that envrig would have: the agent or SSH answers, the key
    /// is in, the private address is up.
    pub(crate) async fn finish_boot(&self, id: &str) -> Result<()> {
        let info = self.info(id).await?;
        if self
            .note_exists(&info.resource_name, crate::warm::WARMING)
            .await
        {
            // Killed while it was restored from saved memory: it never became a machine of
            // its own, so it boots cold from its layer (or its own disk) instead.
            tracing::warn!(
                "{}: its warm start was cut short; booting it cold",
                info.resource_name
            );
            self.reset_to_cold(id).await?;
            return Box::pin(self.start_machine(id)).await;
        }
        if !self.note_exists(&info.resource_name, BOOTING).await {
            return Ok(());
        }
        if info.state == MachineState::Running {
            self.wait_ready_with(id, false).await?;
            self.wait_private_address(id).await;
        }
        self.note_drop(&info.resource_name, BOOTING).await;
        Ok(())
    }

    /// The last lines of a machine's console log (here, or a volume on a remote host),
    /// indented, for an error message.
    async fn console_tail(&self, resource: &str) -> String {
        let log = self
            .note_read(resource, "console.log", 64 * 1024)
            .await
            .unwrap_or_default();
        console_tail(&String::from_utf8_lossy(&log))
    }

    /// Waits until the machine is ready: its guest agent or its SSH answers, the
    /// environment's key is installed (through the agent, or through SSH with Vagrant's
    /// published insecure key, which it then replaces), and SSH takes that key, its host
    /// key recorded at this first contact. All within the boot timeout; on timeout the
    /// error ends with the last lines of the console.
    /// Without `install`, the key is taken as already in the guest (a revert to a snapshot
    /// taken after it was installed).
    pub(crate) async fn wait_ready_with(&self, id: &str, install: bool) -> Result<()> {
        let info = self.info(id).await?;
        let res = info.resource_name.as_str();
        let limit = Self::boot_timeout();
        let t0 = Instant::now();
        let Some((port, keys)) = self.ssh_parts(&info) else {
            // No SSH (a machine on a remote host, or made before SSH existed): the agent is
            // the way in.
            if !self.wait_agent_only(id, limit).await {
                return Err(boot_failed(
                    limit,
                    "the guest agent",
                    &self.console_tail(res).await,
                ));
            }
            // On a remote host the agent installs the environment's key too (for SSH from
            // that host) and tells the user `exec` logs in as.
            if self.remote.is_some()
                && install
                && let Some(env) = info.labels.get(envrig_provider_api::labels::ENV)
            {
                let keys = ssh::EnvKeys::new(&self.keys, env);
                let user = checked_user(&self.install_key_by_agent(id, &keys).await?)?;
                let _ = std::fs::write(keys.dir.join(format!("{res}.user")), &user);
            }
            return Ok(());
        };
        let user_file = keys.dir.join(format!("{}.user", info.resource_name));
        // Whichever answers first: the agent, or SSH (with our key: a restart; with the
        // insecure key: a fresh vagrant box without an agent).
        let by_ssh = async {
            let key = keys.ensure().ok()?;
            let insecure = crate::vagrant::keys();
            // Longer each time the guest is too slow to answer (see below).
            let mut step = Duration::from_secs(3);
            while t0.elapsed() < limit {
                let mut slow = false;
                match ssh::connect(port, "root", &key, keys.pinned(port), step).await {
                    Ok(_) => return Some(None),
                    Err(ssh::SshError::Timeout { .. }) => slow = true,
                    Err(_) => {}
                }
                for k in &insecure {
                    match ssh::connect(port, "vagrant", k, None, step).await {
                        Ok(s) => return Some(Some(s)),
                        Err(ssh::SshError::Timeout { .. }) => slow = true,
                        Err(_) => {}
                    }
                }
                if slow {
                    step = (step * 2).min(Duration::from_secs(30));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            None
        };
        // A guest that powers off or crashes while booting fails at once.
        let died = async {
            while t0.elapsed() < limit {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if let Ok(i) = self.info(id).await
                    && matches!(i.state, MachineState::Stopped | MachineState::Dead)
                {
                    return;
                }
            }
            std::future::pending::<()>().await
        };
        let installed_by_ssh = tokio::select! {
            biased;
            () = died => {
                return Err(ProviderError::Conflict {
                    message: format!(
                        "the machine stopped while it booted; the end of its console:\n{}",
                        self.console_tail(res).await
                    ),
                });
            }
            ok = self.wait_agent_only(id, limit) => {
                if !ok {
                    return Err(boot_failed(limit, "the guest agent or SSH", &self.console_tail(res).await));
                }
                tracing::debug!(ms = t0.elapsed().as_millis() as u64, "guest agent answered");
                if !install && user_file.exists() {
                    // A revert: the machine is where it was when SSH worked.
                    return Ok(());
                }
                let user = checked_user(&self.install_key_by_agent(id, &keys).await?)?;
                tracing::debug!(ms = t0.elapsed().as_millis() as u64, "key installed by the agent");
                let _ = std::fs::write(&user_file, &user);
                false
            }
            found = by_ssh => match found {
                None => return Err(boot_failed(limit, "the guest agent or SSH", &self.console_tail(res).await)),
                Some(None) => false,
                Some(Some(insecure)) => {
                    let key = keys.ensure().map_err(|e| io("read the environment's key", e))?;
                    let line = ssh::public_line(key.public_key()).map_err(|e| io("encode the key", e))?;
                    let mut out = Vec::new();
                    let code = insecure
                        .exec(
                            &format!("sudo -n sh -c {}", sh_quote(&install_script(&line))),
                            None,
                            &mut |_, b| out.extend_from_slice(b),
                        )
                        .await
                        .map_err(|e| ssh_err("install the key over SSH", e))?;
                    // Its host key, seen with the insecure key, is the one to pin.
                    keys.pin(port, &insecure.host_key).map_err(|e| io("record the host key", e))?;
                    insecure.close().await;
                    if code != 0 {
                        return Err(ProviderError::Conflict {
                            message: format!(
                                "installing the environment's SSH key failed ({code}): {}",
                                String::from_utf8_lossy(&out).trim()
                            ),
                        });
                    }
                    let user = checked_user(String::from_utf8_lossy(&out).trim().lines().last().unwrap_or("root"))?;
                    let _ = std::fs::write(&user_file, &user);
                    true
                }
            }
        };
        let _ = installed_by_ssh;
        // SSH must take the environment's key now. A guest too slow to answer within the
        // attempt's time is given longer each time: every abandoned attempt leaves a server
        // process working inside it, and a pile of them can exhaust a small guest's memory.
        let mut last = None;
        let mut step = Duration::from_secs(3);
        while t0.elapsed() < limit {
            match self.ssh_session(&info, "root", step).await {
                Ok(s) => {
                    tracing::debug!(ms = t0.elapsed().as_millis() as u64, "SSH took the key");
                    s.close().await;
                    return Ok(());
                }
                Err(e @ ssh::SshError::HostKeyChanged { .. }) => {
                    return Err(ssh_err("reach the machine over SSH", e));
                }
                Err(e @ ssh::SshError::Timeout { .. }) => {
                    step = (step * 2).min(Duration::from_secs(30));
                    last = Some(e);
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(ProviderError::Conflict {
            message: format!(
                "{}; the end of its console:\n{}",
                last.map(|e| e.to_string())
                    .unwrap_or_else(|| "SSH did not answer".into()),
                self.console_tail(res).await
            ),
        })
    }

    /// Writes the environment's public key as the only authorized key of root and of
    /// `vagrant` (when the guest has that user), through the guest agent; returns the user
    /// `envrig ssh` logs in as (`vagrant` when it exists, else root).
    async fn install_key_by_agent(&self, id: &str, keys: &ssh::EnvKeys) -> Result<String> {
        let key = keys
            .ensure()
            .map_err(|e| io("read the environment's key", e))?;
        let line = ssh::public_line(key.public_key()).map_err(|e| io("encode the key", e))?;
        let req = ExecRequest {
            argv: vec!["/bin/sh".into(), "-c".into(), install_script(&line)],
            ..ExecRequest::default()
        };
        let mut out = Vec::new();
        let code = self
            .exec_agent(id, &req, &mut |_: OutputStream, b: &[u8]| {
                out.extend_from_slice(b)
            })
            .await?;
        if code != 0 {
            return Err(ProviderError::Conflict {
                message: format!(
                    "installing the environment's SSH key failed ({code}): {}",
                    String::from_utf8_lossy(&out).trim()
                ),
            });
        }
        Ok(String::from_utf8_lossy(&out)
            .trim()
            .lines()
            .last()
            .unwrap_or("root")
            .to_string())
    }
}

/// The last lines of a console log, indented, for an error message.
fn console_tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(15)..]
        .iter()
        .map(|l| format!("    | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn boot_failed(limit: Duration, what: &str, console_tail: &str) -> ProviderError {
    ProviderError::Conflict {
        message: format!(
            "{what} did not answer within {}s; the end of its console:\n{console_tail}",
            limit.as_secs(),
        ),
    }
}

/// A shell script that makes `key` the only authorized key of root and of `vagrant`
/// (when that user exists), and prints the user to log in as.
pub(crate) fn install_script(key: &str) -> String {
    format!(
        r#"k={k}
for h in /root $(awk -F: '$1=="vagrant"{{print $6}}' /etc/passwd); do
  u=$(stat -c %U "$h" 2>/dev/null || echo root)
  mkdir -p "$h/.ssh" && chmod 700 "$h/.ssh" && printf '%s\n' "$k" > "$h/.ssh/authorized_keys" && chmod 600 "$h/.ssh/authorized_keys" && chown -R "$u" "$h/.ssh" || exit 1
done
if grep -q '^vagrant:' /etc/passwd; then echo vagrant; else echo root; fi"#,
        k = sh_quote(key)
    )
}

/// A work file ([`envrig_provider_api::work`]) in a machine's folder while no domain claims
/// the folder (before it is defined, after it is undefined): `sweep_work` removes a folder
/// whose marker's process is gone and whose domain does not exist.
pub(crate) struct Marker(PathBuf);

impl Marker {
    pub(crate) fn new(mdir: &Path, kind: &str) -> Marker {
        let path = mdir.join(envrig_provider_api::work::name(kind));
        let _ = std::fs::write(&path, b"");
        Marker(path)
    }
}

impl Drop for Marker {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
