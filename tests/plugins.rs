//! Providers as plugins, seen from the outside: envrig links no engine library, finds
//! plugins by name, and says why a plugin cannot be used. The plugins here that misbehave
//! are real executables (shell scripts) speaking, or failing to speak, the protocol.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::{Project, Run};

const LIBVIRT_ENVFILE: &str = "[project]\nname = \"plug\"\n[boxes.tiny]\nlibvirt = \"/nonexistent/box\"\n[defaults]\nbox = \"tiny\"\nprovider = \"libvirt\"\n[machines.a]\n";

/// Runs envrig in `dir` with `plugins` searched first for plugins.
fn envrig_with_plugins(dir: &Path, plugins: &Path, args: &[&str]) -> Run {
    let o = Command::new(env!("CARGO_BIN_EXE_envrig"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env("ENVRIG_PLUGINS", plugins)
        .env_remove("ENVRIG_FILE")
        .env_remove("ENVRIG_PROVIDER")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run envrig");
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// A folder holding a plugin `envrig-provider-libvirt` that is the shell script `body`.
fn fake_libvirt(body: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("envrig-provider-libvirt");
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

#[test]
fn envrig_links_no_engine_library() {
    let out = Command::new("ldd")
        .arg(env!("CARGO_BIN_EXE_envrig"))
        .output()
        .expect("ldd");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("libc.so"), "ldd said: {text}");
    assert!(!text.contains("libvirt"), "envrig links libvirt: {text}");
}

#[test]
fn a_plugin_whose_libraries_are_missing_is_named_with_the_loaders_words() {
    let plugins = fake_libvirt(
        "echo 'envrig-provider-libvirt: error while loading shared libraries: libvirt.so.0: cannot open shared object file: No such file or directory' >&2\nexit 127",
    );
    let p = Project::new(LIBVIRT_ENVFILE);
    let r = envrig_with_plugins(p.path(), plugins.path(), &["up"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("machine `a` cannot use the `libvirt` provider"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("libvirt.so.0"), "{}", r.stderr);
    assert!(r.stderr.contains("exit status: 127"), "{}", r.stderr);
    assert!(
        r.stderr.contains("ldd "),
        "the hint names ldd: {}",
        r.stderr
    );
}

#[test]
fn a_plugin_of_another_protocol_or_name_is_refused() {
    let caps = r#"{"custom_command":false,"live_synced_folders":false,"ssh":false,"interactive":false,"private_network":false,"box_store":true,"drift_from_base":false}"#;
    let p = Project::new(LIBVIRT_ENVFILE);
    let other = fake_libvirt(&format!(
        "echo '{{\"protocol\":99,\"name\":\"libvirt\",\"capabilities\":{caps}}}'\nsleep 5"
    ));
    let r = envrig_with_plugins(p.path(), other.path(), &["up"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("speaks plugin protocol 99"),
        "{}",
        r.stderr
    );
    let named = fake_libvirt(&format!(
        "echo '{{\"protocol\":1,\"name\":\"qemu\",\"capabilities\":{caps}}}'\nsleep 5"
    ));
    let r = envrig_with_plugins(p.path(), named.path(), &["up"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("calls itself `qemu`"), "{}", r.stderr);
}

#[test]
fn a_plugin_that_stops_during_a_call_is_reported_not_waited_for() {
    let caps = r#"{"box_store":true}"#;
    // Says hello, reads the first call, and exits with a word on stderr.
    let plugins = fake_libvirt(&format!(
        "echo '{{\"protocol\":1,\"name\":\"libvirt\",\"capabilities\":{caps}}}'\nread line\necho 'plugin: cannot reach libvirtd' >&2\nexit 3"
    ));
    let p = Project::new(LIBVIRT_ENVFILE);
    let t0 = std::time::Instant::now();
    let r = envrig_with_plugins(p.path(), plugins.path(), &["box", "list"]);
    assert!(t0.elapsed().as_secs() < 10, "took {:?}", t0.elapsed());
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("stopped"), "{}", r.stderr);
    assert!(r.stderr.contains("cannot reach libvirtd"), "{}", r.stderr);
}

#[test]
fn a_provider_with_no_plugin_is_a_usage_error() {
    let p = Project::new(LIBVIRT_ENVFILE);
    let empty = tempfile::tempdir().unwrap();
    // Only the empty folder and /usr/bin are searched: no plugin is found beside a copy
    // of envrig in a folder of its own.
    let bin = tempfile::tempdir().unwrap();
    let copy = bin.path().join("envrig");
    std::fs::copy(env!("CARGO_BIN_EXE_envrig"), &copy).unwrap();
    let o = Command::new(&copy)
        .arg("up")
        .current_dir(p.path())
        .env("NO_COLOR", "1")
        .env("ENVRIG_PLUGINS", empty.path())
        .env("PATH", "/usr/bin:/bin")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("no `envrig-provider-libvirt` plugin found"),
        "{stderr}"
    );
}

/// Where the libvirt plugin beside envrig finds `libvirt.so.0` on this host.
fn libvirt_library() -> String {
    let plugin = Path::new(env!("CARGO_BIN_EXE_envrig")).with_file_name("envrig-provider-libvirt");
    assert!(
        plugin.exists(),
        "{} is missing; build the workspace (cargo build --workspace)",
        plugin.display()
    );
    let out = Command::new("ldd").arg(&plugin).output().expect("ldd");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let (name, rest) = l.trim().split_once(" => ")?;
            (name == "libvirt.so.0").then(|| rest.split(' ').next().unwrap_or("").to_string())
        })
        .unwrap_or_else(|| panic!("the libvirt plugin does not link libvirt.so.0: {out:?}"))
}

/// Runs envrig in `dir` in a mount namespace of its own where `libvirt.so.0` is an empty
/// file: no libvirt library can be loaded.
fn envrig_without_libvirt(dir: &Path, args: &[&str]) -> Run {
    let o = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount --bind /dev/null \"$0\" && exec \"$@\"")
        .arg(libvirt_library())
        .arg(env!("CARGO_BIN_EXE_envrig"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env_remove("ENVRIG_FILE")
        .env_remove("ENVRIG_PROVIDER")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("unshare");
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn docker_machines_need_no_libvirt_library() {
    common::e2e();
    let p = Project::new(&format!(
        "[project]\nname = \"{}\"\n[boxes.b]\ndocker = \"{}\"\n[defaults]\nbox = \"b\"\n[machines.web]\n[machines.db]\n",
        common::unique("nolibvirt"),
        common::TEST_IMAGE
    ));
    // The plugin cannot load here: it says so in the loader's words.
    let probe = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount --bind /dev/null \"$0\" && exec \"$@\"")
        .arg(libvirt_library())
        .arg(Path::new(env!("CARGO_BIN_EXE_envrig")).with_file_name("envrig-provider-libvirt"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(probe.status.code(), Some(127), "{probe:?}");
    let run = |args: &[&str]| envrig_without_libvirt(p.path(), args);
    run(&["up"]).ok();
    let r = run(&["exec", "web", "--", "ping", "-c", "1", "-W", "2", "db"]).ok();
    assert!(r.stdout.contains("1 packets received"), "{}", r.stdout);
    let status = run(&["status", "--json"]).ok().json();
    assert_eq!(status["machines"].as_array().unwrap().len(), 2);
    assert!(
        status["machines"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["state"] == "running")
    );
    // `ls` looks at every provider: the libvirt one is skipped, with why.
    let ls = run(&["ls"]).ok();
    assert!(
        ls.stderr.contains("skipping the libvirt engine"),
        "{}",
        ls.stderr
    );
    assert!(ls.stderr.contains("libvirt.so.0"), "{}", ls.stderr);
    run(&["destroy", "-f"]).ok();
    assert!(common::containers(&format!("dev.envrig.folder={}", p.path().display())).is_empty());
    // A libvirt machine is refused with the loader's words, nothing else is touched.
    let vm = Project::new(LIBVIRT_ENVFILE);
    let r = envrig_without_libvirt(vm.path(), &["up"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("libvirt.so.0"), "{}", r.stderr);
}
