//! An archive is untrusted, on the real Docker engine (ignored unless run with
//! `--run-ignored all`, as `scripts/test.sh` does): one whose Envfile mounts `/` and runs
//! privileged is refused before any container or network exists, shown by `--dry-run`, and
//! imported with `--trust`; an honest one imports without it.

mod common;

use common::{Project, TEST_IMAGE, containers, docker, e2e, networks, unique};

/// Exports machine `m` of `envfile`'s environment (made, then destroyed) to a file in a
/// folder of its own; `/root/marker` in it holds `kept`.
fn exported(envfile: &str, m: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let p = Project::new(envfile);
    p.envrig(&["up", m]).ok();
    p.envrig(&["exec", m, "--", "sh", "-c", "echo kept > /root/marker"])
        .ok();
    let keep = tempfile::tempdir().unwrap();
    let file = keep.path().join("env.tar.zst");
    p.envrig(&["export", m, "-o", file.to_str().unwrap()]).ok();
    p.envrig(&["destroy", "-f"]).ok();
    (keep, file)
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn an_archive_that_takes_over_the_host_is_refused_until_trusted() {
    e2e();
    let name = unique("trust");
    // This host's Docker cannot start a privileged container (no capabilities to give):
    // machine `p` asks for it in the Envfile and is never made; `a` mounts `/`.
    let (_keep, file) = exported(
        &format!(
            "[project]\nname = \"{name}\"\n[boxes.bb]\ndocker = \"{TEST_IMAGE}\"\n\
             [defaults]\nbox = \"bb\"\nmemory = \"64MiB\"\n\
             [machines.a]\nsynced = [{{ host = \"/\", guest = \"/host\", mode = \"ro\" }}]\n\
             [machines.p]\n[machines.p.docker]\nprivileged = true\n"
        ),
        "a",
    );
    let label = format!("dev.envrig.project={name}");
    assert!(containers(&label).is_empty() && networks(&label).is_empty());

    let other = tempfile::tempdir().unwrap();
    let import = |extra: &[&str]| {
        let mut args = vec!["import", file.to_str().unwrap(), "-C", "copy"];
        args.extend_from_slice(extra);
        common::envrig_in(other.path(), &args)
    };
    // No terminal and no --trust: refused, and nothing exists on the engine.
    let r = import(&[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("`/` is outside the import folder (`machines.a.synced[0]`)"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(
            "a privileged machine can take over this host (`machines.p.docker.privileged`)"
        ),
        "{}",
        r.stderr
    );
    assert!(containers(&label).is_empty(), "no container was made");
    assert!(networks(&label).is_empty(), "no network was made");
    assert!(!other.path().join("copy").exists(), "nothing was written");

    // --dry-run shows it and stops.
    let r = import(&["--dry-run"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("/ -> /host (read-only)"), "{}", r.stdout);
    assert!(r.stdout.contains("privileged"), "{}", r.stdout);
    assert!(containers(&label).is_empty() && networks(&label).is_empty());
    assert!(!other.path().join("copy").exists());

    // --trust: imported as it was, with what it asked for.
    let r = import(&["--trust"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let target = other.path().join("copy");
    let imported = |args: &[&str]| common::envrig_in(&target, args);
    let guard = Project {
        dir: tempfile::TempDir::new_in(other.path()).unwrap(),
        destroy_on_drop: false,
    };
    let out = imported(&[
        "exec",
        "a",
        "--",
        "cat",
        "/root/marker",
        "/host/etc/hostname",
    ])
    .ok();
    assert!(out.stdout.starts_with("kept\n"), "{}", out.stdout);
    let st = imported(&["status", "--json"]).ok().json();
    let ids = containers(&format!(
        "dev.envrig.env={}",
        st["env_id"].as_str().unwrap()
    ));
    assert_eq!(ids.len(), 1, "the machine the archive holds");
    let mounts = docker(&["inspect", "--format", "{{json .Mounts}}", &ids[0]]).ok();
    assert!(
        mounts.stdout.contains(r#""Source":"/""#),
        "{}",
        mounts.stdout
    );
    imported(&["destroy", "-f"]).ok();
    drop(guard);
    common::remove_by_folder(&target);
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn an_honest_archive_imports_without_trust() {
    e2e();
    let name = unique("honest");
    let port = common::free_port();
    let (_keep, file) = exported(
        &format!(
            "[project]\nname = \"{name}\"\n[boxes.bb]\ndocker = \"{TEST_IMAGE}\"\n\
             [machines.a]\nbox = \"bb\"\nmemory = \"64MiB\"\nports = [\"127.0.0.1:{port}:80\"]\n\
             synced = [{{ host = \".\", guest = \"/src\" }}]\n"
        ),
        "a",
    );
    let other = tempfile::tempdir().unwrap();
    let target = other.path().join("copy");
    let r = common::envrig_in(
        other.path(),
        &["import", file.to_str().unwrap(), "-C", "copy"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("(machines.a.synced[0])"), "{}", r.stderr);
    let imported = |args: &[&str]| common::envrig_in(&target, args);
    assert_eq!(
        imported(&["exec", "a", "--", "cat", "/root/marker"])
            .ok()
            .stdout,
        "kept\n"
    );
    assert!(
        imported(&["exec", "a", "--", "ls", "/src"])
            .ok()
            .stdout
            .contains("Envfile"),
        "the import folder is what it syncs"
    );
    imported(&["destroy", "-f"]).ok();
    common::remove_by_folder(&target);
}

fn sha(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// An archive of one libvirt machine `vm` whose disk names `/etc/hostname` as its backing file.
fn backed_archive(dir: &std::path::Path) -> std::path::PathBuf {
    let disk = dir.join("disk.qcow2");
    let o = std::process::Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "/etc/hostname",
            "-F",
            "raw",
        ])
        .arg(&disk)
        .arg("1M")
        .output()
        .expect("end-to-end tests need qemu-img; run scripts/host-setup.sh");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut t = tar::Builder::new(Vec::new());
    t.append_path_with_name(&disk, "disk.qcow2").unwrap();
    let image = t.into_inner().unwrap();
    let envfile = b"[boxes.tiny]\nlibvirt = \"tiny\"\n[machines.vm]\nbox = \"tiny\"\nprovider = \"libvirt\"\n";
    let spec = serde_json::json!({
        "resource_name": "vm", "machine": "vm", "base": "tiny", "cpus": null,
        "memory_bytes": null, "hostname": "vm", "env": {}, "command": null, "ports": [],
        "synced": [], "labels": {}, "options": {}, "network": null
    });
    let manifest = serde_json::to_vec(&serde_json::json!({
        "format": 1, "envrig": "0.1.0", "project": "backed", "snapshot": "s1",
        "created": "2026-01-01T00:00:00Z",
        "machines": [{
            "machine": "vm", "provider": "libvirt", "member": "machines/vm.image",
            "snapshot": {"id": "x", "name": "s1", "machine": "vm", "created": "2026-01-01T00:00:00Z",
                         "running": false, "spec": spec, "labels": {}}
        }],
        "members": [
            {"path": "envfile/Envfile", "size": envfile.len(), "sha256": sha(envfile)},
            {"path": "machines/vm.image", "size": image.len(), "sha256": sha(&image)}
        ]
    }))
    .unwrap();
    let mut t = tar::Builder::new(Vec::new());
    for (path, body) in [
        ("manifest.json", manifest.as_slice()),
        ("envfile/Envfile", envfile.as_slice()),
        ("machines/vm.image", image.as_slice()),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        t.append_data(&mut h, path, body).unwrap();
    }
    let file = dir.join("backed.tar.zst");
    let raw = t.into_inner().unwrap();
    std::fs::write(&file, zstd::encode_all(raw.as_slice(), 3).unwrap()).unwrap();
    file
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn an_imported_disk_that_names_a_backing_file_is_refused() {
    e2e();
    let dir = tempfile::tempdir().unwrap();
    let file = backed_archive(dir.path());
    let r = common::envrig_in(
        dir.path(),
        &["import", file.to_str().unwrap(), "-C", "copy", "--trust"],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("machine `vm`") && r.stderr.contains("names a backing file"),
        "{}",
        r.stderr
    );
    assert!(!dir.path().join("copy").exists(), "nothing was written");
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn an_imported_image_that_names_tags_of_this_host_is_refused() {
    e2e();
    let dir = tempfile::tempdir().unwrap();
    // `docker save` of a tag names it: loading that would point the host's tag at the
    // archive's image. The test image stands in for any image of this host.
    let saved = dir.path().join("a.image");
    let o = std::process::Command::new("docker")
        .args(["save", "-o"])
        .arg(&saved)
        .arg(TEST_IMAGE)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let image = std::fs::read(&saved).unwrap();
    let envfile = format!("[boxes.bb]\ndocker = \"{TEST_IMAGE}\"\n[machines.a]\nbox = \"bb\"\n");
    let envfile = envfile.as_bytes();
    let spec = serde_json::json!({
        "resource_name": "a", "machine": "a", "base": TEST_IMAGE, "cpus": null,
        "memory_bytes": null, "hostname": "a", "env": {}, "command": null, "ports": [],
        "synced": [], "labels": {}, "options": {}, "network": null
    });
    let manifest = serde_json::to_vec(&serde_json::json!({
        "format": 1, "envrig": "0.1.0", "project": "tagged", "snapshot": null,
        "created": "2026-01-01T00:00:00Z",
        "machines": [{
            "machine": "a", "provider": "docker", "member": "machines/a.image",
            "snapshot": {"id": "x", "name": "s1", "machine": "a", "created": "2026-01-01T00:00:00Z",
                         "running": false, "spec": spec, "labels": {}}
        }],
        "members": [
            {"path": "envfile/Envfile", "size": envfile.len(), "sha256": sha(envfile)},
            {"path": "machines/a.image", "size": image.len(), "sha256": sha(&image)}
        ]
    }))
    .unwrap();
    let mut t = tar::Builder::new(Vec::new());
    for (path, body) in [
        ("manifest.json", manifest.as_slice()),
        ("envfile/Envfile", envfile),
        ("machines/a.image", image.as_slice()),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        t.append_data(&mut h, path, body).unwrap();
    }
    let file = dir.path().join("tagged.tar.zst");
    let raw = t.into_inner().unwrap();
    std::fs::write(&file, zstd::encode_all(raw.as_slice(), 3).unwrap()).unwrap();
    let r = common::envrig_in(
        dir.path(),
        &["import", file.to_str().unwrap(), "-C", "copy"],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("machine `a`") && r.stderr.contains("names tags"),
        "{}",
        r.stderr
    );
    assert!(!dir.path().join("copy").exists(), "nothing was written");
}
