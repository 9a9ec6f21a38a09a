//! End to end on Podman, through the real binary: rootful (as root, the service on
//! `/run/podman/podman.sock`) and rootless (as the ordinary test user of
//! `scripts/rootless-user.sh`, its own storage and networks). envrig starts Podman's API
//! service itself where nothing answers (no systemd here). What exists is asked of Podman's
//! own CLI, as the same user, independently of envrig's code.
//!
//! Ignored unless run by `scripts/test.sh`; then a missing Podman or test user FAILS.

mod common;

use std::path::{Path, PathBuf};

use common::user::User;
use common::{Run, TEST_IMAGE, e2e, envrig_in, free_port, http_get, unique};

/// Podman's CLI as one user.
type PodmanCli<'a> = &'a dyn Fn(&[&str]) -> Run;

/// How one side (root, or the test user) runs envrig and Podman's CLI, and makes folders.
struct Side<'a> {
    envrig: &'a dyn Fn(&Path, &[&str]) -> Run,
    podman: PodmanCli<'a>,
    folder: &'a dyn Fn(&str, &str) -> PathBuf,
    /// Another Podman (root's, for the user) that must not see this side's machines.
    apart_from: Option<PodmanCli<'a>>,
}

fn envfile(project: &str, port: u16, step: &str) -> String {
    format!(
        r#"[project]
name = "{project}"
provider = "podman"
immutable = true

[boxes.bb]
podman = "{TEST_IMAGE}"

[defaults]
box = "bb"

[machines.web]
ports = ["127.0.0.1:{port}:8080"]
command = ["sh", "-c", "mkdir -p /srv; exec httpd -f -p 8080 -h /srv"]
provision = [{{ shell = "{step}" }}]
depends_on = ["db"]

[machines.db]
synced = [{{ host = "./shared", guest = "/shared" }}]
"#
    )
}

/// Container, network and image names Podman lists with `label` (all states).
fn podman_has(podman: &dyn Fn(&[&str]) -> Run, label: &str) -> Vec<String> {
    let filter = format!("label={label}");
    let mut all = Vec::new();
    for args in [
        vec!["ps", "-a", "--format", "{{.Names}}", "--filter", &filter],
        vec![
            "network",
            "ls",
            "--format",
            "{{.Name}}",
            "--filter",
            &filter,
        ],
    ] {
        // Podman 4.3's listing opens every container's network namespace, its own or not:
        // one that another test's container is tearing down fails the whole listing
        // ("unknown FS magic on /run/netns/…", containers/podman#16140). Asked again.
        let mut r = podman(&args);
        for _ in 0..10 {
            if !(r.code == 125 && r.stderr.contains("unknown FS magic")) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
            r = podman(&args);
        }
        let r = r.ok();
        all.extend(r.stdout.lines().map(str::to_string));
    }
    all
}

/// The whole life of a two-machine environment on one Podman: names, ports, provisioning
/// (once, baked), snapshot save and restore, drift, a new generation behind a port that
/// keeps answering, halt and up, export, destroy leaving nothing, and import elsewhere.
fn lifecycle(side: &Side) {
    let project = unique("pod");
    let port = free_port();
    let step = "mkdir -p /srv; echo page-1 > /srv/index.html; date +%s%N > /srv/once";
    let dir = (side.folder)(&project, &envfile(&project, port, step));
    std::fs::create_dir(dir.join("shared")).unwrap();
    std::fs::write(dir.join("shared/from-host"), "hello from the host\n").unwrap();
    (side.folder)(&project, &envfile(&project, port, step)); // the new folder is the user's too
    let other = (side.folder)(&format!("{project}-b"), "");
    std::fs::remove_file(other.join("Envfile")).unwrap();
    let _cleanup = Cleanup(side, [dir.clone(), other.clone()]);
    let envrig = |args: &[&str]| (side.envrig)(&dir, args);

    let up = envrig(&["up"]).ok();
    assert!(up.stderr.contains("2 created"), "{}", up.stderr);
    let st = envrig(&["status", "--json"]).ok().json();
    let env_id = st["env_id"].as_str().unwrap().to_string();
    let label = format!("dev.envrig.env={env_id}");
    for m in st["machines"].as_array().unwrap() {
        assert_eq!(m["provider"], "podman", "{st}");
        assert_eq!(m["state"], "running", "{st}");
    }
    let held = podman_has(side.podman, &label);
    assert!(
        held.iter().any(|n| n.ends_with("-web-1")) && held.iter().any(|n| n.ends_with("-db-1")),
        "Podman lists {held:?}"
    );
    if let Some(other) = side.apart_from {
        assert_eq!(podman_has(other, &label), Vec::<String>::new());
    }

    // The port answers on the host; web reaches db by name on the private network.
    assert_eq!(http_get(port), "page-1");
    let r = envrig(&["exec", "web", "--", "nslookup", "db"]).ok();
    assert!(r.stdout.contains("Address"), "{}", r.stdout);
    let once = envrig(&["exec", "web", "--", "cat", "/srv/once"])
        .ok()
        .stdout;

    // A snapshot brings back what was lost since.
    // A synced folder is live both ways; what the machine writes is the host user's (as
    // root that is root; rootless, the user, not one of its subordinate ids).
    let r = envrig(&["exec", "db", "--", "cat", "/shared/from-host"]).ok();
    assert_eq!(r.stdout, "hello from the host\n");
    envrig(&[
        "exec",
        "db",
        "--",
        "sh",
        "-c",
        "echo back > /shared/from-guest",
    ])
    .ok();
    let written = dir.join("shared/from-guest");
    assert_eq!(std::fs::read_to_string(&written).unwrap(), "back\n");
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(dir.join("Envfile")).unwrap().uid();
    assert_eq!(std::fs::metadata(&written).unwrap().uid(), owner);

    envrig(&["snapshot", "save", "s1"]).ok();
    envrig(&["exec", "web", "--", "rm", "/srv/once"]).ok();
    let drift = envrig(&["drift", "web", "--json"]).ok().json();
    assert!(drift.to_string().contains("/srv/once"), "{drift}");
    envrig(&["snapshot", "restore", "s1"]).ok();
    let back = envrig(&["exec", "web", "--", "cat", "/srv/once"])
        .ok()
        .stdout;
    assert_eq!(back, once);
    let archive = dir.with_extension("envrig");
    envrig(&[
        "export",
        "--snapshot",
        "s1",
        "-o",
        archive.to_str().unwrap(),
    ])
    .ok();

    // A changed step: a new generation, switched behind the port; an unchanged `up` after
    // it takes the baked layer's record.
    let changed = envfile(&project, port, &step.replace("page-1", "page-2"));
    std::fs::write(dir.join("Envfile"), changed).unwrap();
    let up = envrig(&["up"]).ok();
    assert!(
        up.stderr.contains("switched to generation 2"),
        "{}",
        up.stderr
    );
    assert_eq!(http_get(port), "page-2");

    // Halt frees the port; up brings both back.
    envrig(&["halt"]).ok();
    let st = envrig(&["status", "--json"]).ok().json();
    assert!(
        st["machines"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["state"] == "stopped"),
        "{st}"
    );
    envrig(&["up"]).ok();
    assert_eq!(http_get(port), "page-2");

    // Destroy leaves nothing Podman lists under the environment's label.
    envrig(&["destroy", "--force"]).ok();
    let left = podman_has(side.podman, &label);
    assert!(left.is_empty(), "left behind: {left:?}");

    // The exported snapshot, imported into another folder, runs as it was saved.
    // A synced folder's files are the user's, not the archive's: the target has its own.
    std::fs::create_dir(other.join("shared")).unwrap();
    (side.folder)(&format!("{project}-b"), "");
    std::fs::remove_file(other.join("Envfile")).unwrap();
    let imp = (side.envrig)(&other, &["import", archive.to_str().unwrap()]).ok();
    assert!(imp.stderr.contains("imported"), "{}", imp.stderr);
    let r = (side.envrig)(&other, &["exec", "web", "--", "cat", "/srv/once"]).ok();
    assert_eq!(r.stdout, once);
    assert_eq!(http_get(port), "page-1");
    (side.envrig)(&other, &["destroy", "--force"]).ok();
}

/// Destroys what the scenario made, whatever happened to it.
struct Cleanup<'a>(&'a Side<'a>, [PathBuf; 2]);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for dir in &self.1 {
            if dir.join("Envfile").exists() {
                let _ = (self.0.envrig)(dir, &["destroy", "--force"]);
            }
        }
    }
}

fn root_podman(args: &[&str]) -> Run {
    common::capture(std::process::Command::new("podman").args(args))
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn rootful_podman_runs_an_environment_from_up_to_nothing() {
    e2e();
    let base = tempfile::tempdir().unwrap();
    let folder = |name: &str, envfile: &str| {
        let d = base.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("Envfile"), envfile).unwrap();
        d
    };
    lifecycle(&Side {
        envrig: &|dir, args| envrig_in(dir, args),
        podman: &root_podman,
        folder: &folder,
        apart_from: None,
    });
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn rootless_podman_runs_an_environment_as_an_ordinary_user() {
    e2e();
    let user = User::for_test();
    // Nothing of root's is used: not root's engine, nor its socket.
    let who = user
        .command(Path::new("/"), "id")
        .arg("-u")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&who.stdout).trim(),
        user.uid.to_string()
    );
    let folder = |name: &str, envfile: &str| user.project(name, envfile);
    lifecycle(&Side {
        envrig: &|dir, args| user.envrig(dir, args),
        podman: &|args| user.podman(args),
        folder: &folder,
        apart_from: Some(&root_podman),
    });
}
