//! Envfile parsing and every diagnostic, with the rendered output snapshotted.

use std::path::Path;

use envrig_provider_api::{Capabilities, Schema};

use super::*;

/// The providers envrig comes with, as they describe themselves: Docker (built in, the
/// default) and libvirt (a plugin), both available.
pub(crate) fn providers() -> Vec<Schema> {
    vec![
        envrig_provider_docker::schema(),
        envrig_provider_libvirt::schema(),
    ]
}

/// Docker available; libvirt found as a plugin that does not start.
struct LibvirtNotStarting(Vec<Schema>);

impl Providers for LibvirtNotStarting {
    fn names(&self) -> Vec<&str> {
        vec!["docker", "libvirt"]
    }

    fn schema(&self, name: &str) -> Option<&Schema> {
        self.0.iter().find(|s| s.name == name && name == "docker")
    }
}

fn env(name: &str) -> Option<String> {
    match name {
        "CI_TAG" => Some("42".into()),
        _ => None,
    }
}

/// A project folder with the files the Envfiles below refer to.
fn project_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("app")).unwrap();
    std::fs::create_dir_all(dir.path().join("conf")).unwrap();
    std::fs::create_dir_all(dir.path().join("scripts")).unwrap();
    std::fs::write(dir.path().join("conf/app.conf"), "x").unwrap();
    std::fs::write(dir.path().join("scripts/setup.sh"), "#!/bin/sh\necho hi\n").unwrap();
    dir
}

fn parse_in(dir: &Path, src: &str, provider: Option<&str>) -> Result<(Envfile, Report), LoadError> {
    parse_with(dir, src, provider, &providers())
}

fn parse_with(
    dir: &Path,
    src: &str,
    provider: Option<&str>,
    providers: &dyn Providers,
) -> Result<(Envfile, Report), LoadError> {
    let opts = LoadOptions {
        env: &env,
        provider_override: provider,
        providers,
        check_paths: true,
    };
    parse(src, &dir.join("Envfile"), "Envfile", &opts)
}

fn errors(src: &str) -> String {
    let dir = project_dir();
    match parse_in(dir.path(), src, None) {
        Ok(_) => panic!("expected errors"),
        Err(LoadError::Invalid(r)) => r
            .render(false)
            .replace(&dir.path().display().to_string(), "[DIR]"),
        Err(e) => panic!("{e}"),
    }
}

const SPEC_EXAMPLE: &str = r#"
[project]
name = "shop"
provider = "docker"
immutable = true
keep = 2
bake = true

[network]
subnet = "198.19.10.0/24"

[boxes.debian]
docker = "debian:12"
libvirt = "debian-12"

[defaults]
box = "debian"
cpus = 1
memory = "512MiB"
env = { FROM_DEFAULTS = "yes", APP_ENV = "overridden" }

[machines.web]
box = "debian"
cpus = 2
memory = "1GiB"
hostname = "web"
ports = ["8080:80", "0.0.0.0:8443:443/tcp"]
synced = [{ host = "./app", guest = "/srv/app", mode = "ro" }]
env = { APP_ENV = "test", TAG = "${CI_TAG}", MISSING = "${NOPE:-fallback}" }
depends_on = ["db"]
ttl = "2h"
command = ["sleep", "infinity"]
drift_ignore = ["/srv/app/cache/**"]

[machines.web.ready]
command = "test -f /srv/app/ready"
timeout = "60s"

[[machines.web.provision]]
name = "packages"
shell = "apk add --no-cache curl || echo ${HOME}"
run = "once"
user = "root"

[[machines.web.provision]]
file = { source = "conf/app.conf", destination = "/etc/app.conf" }

[[machines.web.provision]]
script = "scripts/setup.sh"
args = ["--fast", ""]
env = { DEBUG = "1" }

[machines.db]
box = "debian"
provider = "libvirt"

[machines.db.libvirt]
machine_type = "q35"
"#;

#[test]
fn the_spec_example_parses_whole() {
    let dir = project_dir();
    let (e, report) = parse_in(dir.path(), SPEC_EXAMPLE, None).unwrap();
    assert_eq!(e.project.name.as_str(), "shop");
    assert!(e.project.immutable);
    assert_eq!(e.network.subnet.unwrap().to_string(), "198.19.10.0/24");
    let names: Vec<&str> = e.machines.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["web", "db"], "machines keep file order");
    let web = &e.machines[0];
    assert_eq!(web.provider, "docker");
    assert_eq!(web.base, "debian:12");
    assert_eq!(web.cpus, Some(2));
    assert_eq!(web.memory, Some(1 << 30));
    assert_eq!(web.ports.len(), 2);
    assert_eq!(web.ports[0].host_ip, "127.0.0.1");
    assert_eq!(web.ports[1].host_ip, "0.0.0.0");
    assert!(web.synced[0].read_only);
    assert_eq!(web.synced[0].host, dir.path().join("./app"));
    // env tables merge, the machine winning per key; strings are expanded.
    assert_eq!(web.env["APP_ENV"], "test");
    assert_eq!(web.env["FROM_DEFAULTS"], "yes");
    assert_eq!(web.env["TAG"], "42");
    assert_eq!(web.env["MISSING"], "fallback");
    assert_eq!(web.ttl, Some(std::time::Duration::from_secs(7200)));
    assert_eq!(web.provision.len(), 3);
    // Inline shell reaches the guest unchanged.
    assert_eq!(
        web.provision[0].kind,
        StepKind::Shell("apk add --no-cache curl || echo ${HOME}".into())
    );
    assert_eq!(
        web.provision[2].kind,
        StepKind::Script {
            path: "scripts/setup.sh".into(),
            args: vec!["--fast".into(), "".into()]
        }
    );
    let db = &e.machines[1];
    assert_eq!(
        (db.provider.as_str(), db.base.as_str()),
        ("libvirt", "debian-12")
    );
    assert_eq!(db.cpus, Some(1), "defaults apply");
    assert_eq!(db.options()["machine_type"], OptionValue::Str("q35".into()));
    assert!(report.diagnostics.is_empty(), "{}", report.render(false));
}

#[test]
fn a_provider_this_envrig_cannot_use_is_a_warning_and_a_near_miss_an_error() {
    let dir = project_dir();
    // Found but not starting: its table and box references are taken as written.
    let not_starting = LibvirtNotStarting(providers());
    let (e, report) = parse_with(dir.path(), SPEC_EXAMPLE, None, &not_starting).unwrap();
    assert_eq!(e.machines[1].base, "debian-12");
    insta::assert_snapshot!(report.render(false));
    // Not here at all (a plugin of another host): the same, with its own words.
    let docker_only = vec![envrig_provider_docker::schema()];
    let (_, report) = parse_with(dir.path(), SPEC_EXAMPLE, None, &docker_only).unwrap();
    insta::assert_snapshot!(report.render(false));
    // A near miss of a provider, in each place a provider is named, is an error.
    let src = "[boxes.b]\ndokcer = \"img\"\n[machines.a]\nbox = \"b\"\nprovider = \"dockr\"\n[machines.a.libvrt]\nx = 1\n";
    insta::assert_snapshot!(errors(src));
}

#[test]
fn unknown_keys_get_did_you_mean_and_all_errors_come_at_once() {
    let out = errors(
        r#"
[projct]
name = "x"

[boxes.b]
docker = "img:1"

[machines.web]
box = "b"
prots = ["8080:80"]
memory = 512
cpus = "two"

[machines.db]
box = "c"
"#,
    );
    insta::assert_snapshot!(out);
}

#[test]
fn values_are_checked_with_what_was_expected() {
    let out = errors(
        r#"
[project]
name = "Shop_1"

[network]
subnet = "198.19.10.1/24"

[boxes.b]
docker = "debian 12"

[machines.web]
box = "b"
memory = "lots"
hostname = "-bad"
ports = ["8080:80", "99999:80", "nope"]
ttl = "soon"
command = "sleep infinity"
synced = [{ host = "./missing", guest = "relative", mode = "rx" }]
env = { "BAD-NAME" = "x", TAG = "${UNSET_VAR}" }
depends_on = ["web", "dbb"]

[machines.db]
box = "b"

[machines.Bad_Name]
box = "b"
"#,
    );
    insta::assert_snapshot!(out);
}

#[test]
fn provisioners_and_readiness_are_checked() {
    let out = errors(
        r#"
[boxes.b]
docker = "img"

[machines.web]
box = "b"

[machines.web.ready]
timeout = "forever"

[[machines.web.provision]]
shell = "echo hi"
script = "scripts/setup.sh"

[[machines.web.provision]]
script = "scripts/nope.sh"

[[machines.web.provision]]
file = { source = "conf/app.conf" }
run = "sometimes"
args = ["x"]

[[machines.web.provision]]
shell = "true"
user = "root; reboot"
"#,
    );
    insta::assert_snapshot!(out);
}

#[test]
fn dependency_cycles_are_named() {
    let out = errors(
        r#"
[boxes.b]
docker = "img"

[defaults]
box = "b"

[machines.a]
depends_on = ["b"]

[machines.b]
depends_on = ["c"]

[machines.c]
depends_on = ["a"]
"#,
    );
    insta::assert_snapshot!(out);
}

#[test]
fn syntax_errors_point_at_the_spot() {
    insta::assert_snapshot!(errors("[machines.web\nbox = \"b\"\n"));
}

#[test]
fn a_missing_box_and_no_machines_are_explained() {
    insta::assert_snapshot!(errors("[project]\nname = \"p\"\n"));
    insta::assert_snapshot!(errors(
        "[boxes.b]\nlibvirt = \"x\"\n[machines.web]\nbox = \"b\"\n[machines.db]\n"
    ));
}

#[test]
fn command_is_refused_where_the_provider_cannot_honour_it() {
    let dir = project_dir();
    let src = "[boxes.b]\ndocker = \"img\"\n[machines.web]\nbox = \"b\"\ncommand = [\"x\"]\n";
    let mut docker = envrig_provider_docker::schema();
    docker.capabilities = Capabilities::default();
    let providers = vec![docker];
    let opts = LoadOptions {
        env: &env,
        provider_override: None,
        providers: &providers,
        check_paths: true,
    };
    let Err(LoadError::Invalid(r)) = parse(src, &dir.path().join("Envfile"), "Envfile", &opts)
    else {
        panic!("expected an error");
    };
    assert!(
        r.render(false)
            .contains("cannot set a machine's main process"),
        "{}",
        r.render(false)
    );
}

#[test]
fn provider_override_changes_the_default_not_an_explicit_choice() {
    let dir = project_dir();
    let src = "[boxes.b]\ndocker = \"img\"\nlibvirt = \"box\"\n[machines.a]\nbox = \"b\"\n[machines.c]\nbox = \"b\"\nprovider = \"docker\"\n";
    let (e, r) = parse_in(dir.path(), src, Some("libvirt")).unwrap();
    assert_eq!(e.machines[0].provider, "libvirt");
    assert_eq!(e.machines[0].base, "box");
    assert_eq!(e.machines[1].provider, "docker");
    assert!(r.diagnostics.is_empty(), "{}", r.render(false));
}

#[test]
fn project_name_defaults_to_the_folder() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("My Shop");
    std::fs::create_dir(&dir).unwrap();
    let (e, _) = parse_in(
        &dir,
        "[boxes.b]\ndocker = \"img\"\n[machines.a]\nbox = \"b\"\n",
        None,
    )
    .unwrap();
    assert_eq!(e.project.name.as_str(), "my-shop");
    assert!(e.project.name_from_folder);
}

#[test]
fn every_template_is_a_valid_envfile() {
    let dir = project_dir();
    let providers = providers();
    for t in crate::ops::TEMPLATES {
        let opts = LoadOptions {
            env: &env,
            provider_override: None,
            providers: &providers,
            check_paths: true,
        };
        if let Err(LoadError::Invalid(r)) =
            parse(t.text, &dir.path().join("Envfile"), t.name, &opts)
        {
            panic!("template {} is invalid:\n{}", t.name, r.render(false));
        }
    }
}

#[test]
fn libvirt_disk_size_is_bytes_and_graphics_is_one_of_three() {
    let src = "[boxes.b]\nlibvirt = \"debian-12\"\n[machines.vm]\nbox = \"b\"\nprovider = \"libvirt\"\n[machines.vm.libvirt]\ndisk_size = \"20GiB\"\ngraphics = \"vnc\"\n";
    let dir = project_dir();
    let (e, _) = parse_in(dir.path(), src, None).unwrap();
    let o = e.machines[0].options();
    assert_eq!(o["disk_size"], OptionValue::Int(20 << 30));
    assert_eq!(o["graphics"], OptionValue::Str("vnc".into()));
    // No longer a bool: a string naming the display.
    let out = errors(&src.replace("\"vnc\"", "true"));
    assert!(out.contains("machines.vm.libvirt.graphics"), "{out}");
    let out = errors(&src.replace("\"vnc\"", "\"vcn\""));
    assert!(
        out.contains("`vcn` is not one of \"vnc\", \"spice\", \"none\"")
            && out.contains("did you mean \"vnc\"?"),
        "{out}"
    );
}
