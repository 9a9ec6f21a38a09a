//! Box versions from a Vagrant box catalog served on loopback: `box add NAME CATALOG`,
//! `box list` with versions, `box outdated`, `box update` beside the old version (a machine
//! keeps the one it was made from; the lock file pins it), `box prune`.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{Project, e2e, envrig_home, guest, unique};

/// A vagrant-libvirt `.box` (uncompressed tar) of the small guest's kernel with `disk`.
fn make_box(dest: &Path, disk: &Path, guest: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(dest).unwrap());
    b.append_path_with_name(disk, "box.img").unwrap();
    for f in ["vmlinuz", "initrd.img", "cmdline"] {
        b.append_path_with_name(guest.join(f), f).unwrap();
    }
    let meta = br#"{"provider":"libvirt","format":"qcow2","virtual_size":1}"#;
    let mut h = tar::Header::new_gnu();
    h.set_size(meta.len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, "metadata.json", &meta[..]).unwrap();
    b.finish().unwrap();
}

/// Writes the catalog `www/catalog.json` with `versions` (version, box file in `www`).
fn write_catalog(www: &Path, port: u16, versions: &[(&str, &str)]) {
    let versions: Vec<serde_json::Value> = versions
        .iter()
        .map(|(v, file)| {
            let sum = common::follow::sha256_of(&www.join(file));
            serde_json::json!({"version": v, "providers": [
                {"name": "libvirt", "url": format!("http://127.0.0.1:{port}/{file}"),
                 "checksum_type": "sha256", "checksum": sum},
                {"name": "virtualbox", "url": "http://127.0.0.1:1/none.box"}]})
        })
        .collect();
    let doc = serde_json::json!({"name": "team/small", "versions": versions});
    std::fs::write(www.join("catalog.json"), doc.to_string()).unwrap();
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn box_versions_come_from_a_catalog_and_machines_keep_theirs() {
    e2e();
    let home = tempfile::tempdir().unwrap();
    let www = tempfile::tempdir().unwrap();
    let g = std::path::PathBuf::from(guest());
    make_box(&www.path().join("v1.box"), &g.join("disk.qcow2"), &g);
    // The same system in another qcow2 layout: other bytes, so another box.
    let v2disk = www.path().join("v2.qcow2");
    let st = Command::new("qemu-img")
        .args(["convert", "-O", "qcow2", "-o", "cluster_size=131072"])
        .arg(g.join("disk.qcow2"))
        .arg(&v2disk)
        .status()
        .unwrap();
    assert!(st.success());
    make_box(&www.path().join("v2.box"), &v2disk, &g);
    let port = common::free_port();
    write_catalog(www.path(), port, &[("1.9.0", "v1.box")]);
    let _server = Server(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .current_dir(www.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let catalog = format!("http://127.0.0.1:{port}/catalog.json");
    common::http_get(port);

    let name = unique("ver");
    let p = Project::new(&format!(
        "[project]\nname = \"{name}\"\nbake = false\n[boxes.small]\nlibvirt = \"small\"\n[machines.vm]\nbox = \"small\"\nprovider = \"libvirt\"\nmemory = \"160MiB\"\n"
    ));
    let run = |args: &[&str]| envrig_home(p.path(), home.path(), args);
    let r = run(&["box", "add", "small", &catalog]).ok();
    assert!(
        r.stderr.contains("added box `small` version 1.9.0"),
        "{}",
        r.stderr
    );
    let listed = run(&["box", "list", "--json"]).ok().json();
    assert_eq!(listed["boxes"][0]["version"], "1.9.0", "{listed}");
    assert_eq!(listed["boxes"][0]["name"], "small", "{listed}");
    let r = run(&["box", "outdated", "--json"]).ok().json();
    assert_eq!(r["boxes"][0]["outdated"], false, "{r}");

    // A machine made from 1.9.0; the lock file pins that box.
    run(&["up"]).ok();
    let lock = std::fs::read_to_string(p.path().join("Envfile.lock")).unwrap();
    let v1_sha = listed["boxes"][0]["sha256"].as_str().unwrap().to_string();
    assert!(lock.contains(&v1_sha), "{lock}");

    // The catalog gains 1.10.0 (after 1.9.0, as numbers): outdated, then added beside.
    write_catalog(
        www.path(),
        port,
        &[("1.9.0", "v1.box"), ("1.10.0", "v2.box")],
    );
    let r = run(&["box", "outdated", "--json"]).ok().json();
    assert_eq!(
        (
            &r["boxes"][0]["current"],
            &r["boxes"][0]["latest"],
            &r["boxes"][0]["outdated"]
        ),
        (&"1.9.0".into(), &"1.10.0".into(), &true.into()),
        "{r}"
    );
    let r = run(&["box", "update", "small"]).ok();
    assert!(r.stderr.contains("version 1.10.0"), "{}", r.stderr);
    let r = run(&["box", "update", "small"]).ok();
    assert!(r.stderr.contains("up to date"), "{}", r.stderr);
    let versions: Vec<String> = run(&["box", "list", "--json"]).ok().json()["boxes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["version"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(versions, ["1.9.0", "1.10.0"]);

    // The machine keeps its box; prune keeps what it and the lock use.
    let r = run(&["box", "prune", "--json"]).ok().json();
    assert_eq!(r["removed"], serde_json::json!([]), "{r}");
    assert_eq!(r["kept"][0]["box"], "small@1.9.0", "{r}");
    assert_eq!(run(&["exec", "vm", "--", "true"]).code, 0);
    let r = run(&["up"]).ok();
    assert!(
        r.stderr.contains("pins it"),
        "the lock keeps 1.9.0: {}",
        r.stderr
    );

    // Without the machine and the lock, prune removes the old version; a new machine is
    // made from the newest.
    run(&["destroy", "-f"]).ok();
    std::fs::remove_file(p.path().join("Envfile.lock")).unwrap();
    let r = run(&["box", "prune", "--json"]).ok().json();
    assert_eq!(r["removed"], serde_json::json!(["small@1.9.0"]), "{r}");
    let listed = run(&["box", "list", "--json"]).ok().json();
    assert_eq!(listed["boxes"].as_array().unwrap().len(), 1, "{listed}");
    run(&["lock"]).ok();
    let lock = std::fs::read_to_string(p.path().join("Envfile.lock")).unwrap();
    let v2_sha = listed["boxes"][0]["sha256"].as_str().unwrap();
    assert!(lock.contains(v2_sha), "{lock}");

    // A catalog whose checksum does not match: refused, nothing added.
    std::fs::copy(www.path().join("v1.box"), www.path().join("v3.box")).unwrap();
    write_catalog(www.path(), port, &[("2.0.0", "v3.box")]);
    std::fs::write(www.path().join("v3.box"), b"not the box the catalog names").unwrap();
    let r = run(&["box", "update", "small"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("nothing was added"), "{}", r.stderr);
    assert_eq!(
        run(&["box", "list", "--json"]).ok().json()["boxes"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
