//! Immutable environments on the real Docker engine (ignored unless run with `--run-ignored all`, as `scripts/test.sh` does): baked layers keyed by
//! fingerprint.

mod common;

use common::{Project, TEST_IMAGE, docker, e2e, http_get, unique};

/// The machine's fingerprint (16 hex) from `status --json`.
fn fingerprint(p: &Project, machine: &str) -> String {
    let st = p.envrig(&["status", "--json"]).ok().json();
    st["machines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["machine"] == machine)
        .and_then(|m| m["fingerprint"].as_str())
        .unwrap_or_default()
        .to_string()
}

fn exec(p: &Project, machine: &str, cmd: &str) -> String {
    p.envrig(&["exec", machine, "--", "sh", "-c", cmd])
        .ok()
        .stdout
        .trim()
        .to_string()
}

/// Removes the layer image when the test ends, whatever happened.
struct Layer(String);

impl Drop for Layer {
    fn drop(&mut self) {
        let _ = docker(&["rmi", "-f", &self.0]);
    }
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn a_baked_layer_skips_once_steps_in_another_checkout() {
    e2e();
    // The step's text is this test's own, so its fingerprint (and layer) is too.
    let tag = unique("bake");
    let text = format!(
        r#"[project]
name = "bake"
[boxes.bb]
docker = "{TEST_IMAGE}"
[machines.web]
box = "bb"
[[machines.web.provision]]
name = "setup"
shell = "echo {tag} >> /once.count && mkdir -p /srv && echo baked > /srv/app"
[[machines.web.provision]]
name = "every time"
run = "always"
shell = "echo x >> /always.count"
"#
    );
    let a = Project::new(&text);
    let r = a.envrig(&["up"]).ok();
    assert!(r.stderr.contains("baked layer"), "{}", r.stderr);
    let fp = fingerprint(&a, "web");
    assert_eq!(fp.len(), 16, "{fp}");
    let layer = Layer(format!("envrig-baked-{fp}"));
    let label = docker(&[
        "image",
        "inspect",
        "-f",
        "{{index .Config.Labels \"dev.envrig.baked\"}}",
        &layer.0,
    ])
    .ok();
    assert!(
        label.stdout.trim().starts_with(&fp),
        "the layer carries the full fingerprint: {}",
        label.stdout
    );
    assert_eq!(exec(&a, "web", "wc -l < /once.count"), "1");

    // Another checkout of the same Envfile: the once step does not run, the always step does.
    let b = Project::new(&text);
    let r = b.envrig(&["up"]).ok();
    assert!(
        r.stderr
            .contains(&format!("using baked layer {}, 1 step skipped", &fp[..6])),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("running step `setup`"), "{}", r.stderr);
    assert!(
        r.stderr.contains("running step `every time`"),
        "{}",
        r.stderr
    );
    assert_eq!(fingerprint(&b, "web"), fp, "same Envfile, same fingerprint");
    assert_eq!(
        exec(&b, "web", "wc -l < /once.count"),
        "1",
        "the once step ran only in the first checkout"
    );
    assert_eq!(exec(&b, "web", "cat /srv/app"), "baked");
    assert_eq!(
        exec(&b, "web", "wc -l < /always.count"),
        "1",
        "a layer holds what the once steps made, not what an always step did"
    );
    let st = b.envrig(&["status", "--json"]).ok().json();
    let id = st["machines"][0]["id"].as_str().unwrap().to_string();
    let labels = docker(&["inspect", "-f", "{{json .Config.Labels}}", &id]).ok();
    let labels: serde_json::Value = serde_json::from_str(labels.stdout.trim()).unwrap();
    assert_eq!(labels["dev.envrig.layer"], fp.as_str(), "{labels}");
    assert_eq!(
        labels["dev.envrig.folder"],
        b.path().canonicalize().unwrap().to_str().unwrap(),
        "the layer's labels do not leak into the machine: {labels}"
    );
    // A second `up` runs the always step only, and bakes nothing.
    let r = b.envrig(&["up"]).ok();
    assert!(!r.stderr.contains("running step `setup`"), "{}", r.stderr);
    assert!(!r.stderr.contains("baked"), "{}", r.stderr);
    assert_eq!(exec(&b, "web", "wc -l < /always.count"), "2");

    // --fresh ignores the layer: the once step runs again.
    let c = Project::new(&text);
    let r = c.envrig(&["up", "--fresh"]).ok();
    assert!(!r.stderr.contains("using baked layer"), "{}", r.stderr);
    assert!(r.stderr.contains("running step `setup`"), "{}", r.stderr);
    assert_eq!(exec(&c, "web", "wc -l < /once.count"), "1");
    assert_eq!(exec(&c, "web", "cat /once.count"), tag);
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn bake_false_makes_no_layer() {
    e2e();
    let tag = unique("nobake");
    let text = format!(
        "[project]\nname = \"nobake\"\nbake = false\n[boxes.bb]\ndocker = \"{TEST_IMAGE}\"\n[machines.web]\nbox = \"bb\"\n[[machines.web.provision]]\nshell = \"echo {tag} > /once\"\n"
    );
    let a = Project::new(&text);
    let r = a.envrig(&["up"]).ok();
    assert!(!r.stderr.contains("baked"), "{}", r.stderr);
    let fp = fingerprint(&a, "web");
    let _layer = Layer(format!("envrig-baked-{fp}"));
    let inspect = docker(&["image", "inspect", &format!("envrig-baked-{fp}")]);
    assert_ne!(inspect.code, 0, "no layer image: {}", inspect.stdout);
    let b = Project::new(&text);
    let r = b.envrig(&["up"]).ok();
    assert!(r.stderr.contains("running"), "{}", r.stderr);
}

/// `drift --json`'s changes as (kind, path), sorted.
fn drift_of(p: &Project, machine: &str) -> Vec<(String, String)> {
    let j = p.envrig(&["drift", machine, "--json"]).ok().json();
    assert_eq!(j["schema"], "envrig.drift/1", "{j}");
    let mut out: Vec<(String, String)> = j["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["kind"].as_str().unwrap().to_string(),
                c["path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn drift_lists_exactly_what_changed_since_provisioning() {
    e2e();
    let tag = unique("drift");
    let text = format!(
        r#"[project]
name = "drift"
[boxes.bb]
docker = "{TEST_IMAGE}"
[machines.web]
box = "bb"
drift_ignore = ["/srv/cache/**"]
[[machines.web.provision]]
shell = "mkdir -p /srv/app /srv/cache && echo {tag} > /srv/app/conf && echo keep > /srv/app/keep"
# Provisioning that changes more paths than one command line holds, and deletes one.
[machines.big]
box = "bb"
[[machines.big.provision]]
shell = "mkdir -p /srv/many && cd /srv/many && i=0 && while [ $i -lt 2000 ]; do echo $i > provisioned-file-with-a-long-name-to-fill-the-argument-list-$i; i=$((i+1)); done && rm -f /etc/group"
"#
    );
    let p = Project::new(&text);
    p.envrig(&["up"]).ok();
    assert_eq!(drift_of(&p, "web"), vec![], "a fresh machine has no drift");
    assert_eq!(
        drift_of(&p, "big"),
        vec![],
        "nor one with many provisioned paths"
    );
    p.envrig(&[
        "exec",
        "big",
        "--",
        "sh",
        "-c",
        "echo by-hand > /srv/many/provisioned-file-with-a-long-name-to-fill-the-argument-list-7",
    ])
    .ok();
    assert_eq!(
        drift_of(&p, "big"),
        vec![(
            "changed".to_string(),
            "/srv/many/provisioned-file-with-a-long-name-to-fill-the-argument-list-7".to_string()
        )]
    );
    let r = p.envrig(&["drift", "web", "--exit-code"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("no drift"), "{}", r.stderr);

    // One file added, one changed (written by provisioning), one deleted (from the image);
    // and writes to volatile and ignored paths.
    p.envrig(&[
        "exec",
        "web",
        "--",
        "sh",
        "-c",
        "echo new > /srv/new && echo changed-by-hand-longer > /srv/app/conf && rm /etc/group \
         && echo x > /tmp/t && mkdir -p /var/log /var/cache && echo x > /var/log/l \
         && echo x > /var/cache/c && echo x > /srv/cache/ignored",
    ])
    .ok();
    assert_eq!(
        drift_of(&p, "web"),
        vec![
            ("added".to_string(), "/srv/new".to_string()),
            ("changed".to_string(), "/srv/app/conf".to_string()),
            ("deleted".to_string(), "/etc/group".to_string()),
        ]
    );
    let r = p.envrig(&["drift", "web", "--exit-code"]);
    assert_eq!(r.code, 3, "{} {}", r.stdout, r.stderr);
    assert!(r.stdout.contains("A /srv/new"), "{}", r.stdout);
    let r = p.envrig(&["drift", "web"]);
    assert_eq!(r.code, 0, "without --exit-code drift is not an error");

    // A provisioned file deleted by hand is drift too; `provision` takes a new baseline.
    p.envrig(&["exec", "web", "--", "rm", "/srv/app/keep"]).ok();
    assert!(drift_of(&p, "web").contains(&("deleted".to_string(), "/srv/app/keep".to_string())));
    p.envrig(&["provision", "--force"]).ok();
    assert_eq!(
        drift_of(&p, "web"),
        vec![],
        "provisioned again: the new baseline"
    );

    // A halted machine has no drift to read.
    p.envrig(&["halt"]).ok();
    let r = p.envrig(&["drift", "web"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("web"), "{}", r.stderr);
}

/// (generation, state) of every container of `machine` in project `p`, by generation.
/// `machine`'s containers: `(holder hash or "-", generation or "-", state)`.
fn containers(p: &Project, machine: &str) -> Vec<(String, String, String)> {
    let folder = p.path().canonicalize().unwrap();
    let out = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=dev.envrig.folder={}", folder.display()),
        "--filter",
        &format!("label=dev.envrig.machine={machine}"),
        "--format",
        "{{or (.Label \"dev.envrig.holder\") \"-\"}} {{or (.Label \"dev.envrig.generation\") \"-\"}} {{.State}}",
    ])
    .ok();
    out.stdout
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_string(), f[1].to_string(), f[2].to_string())
        })
        .collect()
}

/// The states of `machine`'s network holders (the containers that keep its host ports).
fn holders(p: &Project, machine: &str) -> Vec<String> {
    containers(p, machine)
        .into_iter()
        .filter(|(h, _, _)| h != "-")
        .map(|(_, _, state)| state)
        .collect()
}

fn generations(p: &Project, machine: &str) -> Vec<(u32, String)> {
    let mut v: Vec<(u32, String)> = containers(p, machine)
        .into_iter()
        .filter(|(h, _, _)| h == "-")
        .map(|(_, generation, state)| (generation.parse().unwrap(), state))
        .collect();
    v.sort();
    v
}

/// Ids of project `p`'s containers (holders too) that have the label condition `label`.
fn ids(p: &Project, label: &str) -> Vec<String> {
    let folder = p.path().canonicalize().unwrap();
    docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=dev.envrig.folder={}", folder.display()),
        "--filter",
        &format!("label={label}"),
    ])
    .ok()
    .stdout
    .lines()
    .map(str::to_string)
    .collect()
}

/// `destroy -f` leaves no container of `machine`, holder or generation.
fn destroy_leaves_nothing(p: &Project, machine: &str) {
    p.envrig(&["destroy", "-f"]).ok();
    let left = containers(p, machine);
    assert!(left.is_empty(), "{left:?}");
}

fn web_envfile(tag: &str, port: u16, version: &str, immutable: bool) -> String {
    format!(
        r#"[project]
name = "gens"
immutable = {immutable}
keep = 2
[boxes.bb]
docker = "{TEST_IMAGE}"
[machines.web]
box = "bb"
command = ["sh", "-c", "mkdir -p /www; exec httpd -f -p 80 -h /www"]
ports = ["127.0.0.1:{port}:80"]
[machines.web.ready]
command = "wget -qO- http://127.0.0.1/ | grep -q {version}"
timeout = "20s"
[[machines.web.provision]]
name = "page"
shell = "mkdir -p /www && echo {version}-{tag} > /www/index.html"
"#
    )
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn generations_switch_roll_back_and_are_kept_to_keep() {
    e2e();
    let tag = unique("gen");
    let port = common::free_port();
    let p = Project::new(&web_envfile(&tag, port, "v1", true));
    p.envrig(&["up"]).ok();
    assert_eq!(http_get(port), format!("v1-{tag}"));
    assert_eq!(generations(&p, "web"), [(1, "running".to_string())]);
    // The host port is held by the machine's network holder, which outlives generations.
    assert_eq!(holders(&p, "web"), ["running"]);
    let st = p.envrig(&["status", "--json"]).ok().json();
    assert_eq!(
        st["machines"][0]["ports"][0],
        format!("127.0.0.1:{port}->80/tcp"),
        "a generation shows its holder's ports: {st}"
    );

    // A changed step: generation 2 is built beside 1, then takes the port.
    p.write(&web_envfile(&tag, port, "v2", true));
    let r = p.envrig(&["up"]).ok();
    assert!(
        r.stderr
            .contains("out of date (step `page` changed): generation 2"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("beside generation 1"), "{}", r.stderr);
    assert!(
        r.stderr.contains("switched to generation 2"),
        "{}",
        r.stderr
    );
    assert_eq!(http_get(port), format!("v2-{tag}"));
    assert_eq!(
        generations(&p, "web"),
        [(1, "exited".to_string()), (2, "running".to_string())]
    );
    assert_eq!(holders(&p, "web"), ["running"], "one holder for both");
    let st = p.envrig(&["status", "--json"]).ok().json();
    assert_eq!(st["machines"][0]["generation"], 2, "{st}");
    // A second up changes nothing.
    let r = p.envrig(&["up"]).ok();
    assert!(!r.stderr.contains("generation"), "{}", r.stderr);

    // Rollback: generation 1 answers on the same port again.
    let r = p.envrig(&["rollback"]).ok();
    assert!(r.stderr.contains("generation 2 -> 1"), "{}", r.stderr);
    assert_eq!(http_get(port), format!("v1-{tag}"));
    assert_eq!(generations(&p, "web"), [(1, "running".to_string())]);
    let r = p.envrig(&["rollback"]);
    assert_eq!(r.code, 2, "nothing older to roll back to: {}", r.stderr);

    // Three more versions with keep = 2: exactly two generations remain.
    for v in ["v3", "v4", "v5"] {
        p.write(&web_envfile(&tag, port, v, true));
        p.envrig(&["up"]).ok();
        assert_eq!(http_get(port), format!("{v}-{tag}"));
    }
    let gens = generations(&p, "web");
    assert_eq!(gens.len(), 2, "{gens:?}");
    assert_eq!(gens[1].1, "running");
    assert_eq!(gens[0].1, "exited");

    // `halt` frees the host port (the holder stops with the last running generation);
    // `up` publishes it again.
    p.envrig(&["halt"]).ok();
    assert_eq!(holders(&p, "web"), ["exited"]);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port {port} still answers after halt"
    );
    p.envrig(&["up"]).ok();
    assert_eq!(http_get(port), format!("v5-{tag}"));

    destroy_leaves_nothing(&p, "web");
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn a_network_holder_removed_by_hand_makes_the_machine_dead_and_up_mends_it() {
    e2e();
    let tag = unique("hold");
    let port = common::free_port();
    let p = Project::new(&web_envfile(&tag, port, "v1", true));
    p.envrig(&["up"]).ok();
    assert_eq!(http_get(port), format!("v1-{tag}"));
    let holder = ids(&p, "dev.envrig.holder");
    assert_eq!(holder.len(), 1, "{holder:?}");
    docker(&["rm", "-f", &holder[0]]).ok();

    // The generation lost its ports and names with it: the engine's truth is "dead".
    let st = p.envrig(&["status", "--json"]).ok().json();
    assert_eq!(st["machines"][0]["state"], "dead", "{st}");
    // `up` replaces it; the new generation has a new holder and serves on the port.
    let r = p.envrig(&["up"]).ok();
    assert!(r.stderr.contains("dead"), "{}", r.stderr);
    assert_eq!(http_get(port), format!("v1-{tag}"));
    assert_eq!(holders(&p, "web"), ["running"]);
    destroy_leaves_nothing(&p, "web");
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn a_generation_stopped_behind_its_holder_starts_and_ports_move_off_holders() {
    e2e();
    let tag = unique("behind");
    let port = common::free_port();
    let p = Project::new(&web_envfile(&tag, port, "v1", true));
    p.envrig(&["up"]).ok();
    // The generation stops by itself (here: by hand); its holder still has the port.
    let gen1 = containers(&p, "web");
    assert_eq!(gen1.len(), 2, "{gen1:?}");
    let id = ids(&p, "dev.envrig.generation=1");
    docker(&["stop", "-t", "1", &id[0]]).ok();
    assert_eq!(holders(&p, "web"), ["running"]);
    // `up` starts it again: the port is its own, not busy.
    p.envrig(&["up"]).ok();
    assert_eq!(http_get(port), format!("v1-{tag}"));

    // No longer immutable: `--recreate` makes a generation that publishes the port itself,
    // so the holder that had it is stopped first.
    p.write(&web_envfile(&tag, port, "v2", false));
    p.envrig(&["up", "--recreate"]).ok();
    assert_eq!(http_get(port), format!("v2-{tag}"));
    assert_eq!(holders(&p, "web"), ["exited"]);
    destroy_leaves_nothing(&p, "web");
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn without_immutable_up_says_why_and_recreate_builds_a_generation() {
    e2e();
    let tag = unique("mut");
    let port = common::free_port();
    let p = Project::new(&web_envfile(&tag, port, "v1", false));
    p.envrig(&["up"]).ok();
    p.write(&web_envfile(&tag, port, "v2", false));
    let r = p.envrig(&["up", "--no-provision"]).ok();
    assert!(
        r.stderr.contains("out of date (step `page` changed)") && r.stderr.contains("--recreate"),
        "{}",
        r.stderr
    );
    assert_eq!(generations(&p, "web"), [(1, "running".to_string())]);
    let r = p.envrig(&["up", "--recreate"]).ok();
    assert!(
        r.stderr.contains("switched to generation 2"),
        "{}",
        r.stderr
    );
    assert_eq!(http_get(port), format!("v2-{tag}"));
    assert_eq!(
        generations(&p, "web"),
        [(1, "exited".to_string()), (2, "running".to_string())]
    );
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn gc_removes_unreferenced_layers_and_keeps_what_a_lock_or_machine_uses() {
    e2e();
    let home = tempfile::tempdir().unwrap();
    let run = |p: &Project, args: &[&str]| {
        common::envrig_home_env(
            p.path(),
            home.path(),
            &[("ENVRIG_GC_LAYER_GRACE", "0")],
            args,
        )
        .ok()
    };
    let text = |tag: &str| {
        format!(
            "[project]\nname = \"gclayers\"\n[boxes.bb]\ndocker = \"{TEST_IMAGE}\"\n[machines.web]\nbox = \"bb\"\n[[machines.web.provision]]\nshell = \"echo {tag} > /x\"\n"
        )
    };
    let (ta, tb, tc) = (unique("gca"), unique("gcb"), unique("gcc"));
    let (a, b, c) = (
        Project::new(&text(&ta)),
        Project::new(&text(&tb)),
        Project::new(&text(&tc)),
    );
    let mut layers = Vec::new();
    for p in [&a, &b, &c] {
        run(p, &["up"]);
        layers.push(Layer(format!("envrig-baked-{}", fingerprint(p, "web"))));
    }
    // a keeps running; b is destroyed but its Envfile.lock stays; c is gone with its lock.
    run(&b, &["destroy", "-f"]);
    run(&c, &["destroy", "-f"]);
    std::fs::remove_file(c.path().join("Envfile.lock")).unwrap();
    let report = run(&a, &["gc", "--json"]).json();
    let removed: Vec<String> = report["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["resource"].as_str().unwrap().to_string())
        .collect();
    let exists = |l: &Layer| docker(&["image", "inspect", &l.0]).code == 0;
    assert!(
        removed.contains(&format!("layer {}", layers[2].0)),
        "{report}"
    );
    assert!(!exists(&layers[2]), "c's layer is gone");
    assert!(exists(&layers[0]), "a's machine uses its layer");
    assert!(exists(&layers[1]), "b's lock pins its layer");
    assert!(
        !removed
            .iter()
            .any(|r| r.contains(&layers[0].0) || r.contains(&layers[1].0))
    );
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn gc_removes_generations_beyond_keep() {
    e2e();
    let tag = unique("gcgen");
    let port = common::free_port();
    let with_keep = |v: &str, keep: u32| {
        web_envfile(&tag, port, v, true).replace("keep = 2", &format!("keep = {keep}"))
    };
    let p = Project::new(&with_keep("v1", 3));
    for v in ["v1", "v2", "v3"] {
        p.write(&with_keep(v, 3));
        p.envrig(&["up"]).ok();
    }
    assert_eq!(generations(&p, "web").len(), 3, "keep = 3");
    // The Envfile now keeps one: gc removes the two stopped generations.
    p.write(&with_keep("v3", 1));
    let report = p.envrig(&["gc", "--json"]).ok().json();
    let removed: Vec<&str> = report["removed"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["folder"] == p.path().canonicalize().unwrap().to_str().unwrap())
        .map(|i| i["reason"].as_str().unwrap())
        .collect();
    assert_eq!(removed.len(), 2, "{report}");
    assert!(
        removed.iter().all(|r| r.contains("older than the 1 kept")),
        "{removed:?}"
    );
    assert_eq!(generations(&p, "web"), [(3, "running".to_string())]);
    assert_eq!(http_get(port), format!("v3-{tag}"));
}

/// A machine without an init system whose server an `always` step starts; its readiness
/// check names the version, so each generation has its own.
fn served_by_always_step(tag: &str, port: u16, version: &str) -> String {
    format!(
        r#"[project]
name = "rb"
immutable = true
keep = 2
[boxes.bb]
docker = "{TEST_IMAGE}"
[machines.web]
box = "bb"
command = ["sleep", "1000000"]
ports = ["127.0.0.1:{port}:80"]
[machines.web.ready]
command = "wget -qO- http://127.0.0.1/ | grep -q {version}"
timeout = "5s"
[[machines.web.provision]]
name = "page"
shell = "mkdir -p /www && echo {version}-{tag} > /www/index.html"
[[machines.web.provision]]
name = "serve"
run = "always"
shell = "httpd -p 80 -h /www"
"#
    )
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn rollback_starts_the_generation_as_it_was_made_and_checks_it() {
    e2e();
    let tag = unique("rb");
    let port = common::free_port();
    let p = Project::new(&served_by_always_step(&tag, port, "v1"));
    p.envrig(&["up"]).ok();
    assert_eq!(http_get(port), format!("v1-{tag}"));
    p.write(&served_by_always_step(&tag, port, "v2"));
    p.envrig(&["up"]).ok();
    assert_eq!(http_get(port), format!("v2-{tag}"));

    // Generation 1 is started with its own `always` step and checked with its own readiness
    // check (the Envfile's names v2).
    let r = p.envrig(&["rollback"]).ok();
    assert!(r.stderr.contains("running step `serve`"), "{}", r.stderr);
    assert!(r.stderr.contains("ready after"), "{}", r.stderr);
    assert_eq!(http_get(port), format!("v1-{tag}"));

    // Back to v2 (a new generation 2), then spoil generation 1 while it is stopped: the rollback
    // fails its readiness check, says so and what to do, and generation 2 serves again.
    p.envrig(&["up"]).ok();
    assert_eq!(http_get(port), format!("v2-{tag}"));
    let gens = generations(&p, "web");
    assert_eq!(
        gens,
        [(1, "exited".to_string()), (2, "running".to_string())],
        "{gens:?}"
    );
    let first = ids(&p, "dev.envrig.generation=1");
    assert_eq!(first.len(), 1, "{first:?}");
    let spoiled = tempfile::tempdir().unwrap();
    std::fs::write(spoiled.path().join("index.html"), "broken\n").unwrap();
    docker(&[
        "cp",
        spoiled.path().join("index.html").to_str().unwrap(),
        &format!("{}:/www/index.html", first[0]),
    ])
    .ok();
    let r = p.envrig(&["rollback"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("is not ready"), "{}", r.stderr);
    assert!(r.stderr.contains("generation 2 runs again"), "{}", r.stderr);
    assert!(r.stderr.contains("envrig rollback web"), "{}", r.stderr);
    assert_eq!(http_get(port), format!("v2-{tag}"));
    destroy_leaves_nothing(&p, "web");
}
