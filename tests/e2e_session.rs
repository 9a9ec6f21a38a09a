//! End to end on libvirt's session daemon (`qemu:///session`) as an ordinary user: VMs run
//! as the user, with user-mode networking (passt) and envrig's files under the user's home;
//! no step needs root. The daemon is started by libvirt itself at the first connection.
//! What exists is asked of `virsh` as the same user.
//!
//! Ignored unless run by `scripts/test.sh`; then a missing test user or guest FAILS.

mod common;

use std::path::Path;

use common::user::User;
use common::{Run, e2e, free_port, guest, http_get, unique};

const SESSION: (&str, &str) = ("LIBVIRT_DEFAULT_URI", "qemu:///session");

fn virsh(user: &User, args: &[&str]) -> Run {
    common::capture(
        user.command_env(Path::new("/"), &[SESSION], "virsh")
            .args(args),
    )
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn an_ordinary_user_runs_a_provisioned_vm_on_the_session_daemon_and_back_to_nothing() {
    e2e();
    let user = User::for_test();
    let project = unique("sess");
    let port = free_port();
    let envfile = format!(
        r#"[project]
name = "{project}"
provider = "libvirt"

[boxes.tiny]
libvirt = "{}"

[machines.vm]
box = "tiny"
memory = "256MiB"
ports = ["127.0.0.1:{port}:8080"]
provision = [{{ shell = "mkdir -p /srv/www; echo as $(id -u) > /srv/www/index.html; busybox httpd -p 8080 -h /srv/www" }}]
"#,
        guest()
    );
    let dir = user.project(&project, &envfile);
    let envrig = |args: &[&str]| user.envrig_env(&dir, &[SESSION], args);
    struct Destroy<'a>(&'a dyn Fn(&[&str]) -> Run);
    impl Drop for Destroy<'_> {
        fn drop(&mut self) {
            let _ = (self.0)(&["destroy", "--force"]);
        }
    }
    let _cleanup = Destroy(&envrig);

    // A second machine needs the private network, which the session daemon cannot make:
    // said by `validate`, at the machine, before anything is made.
    let two = format!("{envfile}\n[machines.other]\nbox = \"tiny\"\n");
    let two_dir = user.project(&format!("{project}-two"), &two);
    let r = user.envrig_env(&two_dir, &[SESSION], &["validate"]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("cannot put machine") && r.stderr.contains("private network"),
        "{}",
        r.stderr
    );

    let up = envrig(&["up"]).ok();
    assert!(up.stderr.contains("1 created"), "{}", up.stderr);
    let st = envrig(&["status", "--json"]).ok().json();
    let vm = &st["machines"][0];
    assert_eq!(
        (vm["provider"].as_str(), vm["state"].as_str()),
        (Some("libvirt"), Some("running"))
    );
    let name = vm["resource_name"].as_str().unwrap().to_string();

    // The VM is the user's: its session daemon lists it, QEMU runs as the user, and the
    // forwarded port answers on the host.
    let listed = virsh(&user, &["list", "--name"]).ok();
    assert!(
        listed.stdout.lines().any(|l| l == name),
        "{}",
        listed.stdout
    );
    let qemu = std::process::Command::new("pgrep")
        .args(["-u", &user.uid.to_string(), "-f", &format!("guest={name}")])
        .output()
        .unwrap();
    assert!(qemu.status.success(), "no QEMU of {name} runs as the user");
    assert_eq!(http_get(port), "as 0");
    let r = envrig(&["exec", "vm", "--", "cat", "/srv/www/index.html"]).ok();
    assert_eq!(r.stdout, "as 0\n");

    // Snapshot, export, destroy: nothing of the environment is left in the session.
    envrig(&["snapshot", "save", "s1"]).ok();
    envrig(&["exec", "vm", "--", "rm", "/srv/www/index.html"]).ok();
    envrig(&["snapshot", "restore", "s1"]).ok();
    let r = envrig(&["exec", "vm", "--", "cat", "/srv/www/index.html"]).ok();
    assert_eq!(r.stdout, "as 0\n");
    let archive = user.dir.join("sess.envrig");
    envrig(&[
        "export",
        "--snapshot",
        "s1",
        "-o",
        archive.to_str().unwrap(),
    ])
    .ok();
    assert!(std::fs::metadata(&archive).unwrap().len() > 0);
    envrig(&["destroy", "--force"]).ok();
    let all = virsh(&user, &["list", "--all", "--name"]).ok();
    assert!(!all.stdout.contains(&name), "left behind: {}", all.stdout);
}
