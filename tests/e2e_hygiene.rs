//! CI hygiene end to end on the real Docker engine (ignored unless run with `--run-ignored all`, as `scripts/test.sh` does): `run`, interruption,
//! `gc`, crash safety under SIGKILL, concurrent `up`s, and the JSON schemas.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Project, TEST_IMAGE, containers, e2e, networks, unique};

fn head(project: &str) -> String {
    format!(
        "[project]\nname = \"{project}\"\nbake = false\n\n[boxes.bb]\ndocker = \"{TEST_IMAGE}\"\n\n[defaults]\nbox = \"bb\"\nmemory = \"64MiB\"\n\n"
    )
}

fn folder_label(p: &Project) -> String {
    format!(
        "dev.envrig.folder={}",
        p.path().canonicalize().unwrap().display()
    )
}

/// Nothing carrying the project's folder label is left on the engine.
#[track_caller]
fn assert_nothing_left(p: &Project) {
    let l = folder_label(p);
    assert!(
        containers(&l).is_empty(),
        "containers left: {:?}",
        containers(&l)
    );
    assert!(networks(&l).is_empty(), "networks left: {:?}", networks(&l));
}

fn spawn(p: &Project, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_envrig"))
        .args(args)
        .current_dir(p.path())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn envrig")
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Waits (bounded) until `n` containers with `label` run.
fn wait_running(label: &str, n: usize, limit: Duration) {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        let running = common::docker(&["ps", "-q", "--filter", &format!("label={label}")])
            .ok()
            .stdout
            .lines()
            .count();
        if running >= n {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{n} containers with {label} did not come up within {limit:?}");
}

/// Waits (bounded) for a child to exit; kills it and fails if it does not.
fn wait_exit(mut child: Child, limit: Duration) -> (i32, String) {
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            return (
                status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            panic!("envrig did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn run_exits_with_the_commands_status_and_leaves_nothing() {
    e2e();
    let p = Project::new(&format!(
        "{}[machines.a]\n[machines.b]\n[[machines.b.provision]]\nshell = \"echo provisioned > /root/p\"\n",
        head(&unique("run"))
    ));
    let r = p.envrig(&[
        "run",
        "--",
        "sh",
        "-c",
        "echo hello from $(hostname); exit 3",
    ]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert_eq!(
        r.stdout, "hello from a\n",
        "the command's output, and it ran in the first machine"
    );
    assert_nothing_left(&p);
    // In a named machine, after its provisioning; a command killed mid-way leaves nothing.
    let r = p.envrig(&["run", "b", "--", "cat", "/root/p"]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "provisioned\n"),
        "{}",
        r.stderr
    );
    let r = p.envrig(&["run", "--", "sh", "-c", "kill -9 $$"]);
    assert_eq!(r.code, 137, "{}", r.stderr);
    assert_nothing_left(&p);
    // No run left its state folder behind, and the checkout's own environment was never made.
    let instances = p.path().join(".envrig/instances");
    assert_eq!(
        std::fs::read_dir(&instances)
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
    let st = p.envrig(&["status", "--json"]).ok().json();
    assert!(
        st["machines"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["state"] == "not-created")
    );
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn run_that_cannot_make_its_environment_exits_1_and_cleans_up() {
    e2e();
    let p = Project::new(&format!(
        "{}[machines.a]\n[[machines.a.provision]]\nshell = \"exit 9\"\n",
        head(&unique("runfail"))
    ));
    let r = p.envrig(&["run", "--", "true"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("failed with exit status 9"),
        "{}",
        r.stderr
    );
    assert_nothing_left(&p);

    let r = p.envrig(&["run", "--keep-on-failure", "--", "true"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("kept the environment for debugging"),
        "{}",
        r.stderr
    );
    let instance = r
        .stderr
        .split("--instance ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let st = p
        .envrig(&["--instance", &instance, "status", "--json"])
        .ok()
        .json();
    assert_eq!(st["machines"][0]["state"], "running");
    // Its process is gone, but a kept environment is left to its owner (or its ttl).
    let gc = p.envrig(&["gc", "--dry-run", "--json"]).ok().json();
    let mine = gc["removed"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["env_id"] == st["env_id"]);
    assert!(!mine, "gc leaves a kept run alone: {gc}");
    p.envrig(&["--instance", &instance, "destroy", "-f"]).ok();
    assert_nothing_left(&p);
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn an_interrupted_run_destroys_its_environment() {
    e2e();
    let p = Project::new(&format!("{}[machines.a]\n", head(&unique("sigterm"))));
    let child = spawn(&p, &["run", "--", "sleep", "60"]);
    wait_running(&folder_label(&p), 1, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, "-TERM");
    let (code, stderr) = wait_exit(child, Duration::from_secs(30));
    assert_eq!(code, 130, "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_nothing_left(&p);
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn a_killed_run_is_collected_by_gc() {
    e2e();
    let p = Project::new(&format!(
        "{}[machines.a]\n[machines.b]\n",
        head(&unique("sigkill"))
    ));
    let mut child = spawn(&p, &["run", "--", "sleep", "60"]);
    wait_running(&folder_label(&p), 2, Duration::from_secs(30));
    signal(&child, "-KILL");
    // The test is its parent and does not reap it yet: it stays a zombie, as under a PID 1
    // that reaps late. gc must see it as dead all the same.
    let stat = format!("/proc/{}/stat", child.id());
    let t0 = Instant::now();
    let zombie = loop {
        let s = std::fs::read_to_string(&stat).unwrap_or_default();
        let state = s.rsplit_once(") ").map(|(_, r)| r.chars().next());
        if state == Some(Some('Z')) || t0.elapsed() > Duration::from_secs(10) {
            break state == Some(Some('Z'));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(zombie, "the killed run is a zombie until reaped: {stat}");
    assert_eq!(
        containers(&folder_label(&p)).len(),
        2,
        "SIGKILL leaves labelled resources"
    );
    // Another test's gc may collect them first; either way nothing may be left after ours.
    p.envrig(&["gc"]).ok();
    assert_nothing_left(&p);
    let _ = child.wait();
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn four_parallel_runs_in_one_checkout_never_collide() {
    e2e();
    let p = Project::new(&format!(
        "{}[machines.web]\nports = [\"18080:80\"]\n[machines.db]\n",
        head(&unique("par"))
    ));
    let children: Vec<Child> = (0..4)
        .map(|i| {
            spawn(
                &p,
                &[
                    "run",
                    "web",
                    "--",
                    "sh",
                    "-c",
                    &format!("echo run {i}; test -n \"$(hostname)\""),
                ],
            )
        })
        .collect();
    for (i, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "run {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("run {i}\n"));
    }
    assert_nothing_left(&p);
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn gc_removes_expired_machines_and_gone_projects_and_leaves_live_ones() {
    e2e();
    let live = Project::new(&format!("{}[machines.a]\n", head(&unique("live"))));
    let expiring = Project::new(&format!(
        "{}[machines.a]\nttl = \"1s\"\n[machines.b]\n",
        head(&unique("ttl"))
    ));
    let gone = Project::new(&format!(
        "{}[machines.a]\n[machines.b]\n",
        head(&unique("gone"))
    ));
    live.envrig(&["up"]).ok();
    expiring.envrig(&["up"]).ok();
    gone.envrig(&["up"]).ok();
    let gone_label = folder_label(&gone);
    std::fs::remove_file(gone.path().join("Envfile")).unwrap();
    std::thread::sleep(Duration::from_millis(2100));

    let dry = live.envrig(&["gc", "--dry-run"]).ok();
    assert!(dry.stdout.contains("would remove"), "{}", dry.stdout);
    assert_eq!(
        containers(&gone_label).len(),
        2,
        "--dry-run removes nothing"
    );
    let r = live.envrig(&["gc", "--json"]).ok().json();
    assert_eq!(r["schema"], "envrig.gc/1");
    let st = expiring.envrig(&["status", "--json"]).ok().json();
    let state = |n: &str| {
        st["machines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["machine"] == n)
            .unwrap()["state"]
            .clone()
    };
    assert_eq!(
        state("a"),
        "not-created",
        "the expired machine was destroyed"
    );
    assert_eq!(state("b"), "running", "a machine without ttl is left alone");
    assert!(containers(&gone_label).is_empty());
    assert!(networks(&gone_label).is_empty());
    let st = live.envrig(&["status", "--json"]).ok().json();
    assert_eq!(
        st["machines"][0]["state"], "running",
        "a live environment is left alone"
    );
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn two_concurrent_ups_make_one_set_of_machines() {
    e2e();
    let p = Project::new(&format!(
        "{}[machines.a]\n[machines.b]\n[machines.c]\n",
        head(&unique("race"))
    ));
    let (x, y) = (spawn(&p, &["up"]), spawn(&p, &["up"]));
    let (cx, ex) = wait_exit(x, Duration::from_secs(60));
    let (cy, ey) = wait_exit(y, Duration::from_secs(60));
    assert_eq!((cx, cy), (0, 0), "{ex}\n{ey}");
    assert!(
        ex.contains("waiting for another envrig") || ey.contains("waiting for another envrig"),
        "{ex}\n{ey}"
    );
    assert_eq!(containers(&folder_label(&p)).len(), 3);
}

/// A tiny deterministic generator: the seed is printed, so a failure can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn sigkill_at_random_moments_never_leaves_a_mess() {
    e2e();
    let rounds: u64 = std::env::var("ENVRIG_KILL_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(30);
    let seed = std::env::var("ENVRIG_KILL_SEED")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("fault injection: {rounds} rounds, ENVRIG_KILL_SEED={seed}");
    let mut rng = Lcg(seed);
    let mut text = head(&unique("chaos"));
    for m in ["m1", "m2", "m3", "m4", "m5"] {
        text.push_str(&format!(
            "[machines.{m}]\n[[machines.{m}.provision]]\nshell = \"echo {m} >> /root/ran\"\n"
        ));
    }
    let p = Project::new(&text);
    let label = folder_label(&p);
    let t0 = Instant::now();
    for round in 0..rounds {
        // Kill an `up` (or, every third round, a `destroy`) somewhere in its work.
        let verb = if round % 3 == 2 { "destroy" } else { "up" };
        let args: &[&str] = if verb == "destroy" {
            &["destroy", "-f"]
        } else {
            &["up"]
        };
        let child = spawn(&p, args);
        std::thread::sleep(Duration::from_millis(rng.next(700)));
        signal(&child, "-KILL");
        let _ = wait_exit(child, Duration::from_secs(10));
        // The next `up` converges: exactly five machines, all running, each provisioned once.
        let r = p.envrig(&["up"]);
        assert_eq!(
            r.code, 0,
            "round {round} (seed {seed}): up after a killed {verb} failed: {}",
            r.stderr
        );
        let ids = containers(&label);
        assert_eq!(ids.len(), 5, "round {round} (seed {seed}): {ids:?}");
        let st = p.envrig(&["status", "--json"]).ok().json();
        for m in st["machines"].as_array().unwrap() {
            assert_eq!(m["state"], "running", "round {round} (seed {seed}): {m}");
        }
        let ran = p
            .envrig(&["exec", "m3", "--", "cat", "/root/ran"])
            .ok()
            .stdout;
        // At least once, never lost: a kill between a step's end and its record re-runs it.
        assert!(
            !ran.is_empty() && ran.lines().all(|l| l == "m3") && ran.lines().count() <= 2,
            "round {round} (seed {seed}): {ran:?}"
        );
        assert!(t0.elapsed() < Duration::from_secs(600), "bounded in time");
    }
    p.envrig(&["destroy", "-f"]).ok();
    assert_nothing_left(&p);
    eprintln!(
        "fault injection: {rounds} rounds passed in {:?}",
        t0.elapsed()
    );
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn json_outputs_follow_their_schemas() {
    e2e();
    let p = Project::new(&format!(
        "{}[machines.a]\n[[machines.a.provision]]\nname = \"s\"\nshell = \"true\"\n",
        head(&unique("schema"))
    ));
    let lines = |args: &[&str]| -> Vec<serde_json::Value> {
        let r = p.envrig(args).ok();
        r.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{args:?}: {e}: {l}")))
            .collect()
    };
    let up = lines(&["up", "--json"]);
    assert!(
        up[..up.len() - 1]
            .iter()
            .all(|e| e["schema"] == "envrig.event/1"
                && e["time"].is_string()
                && e["phase"].is_string())
    );
    assert_eq!(up.last().unwrap()["schema"], "envrig.up/1");
    let st = &lines(&["status", "--json"])[0];
    assert_eq!(st["schema"], "envrig.status/1");
    for key in ["project", "env_id", "folder", "envfile"] {
        assert!(st[key].is_string(), "status.{key}");
    }
    let m = &st["machines"][0];
    for key in [
        "machine",
        "provider",
        "state",
        "id",
        "resource_name",
        "created",
    ] {
        assert!(m[key].is_string(), "status.machines[].{key}: {m}");
    }
    assert!(m["ports"].is_array() && m["generation"].is_u64());
    let ls = &lines(&["ls", "--json"])[0];
    assert_eq!(ls["schema"], "envrig.ls/1");
    let env = ls["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["env_id"] == st["env_id"])
        .unwrap();
    for key in ["project", "folder", "envfile", "created"] {
        assert!(env[key].is_string(), "ls.environments[].{key}");
    }
    assert!(
        env["machines"].is_object()
            && env["providers"].is_array()
            && env["envfile_exists"].is_boolean()
    );
    let prov = lines(&["provision", "--force", "--json"]);
    assert_eq!(prov.last().unwrap()["schema"], "envrig.provision/1");
    assert_eq!(prov.last().unwrap()["machines"][0]["steps_run"], 1);
    let halt = lines(&["halt", "--json"]);
    assert_eq!(halt.last().unwrap()["schema"], "envrig.halt/1");
    assert_eq!(halt.last().unwrap()["machines"][0], "a");
    let destroy = lines(&["destroy", "-f", "--json"]);
    assert_eq!(destroy.last().unwrap()["schema"], "envrig.destroy/1");
    assert_eq!(destroy.last().unwrap()["machines"][0], "a");
    let run = lines(&["run", "--json", "--", "true"]);
    let last = run.last().unwrap();
    assert_eq!(
        (
            last["schema"].as_str(),
            last["exit_code"].as_i64(),
            last["kept"].as_bool()
        ),
        (Some("envrig.run/1"), Some(0), Some(false))
    );
    assert!(last["instance"].as_str().unwrap().starts_with("run-"));
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn gc_leaves_another_hosts_environment_alone() {
    e2e();
    // Made by an envrig in another container sharing the engine: its folder is not ours to
    // see, so "gone" here means nothing.
    let env = unique("foreign");
    let label = |k: &str, v: &str| format!("--label=dev.envrig.{k}={v}");
    // Named and labelled as envrig would name it: a machine in every way but its host.
    let id = common::docker(&[
        "run",
        "-d",
        "--init",
        &format!("--name=foreign-{}-a-1", &env[..8]),
        &label("env", &env),
        &label("machine", "a"),
        &label("generation", "1"),
        &label("project", "foreign"),
        &label(
            "folder",
            &format!("{}/foreign", common::gc_scope().display()),
        ),
        &label(
            "envfile",
            &format!("{}/foreign/Envfile", common::gc_scope().display()),
        ),
        &label("host", "another-machine/1/2"),
        TEST_IMAGE,
        "sleep",
        "600",
    ])
    .ok()
    .stdout
    .trim()
    .to_string();
    let dir = tempfile::tempdir().unwrap();
    common::envrig_in(dir.path(), &["gc"]).ok();
    let left = containers(&format!("dev.envrig.env={env}"));
    common::docker(&["rm", "-f", &id]).ok();
    assert_eq!(left.len(), 1, "gc removed another host's environment");
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn gc_leaves_a_container_run_from_a_snapshot_image_alone() {
    e2e();
    let p = Project::new(&format!("{}[machines.a]\n", head(&unique("byhand"))));
    p.envrig(&["up"]).ok();
    let env = p.env_id();
    p.envrig(&["snapshot", "save", "s1"]).ok();
    let image = common::docker(&[
        "images",
        "-q",
        "--filter",
        &format!("label=dev.envrig.env={env}"),
        "--filter",
        "label=dev.envrig.snapshot=s1",
    ])
    .ok()
    .stdout
    .trim()
    .to_string();
    assert!(!image.is_empty(), "no snapshot image for {env}");
    let by_hand = common::docker(&["run", "-d", "--init", &image, "sleep", "600"])
        .ok()
        .stdout
        .trim()
        .to_string();
    let inherited = common::docker(&[
        "inspect",
        "-f",
        "{{index .Config.Labels \"dev.envrig.machine\"}}",
        &by_hand,
    ])
    .ok()
    .stdout;
    assert_eq!(
        inherited.trim(),
        "a",
        "the image passes the machine's labels on"
    );
    let st = p.envrig(&["status", "--json"]).ok().json();
    assert_eq!(
        st["machines"].as_array().unwrap().len(),
        1,
        "a container run by hand is not a machine: {st}"
    );
    // The environment goes; the container someone ran from its snapshot stays.
    std::fs::remove_file(p.path().join("Envfile")).unwrap();
    let r = common::envrig_in(p.path(), &["gc", "--json"]).ok().json();
    let removed = r["removed"].to_string();
    let alive = common::container_state(&by_hand);
    common::docker(&["rm", "-f", &by_hand]).ok();
    common::docker(&["rmi", "-f", &image]).ok();
    assert!(removed.contains("machine a"), "{r}");
    assert_eq!(alive, "running", "gc took a container it did not make: {r}");
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn gc_skips_an_environment_whose_folder_it_cannot_read() {
    e2e();
    let p = Project::new(&format!("{}[machines.a]\n", head(&unique("unread"))));
    p.envrig(&["up"]).ok();
    let label = folder_label(&p);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p.path(), std::fs::Permissions::from_mode(0o000)).unwrap();
    // Root reads anything; without these two capabilities it meets EACCES as a user would
    // on a folder of someone else's (or over NFS).
    let elsewhere = tempfile::tempdir().unwrap();
    let o = Command::new("setpriv")
        .args(["--bounding-set=-dac_override,-dac_read_search", "--"])
        .arg(env!("CARGO_BIN_EXE_envrig"))
        .args(["gc", "--json"])
        .current_dir(elsewhere.path())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run setpriv (util-linux)");
    std::fs::set_permissions(p.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let r: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        containers(&label).len(),
        1,
        "gc took an unreadable folder for gone: {r}"
    );
    let skipped = r["skipped"].as_array().unwrap();
    assert!(
        skipped.iter().any(|k| k["reason"]
            .as_str()
            .is_some_and(|w| w.contains("cannot tell") && w.contains("ermission denied"))),
        "{r}"
    );
    p.envrig(&["status"]).ok();
}
