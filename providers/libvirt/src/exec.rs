//! Reaching into a guest: commands through the QEMU guest agent (no network
//! needed), else over SSH as root with the environment's key; the argv a request becomes (a
//! person's command logs in as the user); the SSH endpoint `envrig ssh` uses.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use envrig_provider_api::{
    ExecRequest, MachineInfo, OutputSink, OutputStream, ProviderError, Result, SshEndpoint,
    Terminal,
};

use crate::error::{checked_user, engine, ssh_err, unsupported};
use crate::{LibvirtProvider, MACHINE_ENV, NAME, SSH_PORT, ssh};

impl LibvirtProvider {
    /// Through the guest agent when the guest has one (no network needed), else over SSH
    /// as root with the environment's key (output streamed).
    pub(crate) async fn exec_command(
        &self,
        id: &str,
        req: &ExecRequest,
        output: OutputSink<'_>,
    ) -> Result<i64> {
        self.finish_boot(id).await?;
        if !ssh_preferred() && self.agent_answers(id).await {
            return self.exec_agent(id, req, output).await;
        }
        let info = self.info(id).await?;
        if self.ssh_parts(&info).is_none() {
            return self.exec_agent(id, req, output).await;
        }
        let machine_env: BTreeMap<String, String> = info
            .labels
            .get(MACHINE_ENV)
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or_default();
        let mut all = machine_env;
        all.extend(req.env.clone());
        let quoted = |argv: Vec<String>| {
            argv.iter()
                .map(|a| sh_quote(a))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let line = if req.login {
            all.retain(|k, _| shell_name(k));
            let user = match &req.user {
                Some(u) => u.clone(),
                None => self.login_user(&info)?,
            };
            format!("exec {}", quoted(login_argv(req, &user, &all)))
        } else {
            format!(
                "exec env {} {}",
                all.iter()
                    .map(|(k, v)| sh_quote(&format!("{k}={v}")))
                    .collect::<Vec<_>>()
                    .join(" "),
                quoted(agent_argv(req))
            )
        };
        let session = self
            .ssh_session(&info, "root", Duration::from_secs(30))
            .await
            .map_err(|e| ssh_err("reach the machine over SSH", e))?;
        let code = session
            .exec(&line, None, &mut |err, b| {
                output(
                    if err {
                        OutputStream::Stderr
                    } else {
                        OutputStream::Stdout
                    },
                    b,
                )
            })
            .await
            .map_err(|e| ssh_err("run the command over SSH", e));
        session.close().await;
        code
    }

    /// Sends one guest-agent command; returns its `return` value.
    pub(crate) async fn agent(
        &self,
        id: &str,
        cmd: serde_json::Value,
        timeout_s: i32,
    ) -> Result<serde_json::Value> {
        let id = id.to_string();
        self.blocking(move |c| {
            let dom = c
                .lookup_domain_by_uuid_string(&id)
                .map_err(|e| engine("look up the domain", e))?;
            let out = dom
                .qemu_agent_command(&cmd.to_string(), timeout_s, 0)
                .map_err(|e| engine(format!("guest agent {}", cmd["execute"]), e))?;
            let v: serde_json::Value =
                serde_json::from_str(&out).map_err(|e| ProviderError::Engine {
                    provider: NAME,
                    op: "read the guest agent's answer".into(),
                    source: Box::new(e),
                })?;
            Ok(v["return"].clone())
        })
        .await
    }

    pub(crate) async fn agent_answers(&self, id: &str) -> bool {
        self.agent(id, serde_json::json!({"execute": "guest-ping"}), 2)
            .await
            .is_ok()
    }

    /// Runs a command through the guest agent (its output arrives when it ends).
    pub(crate) async fn exec_agent(
        &self,
        id: &str,
        req: &ExecRequest,
        output: OutputSink<'_>,
    ) -> Result<i64> {
        let info = self.info(id).await?;
        let machine_env: BTreeMap<String, String> = info
            .labels
            .get(MACHINE_ENV)
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or_default();
        let mut all = BTreeMap::from([(
            "PATH".to_string(),
            "/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        )]);
        let (argv, env) = if req.login {
            let mut vars = machine_env;
            vars.extend(req.env.clone());
            vars.retain(|k, _| shell_name(k));
            let user = match &req.user {
                Some(u) => u.clone(),
                None => self.login_user(&info)?,
            };
            (login_argv(req, &user, &vars), all)
        } else {
            all.extend(machine_env);
            all.extend(req.env.clone());
            (agent_argv(req), all)
        };
        let (path, args) = argv.split_first().ok_or_else(|| ProviderError::Conflict {
            message: "an empty command".into(),
        })?;
        let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let started = self
            .agent(
                id,
                serde_json::json!({"execute": "guest-exec", "arguments": {"path": path, "arg": args, "env": env, "capture-output": true}}),
                10,
            )
            .await?;
        let pid = started["pid"]
            .as_i64()
            .ok_or_else(|| ProviderError::Conflict {
                message: format!("the guest agent did not start `{path}`"),
            })?;
        // Bounded by a day: a command runs as long as it needs, polled soon at first (most
        // end within milliseconds), then gently.
        let mut delay = Duration::from_millis(2);
        for _ in 0..(24 * 3600 * 5) {
            let st = self
                .agent(
                    id,
                    serde_json::json!({"execute": "guest-exec-status", "arguments": {"pid": pid}}),
                    10,
                )
                .await?;
            if st["exited"].as_bool() == Some(true) {
                let b64 = base64::engine::general_purpose::STANDARD;
                for (key, stream) in [
                    ("out-data", OutputStream::Stdout),
                    ("err-data", OutputStream::Stderr),
                ] {
                    if let Some(data) = st[key].as_str()
                        && let Ok(bytes) = b64.decode(data)
                    {
                        output(stream, &bytes);
                    }
                }
                return Ok(st["exitcode"].as_i64().unwrap_or_else(|| {
                    if st["signal"].is_i64() {
                        128 + st["signal"].as_i64().unwrap_or(0)
                    } else {
                        -1
                    }
                }));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(200));
        }
        Err(ProviderError::Conflict {
            message: "the command did not finish within a day".into(),
        })
    }

    /// Runs a shell line as root; returns its exit code and stderr.
    pub(crate) async fn run_sh(&self, id: &str, script: &str) -> Result<(i64, String)> {
        let req = ExecRequest {
            argv: vec!["/bin/sh".into(), "-c".into(), script.to_string()],
            ..ExecRequest::default()
        };
        let mut err = Vec::new();
        let code = self
            .exec_command(id, &req, &mut |s: OutputStream, b: &[u8]| {
                if s == OutputStream::Stderr {
                    err.extend_from_slice(b)
                }
            })
            .await?;
        Ok((code, String::from_utf8_lossy(&err).into_owned()))
    }

    /// The environment's keys and the machine's SSH port, from its labels.
    pub(crate) fn ssh_parts(&self, info: &MachineInfo) -> Option<(u16, ssh::EnvKeys)> {
        let port = info.labels.get(SSH_PORT)?.parse().ok()?;
        let env = info.labels.get(envrig_provider_api::labels::ENV)?;
        Some((port, ssh::EnvKeys::new(&self.keys, env)))
    }

    /// The user `envrig ssh` logs in as (recorded when the key was installed: `vagrant` when
    /// the guest has that user), else root. What is recorded came from the guest: it is
    /// checked again here, as it is before it is written.
    fn login_user(&self, info: &MachineInfo) -> Result<String> {
        let recorded = info
            .labels
            .get(envrig_provider_api::labels::ENV)
            .map(|env| ssh::EnvKeys::new(&self.keys, env))
            .and_then(|keys| {
                std::fs::read_to_string(keys.dir.join(format!("{}.user", info.resource_name))).ok()
            })
            .map(|u| u.trim().to_string())
            .filter(|u| !u.is_empty());
        match recorded {
            None => Ok("root".into()),
            Some(u) => checked_user(&u),
        }
    }

    /// An SSH session to the machine as `user` with the environment's key, its host key
    /// checked against the one pinned (pinned now at first contact).
    pub(crate) async fn ssh_session(
        &self,
        info: &MachineInfo,
        user: &str,
        limit: Duration,
    ) -> std::result::Result<ssh::Session, ssh::SshError> {
        let (port, keys) = self
            .ssh_parts(info)
            .ok_or_else(|| ssh::SshError::Protocol {
                port: 0,
                message: "the machine has no SSH port".into(),
            })?;
        let key = keys.ensure()?;
        let session = ssh::connect(port, user, &key, keys.pinned(port), limit).await?;
        if keys.pinned(port).is_none() {
            keys.pin(port, &session.host_key)?;
        }
        Ok(session)
    }

    /// Not offered (`CAPABILITIES.interactive` is false): `envrig ssh` uses [`Self::endpoint`].
    pub(crate) fn exec_terminal(
        &self,
        _id: &str,
        _req: &ExecRequest,
        _terminal: Terminal,
    ) -> Result<i64> {
        Err(unsupported("an interactive shell (SSH access comes next)"))
    }

    pub(crate) async fn endpoint(&self, id: &str) -> Result<SshEndpoint> {
        if self.remote.is_some() {
            return Err(self.not_remotely(
                "SSH into a machine",
                "its SSH port would listen on that host's loopback, which this host cannot reach; `envrig exec` works (through the guest agent)",
            ));
        }
        let info = self.info(id).await?;
        let (port, keys) = self
            .ssh_parts(&info)
            .ok_or_else(|| unsupported("SSH into a machine made before envrig had SSH"))?;
        let user = self.login_user(&info)?;
        Ok(SshEndpoint {
            host: "127.0.0.1".into(),
            port,
            user,
            identity_file: keys.identity().display().to_string(),
            known_hosts_file: Some(keys.known_hosts().display().to_string()),
        })
    }

    /// `sync` inside the guest (through the agent, else SSH), bounded to 10 s; a guest that
    /// cannot answer is saved as it is (its memory, in the snapshot, still holds the files).
    pub(crate) async fn sync_guest(&self, id: &str) {
        let sync = ExecRequest {
            argv: vec!["sync".into()],
            ..ExecRequest::default()
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            self.exec_command(id, &sync, &mut |_: OutputStream, _: &[u8]| {}),
        )
        .await;
    }
}

/// `ENVRIG_LIBVIRT_EXEC=ssh`: commands and uploads go over SSH even when the guest has an
/// agent (their output then streams as it comes).
pub(crate) fn ssh_preferred() -> bool {
    std::env::var("ENVRIG_LIBVIRT_EXEC").as_deref() == Ok("ssh")
}

/// `s` quoted for `/bin/sh`.
pub(crate) fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The argv the guest agent runs for `req`: always through `sh` with umask 022 (the agent's
/// own is 0077, so files a step made would be private, unlike under Docker or SSH); a user
/// or folder wraps it in `su`/`cd`.
fn agent_argv(req: &ExecRequest) -> Vec<String> {
    let user = req.user.as_deref().filter(|u| *u != "root" && *u != "0");
    let mut line = req
        .argv
        .iter()
        .map(|a| sh_quote(a))
        .collect::<Vec<_>>()
        .join(" ");
    line = match &req.workdir {
        Some(d) => format!("umask 022; cd {} && exec {line}", sh_quote(d)),
        None => format!("umask 022; exec {line}"),
    };
    match user {
        Some(u) => vec![
            "su".into(),
            "-s".into(),
            "/bin/sh".into(),
            u.to_string(),
            "-c".into(),
            line,
        ],
        None => vec!["/bin/sh".into(), "-c".into(), line],
    }
}

/// The argv for a person's command ([`ExecRequest::login`]): root (the agent, or SSH as root)
/// runs `su -l USER -c LINE`, so the command gets USER's login environment (HOME, USER,
/// LOGNAME, SHELL, PATH, and LANG from the guest's locale settings, else `C.UTF-8`) and home
/// folder, whichever way it travels. `su -l` clears the environment: the machine's and the
/// request's variables are exported inside LINE.
fn login_argv(req: &ExecRequest, user: &str, env: &BTreeMap<String, String>) -> Vec<String> {
    let mut line = String::from("umask 022; : \"${LANG:=C.UTF-8}\"; export LANG; ");
    for (k, v) in env {
        line.push_str(&format!("export {k}={}; ", sh_quote(v)));
    }
    if let Some(d) = &req.workdir {
        line.push_str(&format!("cd {} && ", sh_quote(d)));
    }
    line.push_str("exec ");
    line.push_str(
        &req.argv
            .iter()
            .map(|a| sh_quote(a))
            .collect::<Vec<_>>()
            .join(" "),
    );
    vec![
        "su".into(),
        "-l".into(),
        user.to_string(),
        "-c".into(),
        line,
    ]
}

/// Whether `k` can be exported by a shell (`export K=...`).
fn shell_name(k: &str) -> bool {
    let mut c = k.chars();
    c.next()
        .is_some_and(|f| f == '_' || f.is_ascii_alphabetic())
        && c.all(|x| x == '_' || x.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_persons_command_logs_in_as_the_user_with_its_variables_inside() {
        let req = ExecRequest {
            argv: vec!["sh".into(), "-c".into(), "echo ~".into()],
            login: true,
            ..ExecRequest::default()
        };
        let env = BTreeMap::from([("ROLE".to_string(), "it's".to_string())]);
        assert_eq!(
            login_argv(&req, "vagrant", &env),
            [
                "su",
                "-l",
                "vagrant",
                "-c",
                "umask 022; : \"${LANG:=C.UTF-8}\"; export LANG; export ROLE='it'\\''s'; exec 'sh' '-c' 'echo ~'"
            ]
        );
        assert!(shell_name("ROLE_1") && shell_name("_x"));
        assert!(!shell_name("1A") && !shell_name("A-B") && !shell_name("") && !shell_name("A;rm"));
    }

    #[test]
    fn commands_for_other_users_and_folders_are_quoted() {
        let req = ExecRequest {
            argv: vec!["echo".into(), "it's".into()],
            user: Some("app".into()),
            workdir: Some("/srv/a b".into()),
            ..ExecRequest::default()
        };
        assert_eq!(
            agent_argv(&req),
            [
                "su",
                "-s",
                "/bin/sh",
                "app",
                "-c",
                "umask 022; cd '/srv/a b' && exec 'echo' 'it'\\''s'"
            ]
        );
        let plain = ExecRequest {
            argv: vec!["true".into()],
            ..ExecRequest::default()
        };
        assert_eq!(
            agent_argv(&plain),
            ["/bin/sh", "-c", "umask 022; exec 'true'"]
        );
    }
}
