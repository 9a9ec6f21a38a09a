//! End to end against a real Docker engine, through the real binary. Enabled by
//! ignored unless run by `scripts/test.sh`; then a missing engine FAILS.
//! What exists is checked with the docker CLI, independently of envrig's own code.

mod common;

use std::io::{Read, Write};

use common::{
    Project, TEST_IMAGE, container_state, containers, docker, e2e, networks, unique, volumes,
};

fn envfile(project: &str, machines: &[&str], extra: &str) -> String {
    let mut s = format!(
        "[project]\nname = \"{project}\"\n\n[boxes.bb]\ndocker = \"{TEST_IMAGE}\"\n\n[defaults]\nbox = \"bb\"\nmemory = \"64MiB\"\n\n"
    );
    for m in machines {
        s.push_str(&format!("[machines.{m}]\nenv = {{ WHO = \"{m}\" }}\n\n"));
    }
    s.push_str(extra);
    s
}

fn machine<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["machines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["machine"] == name)
        .unwrap_or_else(|| panic!("no machine {name} in {status}"))
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn two_machines_live_halt_come_back_and_leave_nothing_behind() {
    e2e();
    let p = Project::new(&envfile(&unique("life"), &["db", "web"], ""));
    let up = p.envrig(&["up"]).ok();
    assert!(up.stderr.contains("2 created"), "{}", up.stderr);

    // status --json is right, and agrees with the engine.
    let st = p.envrig(&["status", "--json"]).ok().json();
    assert_eq!(st["schema"], "envrig.status/1");
    let env_id = st["env_id"].as_str().unwrap().to_string();
    let label = format!("dev.envrig.env={env_id}");
    for m in ["db", "web"] {
        let row = machine(&st, m);
        assert_eq!(row["state"], "running");
        assert_eq!(row["provider"], "docker");
        assert_eq!(row["generation"], 1);
        assert_eq!(container_state(row["id"].as_str().unwrap()), "running");
    }
    assert_eq!(containers(&label).len(), 2);

    // exec: the command's stdout, stderr and exit code, and the machine's env.
    let r = p.envrig(&[
        "exec",
        "web",
        "--",
        "sh",
        "-c",
        "echo out $WHO; echo err >&2; exit 3",
    ]);
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (3, "out web\n", "err\n")
    );
    let r = p.envrig(&["ssh", "db", "--", "hostname"]).ok();
    assert_eq!(
        r.stdout, "db\n",
        "ssh with a command and no TTY behaves like exec"
    );

    // A second up is a no-op: same containers, nothing created.
    let ids: Vec<String> = ["db", "web"]
        .iter()
        .map(|m| machine(&st, m)["id"].as_str().unwrap().to_string())
        .collect();
    let again = p.envrig(&["up"]).ok();
    assert!(again.stderr.contains("2 unchanged"), "{}", again.stderr);
    let st2 = p.envrig(&["status", "--json"]).ok().json();
    let ids2: Vec<String> = ["db", "web"]
        .iter()
        .map(|m| machine(&st2, m)["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ids2);

    // halt stops them (quickly, keeping the disk); up starts the same containers again.
    p.envrig(&["exec", "web", "--", "sh", "-c", "echo kept > /root/marker"])
        .ok();
    let t0 = std::time::Instant::now();
    p.envrig(&["halt"]).ok();
    assert!(t0.elapsed().as_secs() < 8, "halt took {:?}", t0.elapsed());
    for id in &ids {
        assert_eq!(container_state(id), "exited");
    }
    let st = p.envrig(&["status", "--json"]).ok().json();
    assert_eq!(machine(&st, "web")["state"], "stopped");
    let r = p.envrig(&["exec", "web", "--", "true"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("machine `web` is stopped"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("envrig up web"), "{}", r.stderr);
    p.envrig(&["up"]).ok();
    assert_eq!(
        p.envrig(&["exec", "web", "--", "cat", "/root/marker"])
            .ok()
            .stdout,
        "kept\n"
    );

    // A container removed by hand is noticed and recreated.
    docker(&["rm", "-f", &ids[1]]).ok();
    let st = p.envrig(&["status", "--json"]).ok().json();
    assert_eq!(machine(&st, "web")["state"], "not-created");
    let r = p.envrig(&["up"]).ok();
    assert!(
        r.stderr.contains("1 created") && r.stderr.contains("1 unchanged"),
        "{}",
        r.stderr
    );
    let st = p.envrig(&["status", "--json"]).ok().json();
    assert_eq!(machine(&st, "web")["state"], "running");
    assert_ne!(machine(&st, "web")["id"].as_str().unwrap(), ids[1]);

    // The state cache is only a cache.
    std::fs::remove_dir_all(p.path().join(".envrig")).unwrap();
    let st = p.envrig(&["status", "--json"]).ok().json();
    assert_eq!(machine(&st, "db")["state"], "running");
    assert_eq!(machine(&st, "db")["id"].as_str().unwrap(), ids[0]);
    assert!(p.envrig(&["up"]).ok().stderr.contains("2 unchanged"));

    // destroy -f leaves no container, network or volume of the environment; twice is fine.
    let r = p.envrig(&["destroy", "-f"]).ok();
    assert!(r.stderr.contains("destroyed"), "{}", r.stderr);
    assert!(containers(&label).is_empty());
    assert!(networks(&label).is_empty());
    assert!(volumes(&label).is_empty());
    let r = p.envrig(&["destroy", "-f"]).ok();
    assert!(r.stderr.contains("nothing to destroy"), "{}", r.stderr);
    let st = p.envrig(&["status", "--json"]).ok().json();
    assert_eq!(machine(&st, "db")["state"], "not-created");
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn two_checkouts_of_one_project_never_touch_each_other() {
    e2e();
    let name = unique("twin");
    let a = Project::new(&envfile(&name, &["app"], ""));
    let b = Project::new(&envfile(&name, &["app"], ""));
    a.envrig(&["up"]).ok();
    b.envrig(&["up"]).ok();
    let (ida, idb) = (a.env_id(), b.env_id());
    assert_ne!(
        ida, idb,
        "same name, different folders: different environments"
    );
    assert_eq!(containers(&format!("dev.envrig.env={ida}")).len(), 1);
    assert_eq!(containers(&format!("dev.envrig.env={idb}")).len(), 1);

    a.envrig(&["destroy", "-f"]).ok();
    assert!(containers(&format!("dev.envrig.env={ida}")).is_empty());
    let st = b.envrig(&["status", "--json"]).ok().json();
    assert_eq!(
        machine(&st, "app")["state"],
        "running",
        "the other checkout is untouched"
    );
    // `ls` sees the survivor, with its folder.
    let ls = b.envrig(&["ls", "--json"]).ok().json();
    assert_eq!(ls["schema"], "envrig.ls/1");
    let envs = ls["environments"].as_array().unwrap();
    let row = envs
        .iter()
        .find(|e| e["env_id"] == idb.as_str())
        .expect("ls lists the environment");
    assert_eq!(row["project"], name.as_str());
    assert_eq!(row["machines"]["app"], "running");
    assert_eq!(row["envfile_exists"], true);
    assert!(!envs.iter().any(|e| e["env_id"] == ida.as_str()));
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn a_missing_image_is_pulled_from_a_registry() {
    e2e();
    let registry =
        std::env::var("ENVRIG_TEST_REGISTRY").unwrap_or_else(|_| "127.0.0.1:5000".into());
    let tag = unique("pull");
    let remote = format!("{registry}/envrig-e2e/busybox:{tag}");
    docker(&["tag", TEST_IMAGE, &remote]).ok();
    let pushed = docker(&["push", &remote]);
    assert_eq!(
        pushed.code, 0,
        "end-to-end tests need the loopback registry (scripts/host-setup.sh): {}",
        pushed.stderr
    );
    docker(&["rmi", &remote]).ok();

    let text = format!(
        "[project]\nname = \"{tag}\"\n[boxes.remote]\ndocker = \"{remote}\"\n[machines.one]\nbox = \"remote\"\n"
    );
    let p = Project::new(&text);
    let r = p.envrig(&["up"]).ok();
    assert!(
        r.stderr.contains(&format!("fetching {remote}")),
        "{}",
        r.stderr
    );
    assert_eq!(
        docker(&["image", "inspect", &remote]).code,
        0,
        "the image was pulled"
    );
    assert_eq!(
        p.envrig(&["exec", "one", "--", "echo", "pulled"])
            .ok()
            .stdout,
        "pulled\n"
    );
    p.envrig(&["destroy", "-f"]).ok();
    let _ = docker(&["rmi", &remote]);
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn changed_settings_make_a_machine_stale_until_reload() {
    e2e();
    let name = unique("stale");
    let p = Project::new(&envfile(&name, &["app"], ""));
    p.envrig(&["up"]).ok();
    p.write(&envfile(&name, &["app"], "").replace("WHO = \"app\"", "WHO = \"changed\""));
    let st = p.envrig(&["status", "--json"]).ok().json();
    assert_eq!(machine(&st, "app")["state"], "stale");
    assert_eq!(machine(&st, "app")["engine_state"], "running");
    let r = p.envrig(&["up"]).ok();
    assert!(
        r.stderr.contains("envrig reload app"),
        "up says how to apply the change: {}",
        r.stderr
    );
    assert_eq!(
        p.envrig(&["exec", "app", "--", "sh", "-c", "echo $WHO"])
            .ok()
            .stdout,
        "app\n",
        "not patched in place"
    );
    p.envrig(&["reload"]).ok();
    assert_eq!(
        p.envrig(&["exec", "app", "--", "sh", "-c", "echo $WHO"])
            .ok()
            .stdout,
        "changed\n"
    );
    let st = p.envrig(&["status", "--json"]).ok().json();
    assert_eq!(machine(&st, "app")["state"], "running");
    // The replacement is a new generation, made before the old one was removed.
    assert_eq!(machine(&st, "app")["generation"], 2);
    assert!(
        machine(&st, "app")["resource_name"]
            .as_str()
            .unwrap()
            .ends_with("-app-2")
    );
    // The previous generation is kept, stopped, for `envrig rollback` (keep = 2).
    let all = containers(&format!(
        "dev.envrig.env={}",
        st["env_id"].as_str().unwrap()
    ));
    assert_eq!(all.len(), 2);
    let running: Vec<&String> = all
        .iter()
        .filter(|id| common::container_state(id) == "running")
        .collect();
    assert_eq!(running.len(), 1);
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn logs_interleave_and_follow_and_cp_moves_200_mb_both_ways() {
    use common::follow::{Following, sha256_of, write_big};
    e2e();
    let p = Project::new(&envfile(&unique("files"), &["db", "web"], ""));
    p.envrig(&["up"]).ok();
    // What a container's main process prints is its log (written here through its fds).
    let say = |m: &str, text: &str, fd: u8| {
        let line = format!("echo {text} > /proc/1/fd/{fd}");
        p.envrig(&["exec", m, "--", "sh", "-c", &line]).ok();
    };
    say("db", "db-first", 1);
    say("web", "web-err", 2);
    let r = p.envrig(&["logs"]).ok();
    let mut lines: Vec<&str> = r.stdout.lines().collect();
    lines.sort();
    assert_eq!(lines, ["[db] db-first", "[web] web-err"], "{}", r.stdout);
    // One machine: its lines as they are; --tail; JSON lines say the stream.
    say("db", "db-second", 1);
    assert_eq!(
        p.envrig(&["logs", "db", "--tail", "1"]).ok().stdout,
        "db-second\n"
    );
    let j = p.envrig(&["--json", "logs", "web"]).ok().stdout;
    let doc: serde_json::Value = serde_json::from_str(j.trim()).unwrap();
    assert_eq!(
        (
            doc["schema"].as_str(),
            doc["machine"].as_str(),
            doc["stream"].as_str(),
            doc["line"].as_str()
        ),
        (
            Some("envrig.log/1"),
            Some("web"),
            Some("stderr"),
            Some("web-err")
        )
    );
    // --since a moment after what is there leaves it out.
    assert_eq!(
        p.envrig(&["logs", "db", "--since", "2099-01-01T00:00:00Z"])
            .ok()
            .stdout,
        ""
    );
    // -f follows both until Ctrl-C, which ends it cleanly.
    let mut f = Following::start(p.path(), &["logs", "-f", "--tail", "0"]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    say("web", "web-live", 1);
    say("db", "db-live", 1);
    let limit = std::time::Duration::from_secs(20);
    assert!(f.wait_for("[web] web-live", limit), "{:?}", f.seen);
    assert!(f.wait_for("[db] db-live", limit), "{:?}", f.seen);
    assert_eq!(f.interrupt(), Some(0));

    // cp: 200 MB in and back out, the same bytes; into a folder under its own name.
    let big = p.path().join("big.bin");
    let sum = write_big(&big, 200_000_000);
    p.envrig(&["cp", "big.bin", "web:/tmp/"]).ok();
    let inside = p
        .envrig(&["exec", "web", "--", "sha256sum", "/tmp/big.bin"])
        .ok()
        .stdout;
    assert_eq!(inside.split_whitespace().next(), Some(sum.as_str()));
    let r = p
        .envrig(&["--json", "cp", "web:/tmp/big.bin", "back.bin"])
        .ok()
        .json();
    assert_eq!(
        (r["schema"].as_str(), r["bytes"].as_u64()),
        (Some("envrig.cp/1"), Some(200_000_000))
    );
    assert_eq!(sha256_of(&p.path().join("back.bin")), sum);
    // A machine that is not running, and a path that is not there, are said as such.
    p.envrig(&["halt", "db"]).ok();
    let r = p.envrig(&["cp", "big.bin", "db:/tmp/"]);
    assert!(
        r.code != 0 && r.stderr.contains("`db` is stopped"),
        "{}",
        r.stderr
    );
    let r = p.envrig(&["cp", "web:/no/such", "x"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("no such file or folder"), "{}", r.stderr);
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn ports_command_and_synced_folders_reach_the_container() {
    e2e();
    let port = common::free_port();
    let host_dir = tempfile::tempdir().unwrap();
    std::fs::write(host_dir.path().join("index.html"), "hello from the host\n").unwrap();
    let ro_dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[machines.www]\nports = [\"127.0.0.1:{port}:8080\"]\ncommand = [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/srv/www\"]\nsynced = [{{ host = \"{}\", guest = \"/srv/www\" }}, {{ host = \"{}\", guest = \"/srv/ro\", mode = \"ro\" }}]\n",
        host_dir.path().display(),
        ro_dir.path().display()
    );
    let p = Project::new(&envfile(&unique("net"), &[], &extra));
    p.envrig(&["up"]).ok();
    let st = p.envrig(&["status", "--json"]).ok().json();
    assert_eq!(
        machine(&st, "www")["ports"][0],
        format!("127.0.0.1:{port}->8080/tcp")
    );

    // The command is the main process: busybox httpd serves the synced folder on the port.
    let mut body = String::new();
    for _ in 0..50 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").unwrap();
            s.read_to_string(&mut body).unwrap();
            if !body.is_empty() {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        body.starts_with("HTTP/1.") && body.contains("hello from the host"),
        "{body}"
    );

    // Synced folders are live both ways; a read-only one refuses writes.
    p.envrig(&[
        "exec",
        "www",
        "--",
        "sh",
        "-c",
        "echo from-guest > /srv/www/back.txt",
    ])
    .ok();
    assert_eq!(
        std::fs::read_to_string(host_dir.path().join("back.txt")).unwrap(),
        "from-guest\n"
    );
    let r = p.envrig(&["exec", "www", "--", "sh", "-c", "echo x > /srv/ro/nope"]);
    assert_ne!(r.code, 0, "a read-only synced folder refuses writes");
    assert!(!ro_dir.path().join("nope").exists());
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn up_of_one_machine_brings_its_dependencies_and_destroy_of_one_keeps_the_rest() {
    e2e();
    let extra = "[machines.web]\ndepends_on = [\"db\"]\n\n[machines.db]\n\n[machines.other]\n";
    let p = Project::new(&envfile(&unique("deps"), &[], extra));
    p.envrig(&["up", "web"]).ok();
    let st = p.envrig(&["status", "--json"]).ok().json();
    assert_eq!(machine(&st, "web")["state"], "running");
    assert_eq!(machine(&st, "db")["state"], "running");
    assert_eq!(machine(&st, "other")["state"], "not-created");

    p.envrig(&["destroy", "db", "-f"]).ok();
    let st = p.envrig(&["status", "--json"]).ok().json();
    assert_eq!(machine(&st, "db")["state"], "not-created");
    assert_eq!(machine(&st, "web")["state"], "running");
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn ls_and_status_print_aligned_tables() {
    e2e();
    let p = Project::new(&envfile(
        &unique("table"),
        &["one"],
        "[machines.one.docker]\ninit = true\n",
    ));
    p.envrig(&["up", "--ttl", "2h"]).ok();
    let ls = p.envrig(&["ls"]).ok().stdout;
    let header = ls.lines().next().unwrap();
    assert!(
        header.starts_with("PROJECT") && header.ends_with("EXPIRES"),
        "{ls}"
    );
    let folder = p.path().canonicalize().unwrap().display().to_string();
    let row = ls
        .lines()
        .find(|l| l.contains(&folder))
        .unwrap_or_else(|| panic!("{ls}"));
    assert!(
        row.contains("one=running") && row.trim_end().ends_with("in 1h"),
        "{row}"
    );
    let st = p.envrig(&["status"]).ok().stdout;
    assert_eq!(
        st.lines()
            .next()
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["MACHINE", "PROVIDER", "ENGINE", "STATE", "PORTS", "AGE"]
    );
    assert!(st.lines().nth(1).unwrap().starts_with("one "), "{st}");
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn up_makes_a_removed_network_again_and_the_machines_find_each_other() {
    e2e();
    // Plain machines, and immutable ones (whose names live on network holders).
    for immutable in [false, true] {
        let p = Project::new(&envfile(
            &unique("netgone"),
            &["a", "b"],
            if immutable {
                "[machines.a.ready]\ncommand = \"true\"\n"
            } else {
                ""
            },
        ));
        if immutable {
            let text = std::fs::read_to_string(p.path().join("Envfile")).unwrap();
            p.write(&text.replacen("[project]\n", "[project]\nimmutable = true\n", 1));
        }
        let label = format!(
            "dev.envrig.folder={}",
            p.path().canonicalize().unwrap().display()
        );
        p.envrig(&["up"]).ok();
        p.envrig(&["halt"]).ok();
        // What `docker network prune` does to a halted environment.
        let nets = networks(&label);
        assert_eq!(nets.len(), 1, "{nets:?}");
        docker(&["network", "rm", &nets[0]]).ok();
        let r = p.envrig(&["up"]).ok();
        assert!(r.stderr.contains("is up"), "{}", r.stderr);
        assert_eq!(networks(&label).len(), 1);
        for (from, to) in [("a", "b"), ("b", "a")] {
            let r = p.envrig(&["exec", from, "--", "ping", "-c1", "-W3", to]);
            assert_eq!(r.code, 0, "immutable={immutable}: {}{}", r.stdout, r.stderr);
        }
        p.envrig(&["destroy", "-f"]).ok();
        assert!(containers(&label).is_empty());
        assert!(networks(&label).is_empty());
    }
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn a_network_the_engine_will_not_remove_is_reported_by_destroy_and_collected_by_gc() {
    e2e();
    let p = Project::new(&envfile(&unique("stuck"), &["a", "b"], ""));
    let label = format!(
        "dev.envrig.folder={}",
        p.path().canonicalize().unwrap().display()
    );
    p.envrig(&["up"]).ok();
    let nets = networks(&label);
    assert_eq!(nets.len(), 1, "{nets:?}");
    // A container that is not envrig's holds an endpoint on the network: Docker refuses to
    // remove it ("has active endpoints"), as after its endpoint leak.
    let stranger = format!("{}-stranger", unique("x"));
    docker(&[
        "run",
        "-d",
        "--name",
        &stranger,
        "--network",
        &nets[0],
        TEST_IMAGE,
        "sleep",
        "600",
    ])
    .ok();
    let r = p.envrig(&["destroy", "-f"]);
    let _ = docker(&["rm", "-f", &stranger]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("every machine of"), "{}", r.stderr);
    assert!(r.stderr.contains("active endpoints"), "{}", r.stderr);
    assert!(r.stderr.contains("envrig gc"), "{}", r.stderr);
    assert!(containers(&label).is_empty());
    assert_eq!(networks(&label).len(), 1, "the network is left");
    // Once nothing holds it, gc removes it: no machine of its environment is left.
    let gc = p.envrig(&["gc", "--json"]).ok().json();
    let removed = gc["removed"].to_string();
    assert!(removed.contains("no machine of it is left"), "{gc}");
    assert!(networks(&label).is_empty());
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn suspend_pauses_a_container_and_resume_brings_it_back() {
    e2e();
    let p = Project::new(&format!(
        "[project]\nname = \"{}\"\n[boxes.bb]\ndocker = \"{TEST_IMAGE}\"\n[machines.one]\nbox = \"bb\"\n",
        unique("susp")
    ));
    p.envrig(&["up"]).ok();
    let id = p.envrig(&["status", "--json"]).ok().json()["machines"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    p.envrig(&["suspend"]).ok();
    assert_eq!(container_state(&id), "paused");
    let st = p.envrig(&["status", "--json"]).ok().json();
    assert_eq!(st["machines"][0]["state"], "suspended", "{st}");
    let e = p.envrig(&["exec", "one", "--", "true"]);
    assert_eq!(e.code, 1, "{}", e.stderr);
    assert!(e.stderr.contains("envrig resume one"), "{}", e.stderr);
    let r = p.envrig(&["resume", "--json"]).ok().json();
    assert_eq!(r["machines"][0], "one", "{r}");
    assert_eq!(container_state(&id), "running");
    p.envrig(&["suspend"]).ok();
    let up = p.envrig(&["up", "--json"]).ok().json();
    assert_eq!(up["machines"][0]["result"], "started", "{up}");
    assert_eq!(container_state(&id), "running");
    p.envrig(&["suspend"]).ok();
    p.envrig(&["halt"]).ok();
    assert_eq!(container_state(&id), "exited");
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn port_gives_the_host_side_of_each_forwarded_port_even_one_the_engine_chose() {
    e2e();
    let (tcp, udp) = (common::free_port(), common::free_port());
    let extra = format!(
        "[machines.www]\nports = [\"127.0.0.1:{tcp}:8080\", \"127.0.0.1:{udp}:53/udp\"]\ncommand = [\"sh\", \"-c\", \"echo served > /index.html; exec httpd -f -p 8080 -h /\"]\n"
    );
    let p = Project::new(&envfile(&unique("port"), &[], &extra));
    p.envrig(&["up"]).ok();
    let all = p.envrig(&["port", "www"]).ok();
    assert_eq!(
        all.stdout,
        format!("53/udp -> 127.0.0.1:{udp}\n8080/tcp -> 127.0.0.1:{tcp}\n")
    );
    assert_eq!(
        p.envrig(&["port", "www", "8080"]).ok().stdout,
        format!("127.0.0.1:{tcp}\n")
    );
    let doc = p.envrig(&["port", "www", "53/udp", "--json"]).ok().json();
    assert_eq!(doc["schema"], "envrig.port/1");
    assert_eq!(doc["ports"][0]["host_port"], udp);
    let r = p.envrig(&["port", "www", "81"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("forwards no port 81/tcp"), "{}", r.stderr);
    p.envrig(&["halt"]).ok();
    let r = p.envrig(&["port", "www"]);
    assert_eq!(
        r.code, 1,
        "a stopped machine forwards nothing: {}",
        r.stderr
    );
    p.envrig(&["destroy", "-f"]).ok();

    // A `run` environment's ports are chosen by the engine: `port` says which.
    let r = p.envrig(&["run", "--keep-on-failure", "--", "false"]);
    let instance = r
        .stderr
        .split("--instance ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no instance in: {}", r.stderr))
        .to_string();
    let line = p
        .envrig(&["--instance", &instance, "port", "www", "8080"])
        .ok()
        .stdout;
    let chosen: u16 = line
        .trim()
        .rsplit_once(':')
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or_else(|| panic!("not ADDRESS:PORT: {line}"));
    assert!(chosen != 0 && chosen != tcp, "{line}");
    assert_eq!(common::http_get(chosen), "served");
    p.envrig(&["--instance", &instance, "destroy", "-f"]).ok();
}
