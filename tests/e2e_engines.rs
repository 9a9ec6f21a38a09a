//! Machines over several engine endpoints, end to end on the rig of real engines
//! `scripts/engines.sh` makes (Docker daemons in network namespaces joined into one Swarm;
//! libvirt hosts in mount + network namespaces). The rig is started here when it is not up
//! (idempotent); `scripts/test.sh` takes it down after the suite.
//!
//! One test walks the whole story in order, because it kills and restarts a rig engine
//! that any other test of the rig would see die.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::rig::rig;
use common::{Run, TEST_IMAGE, e2e, envrig_home_env, guest, unique};

/// A project folder with its own endpoints file and envrig home.
struct Farm {
    dir: tempfile::TempDir,
    engines: PathBuf,
}

impl Farm {
    fn new(envfile: &str) -> Farm {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Envfile"), envfile).unwrap();
        let engines = dir.path().join("engines.toml");
        Farm { dir, engines }
    }

    fn envrig(&self, args: &[&str]) -> Run {
        let engines = self.engines.to_str().unwrap();
        envrig_home_env(
            self.dir.path(),
            &self.dir.path().join("home"),
            &[
                ("ENVRIG_ENGINES", engines),
                ("ENVRIG_ENGINE_TIMEOUT_MS", "3000"),
            ],
            args,
        )
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        let _ = self.envrig(&["destroy", "-f"]);
    }
}

fn docker_at(uri: &str, args: &[&str]) -> String {
    let o = Command::new("docker")
        .arg("-H")
        .arg(uri)
        .args(args)
        .output()
        .expect("docker");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn row<'a>(status: &'a serde_json::Value, machine: &str) -> &'a serde_json::Value {
    status["machines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["machine"] == machine)
        .unwrap_or_else(|| panic!("no row for {machine}: {status}"))
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn machines_spread_over_a_swarm_reach_each_other_and_survive_a_dead_engine() {
    e2e();
    let endpoints = rig();
    let docker: Vec<&(String, String)> = endpoints
        .iter()
        .filter(|(_, u)| u.starts_with("tcp://"))
        .collect();
    assert_eq!(docker.len(), 3, "{endpoints:?}");
    let name = unique("farm");
    let f = Farm::new(&format!(
        "[project]\nname = \"{name}\"\nplacement = \"spread\"\nbake = false\n\n\
         [boxes.bb]\ndocker = \"{TEST_IMAGE}\"\n\n[defaults]\nbox = \"bb\"\nmemory = \"64MiB\"\n\n\
         [machines.web]\n[machines.app]\n[[machines.app.provision]]\nshell = \"hostname > /tmp/made\"\n\
         [machines.db]\nengine = \"d3\"\n\
         [machines.gpu]\nengine_labels = {{ gpu = \"yes\" }}\n"
    ));
    for (n, u) in &docker {
        let mut args = vec!["engine", "add", n.as_str(), u.as_str()];
        if n == "d2" {
            args.extend(["--label", "gpu=yes"]);
        }
        f.envrig(&args).ok();
    }
    // Every endpoint answers, and says what it has.
    let ls = f.envrig(&["engine", "ls", "--json"]).ok().json();
    let rows = ls["engines"].as_array().unwrap();
    for (n, _) in &docker {
        let r = rows.iter().find(|r| r["name"] == n.as_str()).unwrap();
        assert_eq!(r["reachable"], true, "{r}");
        assert!(r["info"]["cpus"].as_u64().unwrap() > 0, "{r}");
        assert!(r["info"]["cluster"]["id"].is_string(), "{r}");
    }

    // The plan says where, and does nothing.
    let plan = f.envrig(&["up", "--plan", "--json"]).ok().json();
    let engine_of = |m: &str| -> String {
        plan["machines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["machine"] == m)
            .unwrap()["engine"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(engine_of("db"), "d3", "{plan}");
    assert_eq!(engine_of("gpu"), "d2", "{plan}");
    let spread: std::collections::BTreeSet<String> = ["web", "app", "db", "gpu"]
        .iter()
        .map(|m| engine_of(m))
        .collect();
    assert_eq!(spread.len(), 3, "spread over the three engines: {plan}");
    let s = f.envrig(&["status", "--json"]).ok().json();
    assert_eq!(row(&s, "web")["state"], "not-created", "{s}");

    // Up: each where planned, each labelled with its engine, names across hosts.
    f.envrig(&["up"]).ok();
    let s = f.envrig(&["status", "--json"]).ok().json();
    for m in ["web", "app", "db", "gpu"] {
        assert_eq!(row(&s, m)["state"], "running", "{s}");
        assert_eq!(row(&s, m)["engine"], engine_of(m).as_str(), "{s}");
    }
    let d3 = &docker.iter().find(|(n, _)| n == "d3").unwrap().1;
    let on_d3 = docker_at(
        d3,
        &[
            "ps",
            "--filter",
            &format!("label=dev.envrig.project={name}"),
            "--format",
            "{{.Label \"dev.envrig.machine\"}} {{.Label \"dev.envrig.engine\"}}",
        ],
    );
    assert!(on_d3.contains("db d3"), "{on_d3}");
    for (from, to) in [("web", "db"), ("db", "gpu"), ("gpu", "app")] {
        f.envrig(&[
            "exec",
            from,
            "--",
            "sh",
            "-c",
            &format!("ping -c1 -W3 {to} >/dev/null"),
        ])
        .ok();
    }
    // Steps run in the machine on its own engine, again on request.
    let made = f
        .envrig(&["exec", "app", "--", "cat", "/tmp/made"])
        .ok()
        .stdout;
    f.envrig(&["provision", "app", "--force"]).ok();
    let again = f
        .envrig(&["exec", "app", "--", "cat", "/tmp/made"])
        .ok()
        .stdout;
    assert_eq!(made, again);
    assert!(!made.trim().is_empty());
    // ls sees the environment on every engine; a second up changes nothing.
    let ls = f.envrig(&["ls", "--json"]).ok().json();
    let env = ls["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["project"] == name.as_str())
        .unwrap_or_else(|| panic!("{ls}"));
    assert_eq!(env["engines"].as_array().unwrap().len(), 3, "{env}");
    let again = f.envrig(&["up", "--json"]).ok().json();
    assert!(
        again["machines"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["result"] == "unchanged"),
        "{again}"
    );

    // d3 dies: its machine is unreachable, the others work, nothing is made elsewhere.
    let pid = std::fs::read_to_string("/run/envrig-engines/d3/dockerd.pid").unwrap();
    Command::new("kill")
        .args(["-KILL", pid.trim()])
        .status()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let s = f.envrig(&["status", "--json"]).ok().json();
    assert_eq!(row(&s, "db")["state"], "unreachable", "{s}");
    assert_eq!(row(&s, "web")["state"], "running", "{s}");
    f.envrig(&["exec", "web", "--", "true"]).ok();
    let up = f.envrig(&["up"]);
    assert_ne!(up.code, 0, "up must not remake db elsewhere: {}", up.stderr);
    assert!(up.stderr.contains("--reschedule"), "{}", up.stderr);
    let gc = f.envrig(&["gc", "--dry-run", "--json"]).ok().json();
    assert!(
        !gc.to_string().contains(&name),
        "gc must not take an unreachable engine's machines for gone: {gc}"
    );
    // destroy removes what it can and says what is left.
    let d = f.envrig(&["destroy", "-f"]);
    assert_eq!(d.code, 1, "{}", d.stderr);
    assert!(
        d.stderr.contains("d3") && d.stderr.contains("db"),
        "{}",
        d.stderr
    );
    // A checkout that has no state of the environment cannot tell where db was: refused too.
    std::fs::remove_dir_all(f.dir.path().join(".envrig")).unwrap();
    let up = f.envrig(&["up"]);
    assert_eq!(up.code, 2, "{}", up.stderr);
    assert!(up.stderr.contains("cannot tell"), "{}", up.stderr);

    // d3 back: destroy finishes, nothing left on any engine.
    rig();
    f.envrig(&["destroy", "-f"]).ok();
    for (_, u) in &docker {
        let left = docker_at(
            u,
            &[
                "ps",
                "-aq",
                "--filter",
                &format!("label=dev.envrig.project={name}"),
            ],
        );
        assert!(left.trim().is_empty(), "{u}: {left}");
    }
}

fn virsh(uri: &str, args: &[&str]) -> String {
    let o = Command::new("virsh")
        .arg("-c")
        .arg(uri)
        .args(args)
        .output()
        .expect("virsh");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn a_libvirt_environment_runs_on_a_remote_libvirt_host_with_its_box_copied_there() {
    e2e();
    let endpoints = rig();
    let libvirt: Vec<&(String, String)> = endpoints
        .iter()
        .filter(|(_, u)| u.starts_with("qemu+tcp://"))
        .collect();
    assert_eq!(libvirt.len(), 2, "{endpoints:?}");
    let name = unique("remote");
    let f = Farm::new(&format!(
        "[project]\nname = \"{name}\"\nbake = false\n\n[boxes.tiny]\nlibvirt = \"{}\"\n\n\
         [defaults]\nbox = \"tiny\"\nprovider = \"libvirt\"\nmemory = \"256MiB\"\n\n\
         [machines.one]\n[machines.two]\nengine = \"l1\"\n",
        guest()
    ));
    for (n, u) in &libvirt {
        f.envrig(&["engine", "add", n.as_str(), u.as_str()]).ok();
    }
    let ls = f.envrig(&["engine", "ls", "--json"]).ok().json();
    let l1 = ls["engines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "l1")
        .unwrap();
    assert_eq!(l1["reachable"], true, "{l1}");
    assert!(l1["info"]["memory"].as_u64().unwrap() > 0, "{l1}");
    // A private network does not span libvirt hosts: the other machine goes where the
    // pinned one is.
    let plan = f.envrig(&["up", "--plan", "--json"]).ok().json();
    for m in plan["machines"].as_array().unwrap() {
        assert_eq!(m["engine"], "l1", "{plan}");
    }
    f.envrig(&["up"]).ok();
    let s = f.envrig(&["status", "--json"]).ok().json();
    for m in ["one", "two"] {
        assert_eq!(row(&s, m)["state"], "running", "{s}");
        assert_eq!(row(&s, m)["engine"], "l1", "{s}");
    }
    // The machines are on that host, not this one, and the box was copied into its pool.
    let uri = &libvirt.iter().find(|(n, _)| n == "l1").unwrap().1;
    let there = virsh(uri, &["list", "--name"]);
    let one = row(&s, "one")["resource_name"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(there.contains(&one), "{there}");
    let here = virsh("qemu:///system", &["list", "--all", "--name"]);
    assert!(!here.contains(&one), "{here}");
    let vols = virsh(uri, &["vol-list", "envrig"]);
    assert!(vols.contains("envrig-box-"), "{vols}");
    // Commands go there: by name over that host's private network, through the agent.
    f.envrig(&["exec", "one", "--", "ping", "-c", "1", "-W", "5", "two"])
        .ok();
    f.envrig(&["destroy", "-f"]).ok();
    let there = virsh(uri, &["list", "--all", "--name"]);
    assert!(!there.contains(&one), "{there}");
}
