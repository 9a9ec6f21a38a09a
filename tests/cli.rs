//! The real binary in a temp folder: exit codes, stdout and stderr, and the JSON schemas.
//! These need no engine, except where a test points envrig at a missing one on purpose.

mod common;

use common::{Project, envrig_in};

const VALID: &str = r#"
[project]
name = "cli-test"

[boxes.bb]
docker = "envrig-test/busybox:latest"

[machines.web]
box = "bb"
"#;

#[test]
fn version_prints_name_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let r = envrig_in(dir.path(), &["--version"]).ok();
    assert_eq!(
        r.stdout.trim(),
        format!("envrig {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn validate_prints_ok_for_a_valid_envfile() {
    let p = Project::new(VALID);
    let r = p.envrig(&["validate"]).ok();
    assert_eq!(r.stdout, "ok\n");
    assert_eq!(r.stderr, "");
}

#[test]
fn validate_reports_every_error_with_position_and_exits_2() {
    let p = Project::new(
        "[projct]\nname = \"x\"\n[boxes.bb]\ndocker = \"img\"\n[machines.web]\nbox = \"bb\"\nprots = [\"80:80\"]\n",
    );
    let r = p.envrig(&["validate"]);
    assert_eq!(r.code, 2);
    assert_eq!(r.stdout, "");
    insta::assert_snapshot!(r.stderr, @r#"
    error: `projct`: unknown key `projct` at the top level
     --> Envfile:1:2
      |
    1 | [projct]
      |  ^^^^^^
      |
      = help: did you mean `project`?

    error: `machines.web.prots`: unknown key `prots` in `machines.web`
     --> Envfile:7:1
      |
    7 | prots = ["80:80"]
      | ^^^^^
      |
      = help: did you mean `ports`?

    error: Envfile has 2 errors
    "#);
}

#[test]
fn validate_json_lists_diagnostics() {
    let p = Project::new(
        "[boxes.bb]\ndocker = \"img\"\n[machines.web]\nbox = \"bb\"\nmemory = \"lots\"\n",
    );
    let r = p.envrig(&["validate", "--json"]);
    assert_eq!(r.code, 2);
    let v = r.json();
    assert_eq!(v["schema"], "envrig.validate/1");
    assert_eq!(v["ok"], false);
    let d = &v["diagnostics"][0];
    assert_eq!(d["severity"], "error");
    assert_eq!(d["key"], "machines.web.memory");
    assert_eq!(
        (d["line"].as_u64(), d["column"].as_u64()),
        (Some(5), Some(10))
    );
    assert_eq!(d["file"], "Envfile");
}

#[test]
fn a_command_in_a_subfolder_finds_the_envfile_above() {
    let p = Project::new(VALID);
    let sub = p.path().join("a/b");
    std::fs::create_dir_all(&sub).unwrap();
    assert_eq!(envrig_in(&sub, &["validate"]).ok().stdout, "ok\n");
    // -C and -f come before the command.
    let other = tempfile::tempdir().unwrap();
    let dir = p.path().to_str().unwrap();
    assert_eq!(
        envrig_in(other.path(), &["-C", dir, "validate"])
            .ok()
            .stdout,
        "ok\n"
    );
    let file = p.path().join("Envfile");
    assert_eq!(
        envrig_in(other.path(), &["-f", file.to_str().unwrap(), "validate"])
            .ok()
            .stdout,
        "ok\n"
    );
}

#[test]
fn no_envfile_is_a_usage_error_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let r = envrig_in(dir.path(), &["status"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("no Envfile in"), "{}", r.stderr);
    assert!(
        r.stderr.contains("hint: `envrig init` writes one"),
        "{}",
        r.stderr
    );
}

#[test]
fn init_writes_a_valid_envfile_and_never_overwrites_silently() {
    let dir = tempfile::tempdir().unwrap();
    let r = envrig_in(dir.path(), &["init"]).ok();
    assert!(
        r.stderr.contains("wrote Envfile from the `basic` template"),
        "{}",
        r.stderr
    );
    let text = std::fs::read_to_string(dir.path().join("Envfile")).unwrap();
    assert!(
        text.contains("immutable = true"),
        "init writes immutable = true for new projects"
    );
    envrig_in(dir.path(), &["validate"]).ok();

    std::fs::write(dir.path().join("Envfile"), "# mine\n").unwrap();
    let r = envrig_in(dir.path(), &["init"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("already exists"), "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("Envfile")).unwrap(),
        "# mine\n",
        "nothing is lost"
    );
    envrig_in(dir.path(), &["init", "--template", "web-db", "--force"]).ok();
    envrig_in(dir.path(), &["validate"]).ok();
}

#[test]
fn init_lists_templates_and_rejects_unknown_ones() {
    let dir = tempfile::tempdir().unwrap();
    let r = envrig_in(dir.path(), &["init", "--template", "list"]).ok();
    for name in ["basic", "web-db", "vm"] {
        assert!(r.stdout.contains(name), "{}", r.stdout);
    }
    let r = envrig_in(dir.path(), &["init", "--template", "web-bd"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("did you mean `web-db`?"), "{}", r.stderr);
    assert!(!dir.path().join("Envfile").exists());
}

#[test]
fn usage_errors_exit_2() {
    let p = Project::new(VALID);
    assert_eq!(p.envrig(&["frobnicate"]).code, 2);
    let r = p.envrig(&["exec", "web", "ls"]);
    assert_eq!(
        r.code, 2,
        "exec needs `--` before the command: {}",
        r.stderr
    );
    let r = p.envrig(&["up", "wbe"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("no machine named `wbe`"), "{}", r.stderr);
    assert!(r.stderr.contains("did you mean `web`?"), "{}", r.stderr);
    let r = p.envrig(&["--provider", "vmware", "status"]);
    assert_eq!(r.code, 2);
}

#[test]
fn an_unreachable_engine_fails_with_exit_1_and_a_hint() {
    let p = Project::new(VALID);
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_envrig"))
        .arg("status")
        .current_dir(p.path())
        .env("DOCKER_HOST", "unix:///nonexistent/envrig-test.sock")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("docker engine is not reachable"),
        "{stderr}"
    );
    assert!(stderr.contains("hint:"), "{stderr}");
}

#[test]
fn completions_are_generated() {
    let dir = tempfile::tempdir().unwrap();
    let r = envrig_in(dir.path(), &["completions", "bash"]).ok();
    assert!(r.stdout.contains("envrig"), "{}", r.stdout);
}

#[test]
fn a_dependency_cycle_is_rejected_by_validate() {
    let p = Project::new(
        "[boxes.bb]\ndocker = \"img\"\n[defaults]\nbox = \"bb\"\n[machines.a]\ndepends_on = [\"b\"]\n[machines.b]\ndepends_on = [\"a\"]\n",
    );
    let r = p.envrig(&["validate"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("dependency cycle: a -> b -> a"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_ttl_of_10000_years_is_an_envfile_error_not_a_panic() {
    let p = Project::new(&format!("{VALID}ttl = \"10000y\"\n"));
    let r = p.envrig(&["validate"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("`machines.web.ttl`") && r.stderr.contains("at most 100 years"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("--> Envfile:10:7"), "{}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    // The same bound on the command line.
    let r = p.envrig(&["up", "--ttl", "10000y"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("at most 100 years"), "{}", r.stderr);
    // 100 years is still a duration.
    p.write(&format!("{VALID}ttl = \"100y\"\n"));
    p.envrig(&["validate"]).ok();
}

#[test]
fn a_readiness_timeout_of_10000_years_is_an_envfile_error() {
    let p = Project::new(&format!(
        "{VALID}[machines.web.ready]\ncommand = \"true\"\ntimeout = \"10000y\"\ninterval = \"584942417355y\"\n"
    ));
    let r = p.envrig(&["validate"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("`machines.web.ready.timeout`")
            && r.stderr.contains("--> Envfile:12:11")
            && r.stderr.contains("at most 100 years"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("`machines.web.ready.interval`"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_lock_with_a_multibyte_character_in_a_fingerprint_is_exit_2() {
    let mut p = Project::new(VALID);
    p.destroy_on_drop = false;
    let home = tempfile::tempdir().unwrap();
    // Byte 12 falls inside `é`: a byte slice there panics.
    let fp = format!("{}é{}", "a".repeat(11), "b".repeat(51));
    std::fs::write(
        p.path().join("Envfile.lock"),
        format!(
            "version = 1\n[boxes.bb.docker]\nid = \"sha256:{}\"\n[machines.web]\nprovider = \"docker\"\nbox = \"bb\"\nfingerprint = \"{fp}\"\n",
            "0".repeat(64)
        ),
    )
    .unwrap();
    // No engine is needed: the lock is read before one is asked anything.
    let r = common::envrig_home_env(
        p.path(),
        home.path(),
        &[("DOCKER_HOST", "unix:///nonexistent/envrig-test.sock")],
        &["up"],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("Envfile.lock is not a lock file envrig can read")
            && r.stderr.contains("machine `web` has fingerprint")
            && r.stderr.contains("not 64 hex digits")
            && r.stderr.contains("`envrig lock` writes it anew"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
}

/// Runs envrig with its endpoints in `engines` (no engine is asked).
fn with_engines(dir: &std::path::Path, engines: &std::path::Path, args: &[&str]) -> common::Run {
    common::envrig_home_env(
        dir,
        &dir.join("home"),
        &[("ENVRIG_ENGINES", engines.to_str().unwrap())],
        args,
    )
}

#[test]
fn engine_endpoints_are_kept_outside_the_envfile_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("engines.toml");
    let e = |args: &[&str]| with_engines(dir.path(), &file, args);
    e(&[
        "engine",
        "add",
        "ci-1",
        "tcp://198.18.200.11:2375",
        "--label",
        "gpu=yes",
    ])
    .ok();
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("[engines.ci-1]") && text.contains("provider = \"docker\""),
        "{text}"
    );
    assert!(text.contains("gpu = \"yes\""), "{text}");
    // The same name again: refused unless --force.
    let again = e(&["engine", "add", "ci-1", "tcp://198.18.200.12:2375"]);
    assert_eq!(again.code, 2, "{}", again.stderr);
    assert!(again.stderr.contains("--force"), "{}", again.stderr);
    e(&[
        "engine",
        "add",
        "ci-1",
        "tcp://198.18.200.12:2375",
        "--force",
    ])
    .ok();
    assert!(
        std::fs::read_to_string(&file)
            .unwrap()
            .contains("198.18.200.12")
    );
    // No scheme, a scheme no provider serves, a bad name, a bad label.
    for (args, says) in [
        (
            vec!["engine", "add", "x", "198.18.200.11:2375"],
            "needs a scheme",
        ),
        (
            vec!["engine", "add", "x", "gopher://h"],
            "no provider here serves",
        ),
        (vec!["engine", "add", "X", "tcp://h:1"], "no engine name"),
        (
            vec!["engine", "add", "x", "tcp://h:1", "--label", "novalue"],
            "KEY=VALUE",
        ),
    ] {
        let r = e(&args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(says), "{args:?}: {}", r.stderr);
    }
    // An engine nobody listens on: check says so and exits 1; rm of it is allowed.
    e(&["engine", "add", "gone", "tcp://127.0.0.1:9"]).ok();
    let check = e(&["engine", "check", "gone", "--json"]);
    assert_eq!(check.code, 1, "{}", check.stderr);
    let j = check.json();
    assert_eq!(j["engines"][0]["reachable"], false, "{j}");
    assert!(j["engines"][0]["reason"].is_string(), "{j}");
    e(&["engine", "rm", "gone"]).ok();
    assert!(!std::fs::read_to_string(&file).unwrap().contains("gone"));
    let rm = e(&["engine", "rm", "gone"]);
    assert_eq!(rm.code, 2, "{}", rm.stderr);
    // A broken file is an error naming it, for every command.
    std::fs::write(&file, "[engines.a]\nuri = 1\n").unwrap();
    let r = e(&["engine", "ls"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("engines.toml"), "{}", r.stderr);
}
