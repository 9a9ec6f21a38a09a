//! Provisioning, readiness and multi-machine orchestration, end to end on the real Docker
//! engine (ignored unless run by `scripts/test.sh`; a missing engine fails).

mod common;

use common::{Project, TEST_IMAGE, containers, e2e, unique};

fn head(project: &str) -> String {
    format!(
        "[project]\nname = \"{project}\"\nbake = false\n\n[boxes.bb]\ndocker = \"{TEST_IMAGE}\"\n\n[defaults]\nbox = \"bb\"\nmemory = \"64MiB\"\n\n"
    )
}

/// The position of the first line containing `needle` in `text`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no `{needle}` in:\n{text}"))
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn three_machines_come_up_in_dependency_order_and_talk_by_name() {
    e2e();
    let secret = unique("secret");
    let text = format!(
        "{}
[machines.web]
depends_on = [\"app\"]
[machines.web.ready]
command = \"wget -qO- http://app/got | grep -q {secret}\"
timeout = \"30s\"
interval = \"200ms\"

[machines.app]
depends_on = [\"db\"]
hostname = \"application\"
[[machines.app.provision]]
name = \"fetch\"
shell = \"mkdir -p /www && wget -qO- http://db/value > /www/got && cat /www/got && httpd -p 80 -h /www\"

[machines.db]
env = {{ SECRET = \"{secret}\" }}
[[machines.db.provision]]
name = \"serve\"
shell = \"mkdir -p /www && echo $SECRET > /www/value && httpd -p 80 -h /www\"
[machines.db.ready]
command = \"wget -qO- http://127.0.0.1/value\"
",
        head(&unique("trio"))
    );
    let p = Project::new(&text);
    let r = p.envrig(&["up"]).ok();
    // db is ready before app starts; app is provisioned before web starts.
    assert!(
        line_of(&r.stderr, "[db] ready after") < line_of(&r.stderr, "[app] creating"),
        "{}",
        r.stderr
    );
    assert!(
        line_of(&r.stderr, "[app] step `fetch` done") < line_of(&r.stderr, "[web] creating"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(&format!("[app] {secret}")),
        "step output streams, prefixed: {}",
        r.stderr
    );
    assert!(r.stderr.contains("[web] ready after"), "{}", r.stderr);
    assert_eq!(
        p.envrig(&["exec", "app", "--", "cat", "/www/got"])
            .ok()
            .stdout,
        format!("{secret}\n")
    );
    // Machines reach each other by hostname too.
    p.envrig(&[
        "exec",
        "web",
        "--",
        "wget",
        "-qO-",
        "http://application/got",
    ])
    .ok();

    // destroy goes in reverse order: web before app before db.
    let r = p.envrig(&["destroy", "-f"]).ok();
    let (w, a, d) = (
        line_of(&r.stderr, "[web] removing"),
        line_of(&r.stderr, "[app] removing"),
        line_of(&r.stderr, "[db] removing"),
    );
    assert!(w < a && a < d, "{}", r.stderr);
    assert!(
        r.stderr.contains("network"),
        "the private network goes too: {}",
        r.stderr
    );
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn once_steps_run_once_until_they_change_and_always_steps_every_time() {
    e2e();
    let text = format!(
        "{}
[machines.one]
[[machines.one.provision]]
script = \"setup.sh\"
args = [\"a b\", \"\"]
env = {{ GREETING = \"hi\" }}

[[machines.one.provision]]
name = \"tick\"
shell = \"echo tick >> /root/always\"
run = \"always\"

[[machines.one.provision]]
name = \"debug\"
shell = \"echo debug >> /root/never\"
run = \"never\"
",
        head(&unique("once"))
    );
    let p = Project::new(&text);
    // CRLF line endings and no shebang: normalised, run with sh.
    std::fs::write(
        p.path().join("setup.sh"),
        "echo \"$GREETING [$1] [$2] $#\" >> /root/once\r\n",
    )
    .unwrap();
    let count = |file: &str| -> usize {
        let r = p
            .envrig(&[
                "exec",
                "one",
                "--",
                "sh",
                "-c",
                &format!("cat /root/{file} 2>/dev/null || true"),
            ])
            .ok();
        r.stdout.lines().count()
    };
    p.envrig(&["up"]).ok();
    assert_eq!(
        p.envrig(&["exec", "one", "--", "cat", "/root/once"])
            .ok()
            .stdout,
        "hi [a b] [] 2\n"
    );
    assert_eq!((count("once"), count("always"), count("never")), (1, 1, 0));

    let r = p.envrig(&["up"]).ok();
    assert!(
        !r.stderr.contains("setup.sh"),
        "a once step does not run again: {}",
        r.stderr
    );
    assert_eq!((count("once"), count("always")), (1, 2));

    // The record lives in the machine too: a lost .envrig/ re-runs nothing.
    std::fs::remove_dir_all(p.path().join(".envrig")).unwrap();
    p.envrig(&["up"]).ok();
    assert_eq!((count("once"), count("always")), (1, 3));

    // A changed script runs again, and envrig says why.
    std::fs::write(
        p.path().join("setup.sh"),
        "#!/bin/sh\necho changed >> /root/once\n",
    )
    .unwrap();
    let r = p.envrig(&["up"]).ok();
    assert!(
        r.stderr.contains("script `setup.sh` changed"),
        "{}",
        r.stderr
    );
    assert_eq!((count("once"), count("always")), (2, 4));

    // --force runs every once step again; --step runs just the named one, even `never`.
    let r = p.envrig(&["provision", "--force"]).ok();
    assert!(r.stderr.contains("(--force)"), "{}", r.stderr);
    assert_eq!((count("once"), count("always"), count("never")), (3, 5, 0));
    p.envrig(&["provision", "--step", "debug"]).ok();
    assert_eq!((count("once"), count("always"), count("never")), (3, 5, 1));
    assert_eq!(p.envrig(&["provision", "--step", "nope"]).code, 2);

    // --no-provision runs nothing at all.
    p.envrig(&["up", "--no-provision"]).ok();
    assert_eq!(count("always"), 5);
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn a_failing_step_names_machine_step_and_status_and_others_finish() {
    e2e();
    let text = format!(
        "{}
[machines.bad]
[[machines.bad.provision]]
name = \"breaks\"
shell = \"echo first line; echo the cause >&2; exit 7\"

[machines.after]
depends_on = [\"bad\"]

[machines.fine]
[[machines.fine.provision]]
shell = \"sleep 1; echo fine > /root/ok\"
",
        head(&unique("fail"))
    );
    let p = Project::new(&text);
    let r = p.envrig(&["up"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("`bad`: step `breaks` (#1) failed with exit status 7"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("| the cause"),
        "the last lines of its output: {}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("`after`: not started: its dependency `bad` failed"),
        "{}",
        r.stderr
    );
    // The independent machine finished its work.
    assert_eq!(
        p.envrig(&["exec", "fine", "--", "cat", "/root/ok"])
            .ok()
            .stdout,
        "fine\n"
    );
    // What was created is labelled and visible, and destroy cleans it.
    let st = p.envrig(&["status", "--json"]).ok().json();
    let env = st["env_id"].as_str().unwrap().to_string();
    assert_eq!(
        containers(&format!("dev.envrig.env={env}")).len(),
        2,
        "bad and fine exist, after was never created"
    );
    p.envrig(&["destroy", "-f"]).ok();
    assert!(containers(&format!("dev.envrig.env={env}")).is_empty());
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn a_readiness_timeout_fails_naming_the_machine_and_the_check() {
    e2e();
    let text = format!(
        "{}\n[machines.slow]\n[machines.slow.ready]\ncommand = \"test -f /never\"\ntimeout = \"1s\"\ninterval = \"100ms\"\n",
        head(&unique("ready"))
    );
    let p = Project::new(&text);
    let t0 = std::time::Instant::now();
    let r = p.envrig(&["up"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        t0.elapsed().as_secs() < 15,
        "bounded by the timeout: {:?}",
        t0.elapsed()
    );
    assert!(
        r.stderr.contains(
            "`slow`: not ready after 1s: the check `test -f /never` last exited with status 1"
        ),
        "{}",
        r.stderr
    );
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn a_busy_host_port_is_reported_before_anything_is_created() {
    e2e();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let text = format!(
        "{}\n[machines.a]\n[machines.b]\nports = [\"{port}:80\"]\n",
        head(&unique("busy"))
    );
    let p = Project::new(&text);
    let r = p.envrig(&["up"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains(&format!("127.0.0.1:{port}/tcp (machine `b`)"))
            && r.stderr
                .contains("host ports are already in use; nothing was created"),
        "{}",
        r.stderr
    );
    let folder = p.path().canonicalize().unwrap();
    assert!(
        containers(&format!("dev.envrig.folder={}", folder.display())).is_empty(),
        "nothing was created"
    );
    drop(listener);
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn json_up_emits_events_and_a_summary() {
    e2e();
    let text = format!(
        "{}\n[machines.j]\n[[machines.j.provision]]\nshell = \"echo hello-json\"\n",
        head(&unique("json"))
    );
    let p = Project::new(&text);
    let r = p.envrig(&["up", "--json"]).ok();
    let lines: Vec<serde_json::Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(lines.iter().any(|v| v["schema"] == "envrig.event/1"
        && v["phase"] == "output"
        && v["message"] == "hello-json"
        && v["stream"] == "stdout"));
    assert!(
        lines
            .iter()
            .any(|v| v["phase"] == "create" && v["machine"] == "j")
    );
    let last = lines.last().unwrap();
    assert_eq!(last["schema"], "envrig.up/1");
    assert_eq!(last["machines"][0]["result"], "created");
    assert_eq!(last["machines"][0]["steps_run"], 1);
}
