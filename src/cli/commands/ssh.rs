//! `envrig exec`, `envrig ssh` and `envrig ssh-config`: a command in a machine through the
//! provider's exec; a shell or a command in a machine, through the system's OpenSSH client
//! when the provider has SSH, else through the provider's exec.

use std::io::IsTerminal;

use super::{exit_status, fail, settle};
use crate::cli::output::Printer;
use crate::ops::{self, Context, Project};

pub(super) async fn cmd_exec(
    ctx: &Context,
    printer: &Printer,
    project: &Project,
    machine: &str,
    command: Vec<String>,
    user: Option<String>,
) -> i32 {
    match ops::exec(ctx, project, machine, command, user).await {
        Ok(code) => exit_status(code),
        Err(e) => fail(printer, e),
    }
}

pub(super) async fn cmd_ssh(
    ctx: &Context,
    printer: &Printer,
    project: &Project,
    machine: &str,
    command: Vec<String>,
) -> i32 {
    let tty = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    // A provider with SSH: the system's ssh client, with the environment's key and the
    // machine's pinned host key (the same settings `ssh-config` prints).
    match ops::running_machine(ctx, project, machine).await {
        Ok((p, o)) if p.capabilities().ssh && (tty || !command.is_empty()) => {
            return match p.ssh_endpoint(&o.id).await {
                Ok(ep) => run_system_ssh(printer, &ep, &command, tty),
                Err(e) => fail(
                    printer,
                    ops::OpError::provider(format!("cannot reach `{machine}` over SSH"), e),
                ),
            };
        }
        Ok(_) => {}
        Err(e) => return fail(printer, e),
    }
    if !tty {
        if command.is_empty() {
            printer.error(
                "`envrig ssh` without a command needs a terminal",
                Some("give a command: `envrig ssh MACHINE -- CMD...`, or use `envrig exec`"),
            );
            return 2;
        }
        return match ops::exec(ctx, project, machine, command, None).await {
            Ok(code) => exit_status(code),
            Err(e) => fail(printer, e),
        };
    }
    let argv = if command.is_empty() {
        // The best shell the machine has, as a login shell.
        vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi"
                .to_string(),
        ]
    } else {
        command
    };
    let size = crossterm::terminal::size().ok();
    if let Err(e) = crossterm::terminal::enable_raw_mode() {
        printer.error(&format!("cannot put the terminal in raw mode: {e}"), None);
        return 1;
    }
    let terminal = envrig_provider_api::Terminal {
        input: Box::new(tokio::io::stdin()),
        output: Box::new(tokio::io::stdout()),
        size,
    };
    let r = ops::interactive(ctx, project, machine, argv, terminal).await;
    let _ = crossterm::terminal::disable_raw_mode();
    match r {
        Ok(code) => exit_status(code),
        Err(e) => fail(printer, e),
    }
}

/// The `ssh` command line that reaches `ep`, running `command` (quoted for the remote shell)
/// or a login shell. The user name came from the guest: it must be a user name, and goes
/// with `-l`; `--` ends the options before the host, so nothing after it is read as one.
fn system_ssh_command(
    ep: &envrig_provider_api::SshEndpoint,
    command: &[String],
    tty: bool,
) -> Result<std::process::Command, String> {
    if !envrig_provider_api::valid_user_name(&ep.user) {
        return Err(format!(
            "the machine's login user {:?} is not a user name",
            ep.user
        ));
    }
    if ep.host.starts_with('-') || ep.host.chars().any(char::is_whitespace) {
        return Err(format!("the machine's address {:?} is not a host", ep.host));
    }
    let mut cmd = std::process::Command::new("ssh");
    cmd.args(["-i", &ep.identity_file])
        .args(["-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR"])
        .args(["-p", &ep.port.to_string()]);
    match &ep.known_hosts_file {
        Some(k) => {
            cmd.args(["-o", &format!("UserKnownHostsFile={k}")])
                .args(["-o", "StrictHostKeyChecking=yes"]);
        }
        None => {
            cmd.args(["-o", "StrictHostKeyChecking=no"]);
        }
    }
    cmd.arg(if tty { "-t" } else { "-T" });
    cmd.args(["-l", &ep.user, "--", &ep.host]);
    cmd.args(
        command
            .iter()
            .map(|a| format!("'{}'", a.replace('\'', "'\\''"))),
    );
    Ok(cmd)
}

/// Runs OpenSSH's `ssh` to `ep` (see [`system_ssh_command`]); returns its exit status
/// (ssh's own 255 when it cannot connect).
fn run_system_ssh(
    printer: &Printer,
    ep: &envrig_provider_api::SshEndpoint,
    command: &[String],
    tty: bool,
) -> i32 {
    let mut cmd = match system_ssh_command(ep, command, tty) {
        Ok(c) => c,
        Err(e) => {
            printer.error(
                &format!("refusing to run ssh: {e}"),
                Some("the guest reported it; recreate the machine (`envrig destroy` and `envrig up`)"),
            );
            return 1;
        }
    };
    match cmd.status() {
        Ok(st) => st.code().unwrap_or(255),
        Err(e) => {
            printer.error(
                &format!("cannot run ssh: {e}"),
                Some("install OpenSSH's client (`apt-get install openssh-client`)"),
            );
            127
        }
    }
}

pub(super) async fn cmd_ssh_config(
    ctx: &Context,
    printer: &Printer,
    project: &Project,
    machine: Option<String>,
) -> i32 {
    let names: Vec<String> = match machine {
        Some(m) => vec![m],
        None => project
            .envfile
            .machines
            .iter()
            .map(|m| m.name.to_string())
            .collect(),
    };
    for name in names {
        let (p, o) = match ops::running_machine(ctx, project, &name).await {
            Ok(x) => x,
            Err(e) => return fail(printer, e),
        };
        match p.ssh_endpoint(&o.id).await {
            Ok(ep) if !envrig_provider_api::valid_user_name(&ep.user) => {
                printer.error(
                    &format!(
                        "ssh-config for `{name}`: the machine's login user {:?} is not a user name",
                        ep.user
                    ),
                    Some("the guest reported it; recreate the machine (`envrig destroy` and `envrig up`)"),
                );
                return 1;
            }
            Ok(ep) => {
                println!("Host {name}");
                println!("  HostName {}", ep.host);
                println!("  Port {}", ep.port);
                println!("  User {}", ep.user);
                println!("  IdentityFile {}", ep.identity_file);
                println!("  IdentitiesOnly yes");
                if let Some(k) = ep.known_hosts_file {
                    println!("  UserKnownHostsFile {k}");
                    println!("  StrictHostKeyChecking yes");
                }
                println!();
            }
            Err(e) => {
                printer.error(
                    &format!("ssh-config for `{name}`: {e}"),
                    Some(&format!("`envrig ssh {name}` opens a shell; `envrig exec {name} -- CMD` runs a command")),
                );
                return 1;
            }
        }
    }
    0
}

/// `port MACHINE [GUEST_PORT]`: `80/tcp -> 127.0.0.1:18081` per port (as `docker port`), or
/// only the host side of GUEST_PORT (as `docker compose port`).
pub(super) async fn port(
    ctx: &Context,
    printer: &Printer,
    project: &Project,
    machine: &str,
    guest: Option<(u16, envrig_provider_api::Protocol)>,
) -> i32 {
    match settle(ctx, ops::port(ctx, project, machine, guest)).await {
        Ok(ports) => {
            let rows: Vec<serde_json::Value> = ports
                .iter()
                .map(|p| {
                    serde_json::json!({
                        "guest_port": p.guest_port,
                        "protocol": p.protocol.as_str(),
                        "host_ip": p.host_ip,
                        "host_port": p.host_port,
                    })
                })
                .collect();
            let doc =
                serde_json::json!({"schema": "envrig.port/1", "machine": machine, "ports": rows});
            if !printer.as_json(doc) {
                for p in &ports {
                    match guest {
                        Some(_) => println!("{}:{}", p.host_ip, p.host_port),
                        None => println!(
                            "{}/{} -> {}:{}",
                            p.guest_port,
                            p.protocol.as_str(),
                            p.host_ip,
                            p.host_port
                        ),
                    }
                }
            }
            0
        }
        Err(e) => fail(printer, e),
    }
}

#[cfg(test)]
mod tests {
    use super::system_ssh_command;
    use envrig_provider_api::SshEndpoint;

    fn ep(user: &str) -> SshEndpoint {
        SshEndpoint {
            host: "127.0.0.1".into(),
            port: 2222,
            user: user.into(),
            identity_file: "id".into(),
            known_hosts_file: None,
        }
    }

    fn args(c: &std::process::Command) -> Vec<String> {
        c.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn the_user_goes_with_l_and_the_host_after_the_end_of_options() {
        let c = system_ssh_command(&ep("vagrant"), &["echo".into(), "it's".into()], false).unwrap();
        let a = args(&c);
        let l = a.iter().position(|x| x == "-l").unwrap();
        assert_eq!(
            &a[l..],
            ["-l", "vagrant", "--", "127.0.0.1", "'echo'", "'it'\\''s'"]
        );
    }

    #[test]
    fn a_user_that_is_an_option_never_reaches_ssh() {
        for user in ["-oProxyCommand=touch /tmp/x", "a\nProxyCommand x", ""] {
            let e = system_ssh_command(&ep(user), &[], true).unwrap_err();
            assert!(e.contains("is not a user name"), "{e}");
        }
    }
}
