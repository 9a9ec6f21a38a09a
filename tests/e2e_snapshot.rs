//! Snapshots, export/import and package on the real Docker engine (ignored unless run with `--run-ignored all`, as `scripts/test.sh` does).

mod common;

use common::{Project, TEST_IMAGE, containers, docker, e2e, unique};

fn envfile(project: &str) -> String {
    format!(
        "[project]\nname = \"{project}\"\n\n[boxes.bb]\ndocker = \"{TEST_IMAGE}\"\n\n[defaults]\nbox = \"bb\"\nmemory = \"64MiB\"\n\n[machines.web]\nports = [\"127.0.0.1:0:80\"]\n[machines.db]\n"
    )
    .replace("127.0.0.1:0:80", &format!("127.0.0.1:{}:80", common::free_port()))
}

fn sh(p: &Project, machine: &str, script: &str) -> String {
    p.envrig(&["exec", machine, "--", "sh", "-c", script])
        .ok()
        .stdout
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn snapshots_restore_files_in_place_for_one_machine_or_all() {
    e2e();
    let p = Project::new(&envfile(&unique("snap")));
    p.envrig(&["up"]).ok();
    sh(&p, "web", "echo marker > /root/marker");
    sh(&p, "db", "echo db-marker > /root/marker");
    let before = p.envrig(&["status", "--json"]).ok().json();
    p.envrig(&["snapshot", "save", "s1"]).ok();

    sh(&p, "web", "rm /root/marker; echo changed > /root/changed");
    sh(&p, "db", "rm /root/marker");
    // Saving over a name is refused unless --force.
    let r = p.envrig(&["snapshot", "save", "s1"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("`--force` replaces it"), "{}", r.stderr);
    let list = p.envrig(&["snapshot", "list", "--json"]).ok().json();
    assert_eq!(list["schema"], "envrig.snapshots/1");
    assert_eq!(list["snapshots"][0]["name"], "s1");
    assert_eq!(
        list["snapshots"][0]["machines"],
        serde_json::json!(["db", "web"])
    );

    // One machine back: the other keeps its change.
    p.envrig(&["snapshot", "restore", "s1", "db"]).ok();
    assert_eq!(sh(&p, "db", "cat /root/marker"), "db-marker\n");
    assert_eq!(sh(&p, "web", "ls /root"), "changed\n");
    // All back, in place: same names and ports, running.
    p.envrig(&["snapshot", "restore", "s1"]).ok();
    assert_eq!(
        sh(&p, "web", "cat /root/marker; ls /root"),
        "marker\nmarker\n"
    );
    let after = p.envrig(&["status", "--json"]).ok().json();
    for i in 0..2 {
        let (b, a) = (&before["machines"][i], &after["machines"][i]);
        assert_eq!(a["state"], "running");
        assert_eq!(a["resource_name"], b["resource_name"]);
        assert_eq!(a["ports"], b["ports"]);
    }
    // --force replaces; delete removes; destroy takes the rest with the machines.
    p.envrig(&["snapshot", "save", "s1", "--force"]).ok();
    p.envrig(&["snapshot", "save", "s2", "web"]).ok();
    p.envrig(&["snapshot", "delete", "s1"]).ok();
    let list = p.envrig(&["snapshot", "list", "--json"]).ok().json();
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 1);
    let env = after["env_id"].as_str().unwrap().to_string();
    p.envrig(&["destroy", "-f"]).ok();
    let images = docker(&[
        "images",
        "-q",
        "--filter",
        &format!("label=dev.envrig.env={env}"),
    ])
    .ok()
    .stdout;
    assert_eq!(images.trim(), "", "destroy removes the snapshots");
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn an_exported_snapshot_is_imported_elsewhere_exactly() {
    e2e();
    let p = Project::new(&envfile(&unique("export")));
    p.envrig(&["up"]).ok();
    sh(&p, "web", "echo exported > /root/marker");
    p.envrig(&["snapshot", "save", "s1"]).ok();
    sh(&p, "web", "rm /root/marker");
    let file = p.path().join("env.tar.zst");
    let r = p
        .envrig(&[
            "export",
            "--snapshot",
            "s1",
            "-o",
            file.to_str().unwrap(),
            "--json",
        ])
        .ok();
    let doc: serde_json::Value = serde_json::from_str(r.stdout.lines().last().unwrap()).unwrap();
    assert_eq!(doc["schema"], "envrig.export/1");
    assert_eq!(doc["machines"].as_array().unwrap().len(), 2);
    p.envrig(&["destroy", "-f"]).ok();

    let other = tempfile::tempdir().unwrap();
    let target = other.path().join("copy");
    let r = common::envrig_in(
        other.path(),
        &["import", file.to_str().unwrap(), "-C", "copy"],
    );
    let copy = Project {
        dir: tempfile::TempDir::new_in(other.path()).unwrap(),
        destroy_on_drop: false,
    };
    drop(copy);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let imported = |args: &[&str]| common::envrig_in(&target, args);
    assert_eq!(
        imported(&["exec", "web", "--", "cat", "/root/marker"])
            .ok()
            .stdout,
        "exported\n"
    );
    let st = imported(&["status", "--json"]).ok().json();
    assert_eq!(st["machines"][0]["state"], "running");
    assert_eq!(
        st["folder"],
        target.canonicalize().unwrap().to_str().unwrap()
    );
    // The imported machines reach each other on their own network.
    imported(&["exec", "web", "--", "ping", "-c", "1", "-W", "3", "db"]).ok();
    imported(&["destroy", "-f"]).ok();
    assert!(
        containers(&format!(
            "dev.envrig.env={}",
            st["env_id"].as_str().unwrap()
        ))
        .is_empty()
    );
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn an_export_of_the_machines_as_they_are_needs_no_snapshot() {
    e2e();
    let p = Project::new(&envfile(&unique("now")));
    p.envrig(&["up", "db"]).ok();
    sh(&p, "db", "echo now > /root/now");
    let file = p.path().join("db.tar.zst");
    p.envrig(&["export", "db", "-o", file.to_str().unwrap()])
        .ok();
    let list = p.envrig(&["snapshot", "list", "--json"]).ok().json();
    assert!(
        list["snapshots"].as_array().unwrap().is_empty(),
        "the temporary snapshot is gone"
    );
    let other = tempfile::tempdir().unwrap();
    common::envrig_in(other.path(), &["import", file.to_str().unwrap()]).ok();
    assert_eq!(
        common::envrig_in(other.path(), &["exec", "db", "--", "cat", "/root/now"])
            .ok()
            .stdout,
        "now\n"
    );
    common::envrig_in(other.path(), &["destroy", "-f"]).ok();
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn a_packaged_box_brings_the_provisioned_files_without_provisioning() {
    e2e();
    let name = unique("pkg");
    let text = format!(
        "[project]\nname = \"{name}\"\n[boxes.bb]\ndocker = \"{TEST_IMAGE}\"\n[machines.app]\nbox = \"bb\"\n[[machines.app.provision]]\nshell = \"echo baked > /opt-baked; echo ran >> /root/count\"\n"
    );
    let p = Project::new(&text);
    p.envrig(&["up"]).ok();
    let image = format!("envrig-test/{name}:1");
    let r = p.envrig(&["package", "app", "--as", &image]).ok();
    assert!(r.stderr.contains("packaged `app`"), "{}", r.stderr);
    let labels = docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config.Labels}}",
        &image,
    ])
    .ok()
    .stdout;
    let labels: serde_json::Value = serde_json::from_str(&labels).unwrap();
    assert!(
        labels["dev.envrig.fingerprint"]
            .as_str()
            .is_some_and(|f| f.len() == 16),
        "{labels}"
    );
    assert_eq!(
        labels["dev.envrig.env"], "",
        "the box belongs to no environment"
    );

    let q = Project::new(&format!(
        "[project]\nname = \"{name}-b\"\n[boxes.baked]\ndocker = \"{image}\"\n[machines.app]\nbox = \"baked\"\n"
    ));
    q.envrig(&["up"]).ok();
    assert_eq!(
        q.envrig(&["exec", "app", "--", "cat", "/opt-baked", "/root/count"])
            .ok()
            .stdout,
        "baked\nran\n"
    );
    let st = q.envrig(&["status", "--json"]).ok().json();
    assert_eq!(st["machines"][0]["state"], "running");
    q.envrig(&["destroy", "-f"]).ok();
    let _ = docker(&["rmi", &image]);
}
