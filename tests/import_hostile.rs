//! Hostile archives given to `envrig import` are refused with a clear message, before any
//! engine is touched, and nothing is written outside the target folder. No engine needed.

mod common;

use std::io::Write;
use std::path::Path;

use common::{envrig_home_env, envrig_in};
use sha2::{Digest, Sha256};

fn sha(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// A raw tar entry: the path is written as it is (the `tar` crate would refuse `..`).
fn entry(
    tar: &mut tar::Builder<Vec<u8>>,
    path: &str,
    kind: tar::EntryType,
    body: &[u8],
    link: Option<&str>,
) {
    let mut h = tar::Header::new_gnu();
    {
        let name = &mut h.as_gnu_mut().unwrap().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
    }
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(body.len() as u64);
    if let Some(l) = link {
        h.set_link_name(l).unwrap();
    }
    h.set_cksum();
    tar.append(&h, body).unwrap();
}

const ENVFILE: &[u8] =
    b"[boxes.bb]\ndocker = \"envrig-test/busybox:latest\"\n[machines.a]\nbox = \"bb\"\n";

fn manifest(members: &[(&str, u64, String)]) -> Vec<u8> {
    let members: Vec<serde_json::Value> = members
        .iter()
        .map(|(p, s, h)| serde_json::json!({"path": p, "size": s, "sha256": h}))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "format": 1, "envrig": "0.1.0", "project": "evil", "snapshot": null,
        "created": "2026-01-01T00:00:00Z", "machines": [], "members": members
    }))
    .unwrap()
}

fn write(dir: &Path, name: &str, tar: tar::Builder<Vec<u8>>) -> std::path::PathBuf {
    let raw = tar.into_inner().unwrap();
    let path = dir.join(name);
    let mut enc =
        zstd::stream::write::Encoder::new(std::fs::File::create(&path).unwrap(), 3).unwrap();
    enc.write_all(&raw).unwrap();
    enc.finish().unwrap();
    path
}

/// Imports `archive` into `root/target`; asserts exit 2 with `expect` in the message and
/// that nothing appeared outside `root/target` (and no Envfile inside it).
#[track_caller]
fn refused(root: &Path, archive: &Path, expect: &str) {
    refused_with(root, archive, &[], expect);
}

/// [`refused`], with more arguments and environment variables for `envrig`.
#[track_caller]
fn refused_with(root: &Path, archive: &Path, env: &[(&str, &str)], expect: &str) -> String {
    let before: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let home = tempfile::tempdir().unwrap();
    let r = envrig_home_env(
        root,
        home.path(),
        env,
        &["import", archive.to_str().unwrap(), "-C", "target"],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains(expect),
        "expected `{expect}` in: {}",
        r.stderr
    );
    let mut after: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    after.retain(|n| n != "target");
    let mut before = before;
    before.retain(|n| n != "target");
    assert_eq!(before, after, "nothing written next to the target folder");
    assert!(!root.join("target/Envfile").exists(), "no Envfile written");
    assert!(!root.join("evil").exists() && !root.join("escaped").exists());
    let staging: Vec<_> = std::fs::read_dir(root.join("target/.envrig"))
        .map(|d| d.count())
        .into_iter()
        .collect();
    assert!(
        staging.iter().all(|n| *n <= 1),
        "the staging folder is cleaned up"
    );
    r.stderr
}

#[test]
fn hostile_archives_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let good_env = ("envfile/Envfile", ENVFILE.len() as u64, sha(ENVFILE));

    // `..` in a member path.
    let mut t = tar::Builder::new(Vec::new());
    let m = manifest(&[good_env.clone(), ("envfile/../../escaped", 2, sha(b"x\n"))]);
    entry(&mut t, "manifest.json", tar::EntryType::Regular, &m, None);
    entry(
        &mut t,
        "envfile/Envfile",
        tar::EntryType::Regular,
        ENVFILE,
        None,
    );
    entry(
        &mut t,
        "envfile/../../escaped",
        tar::EntryType::Regular,
        b"x\n",
        None,
    );
    refused(r, &write(r, "dotdot.tar.zst", t), "unsafe path");

    // An absolute member path that the manifest does not list.
    let mut t = tar::Builder::new(Vec::new());
    entry(
        &mut t,
        "manifest.json",
        tar::EntryType::Regular,
        &manifest(std::slice::from_ref(&good_env)),
        None,
    );
    entry(
        &mut t,
        "envfile/Envfile",
        tar::EntryType::Regular,
        ENVFILE,
        None,
    );
    entry(&mut t, "/tmp/evil", tar::EntryType::Regular, b"x\n", None);
    refused(r, &write(r, "absolute.tar.zst", t), "unsafe path");

    // A symlink that escapes.
    let mut t = tar::Builder::new(Vec::new());
    entry(
        &mut t,
        "manifest.json",
        tar::EntryType::Regular,
        &manifest(&[good_env.clone(), ("envfile/link", 0, sha(b""))]),
        None,
    );
    entry(
        &mut t,
        "envfile/Envfile",
        tar::EntryType::Regular,
        ENVFILE,
        None,
    );
    entry(
        &mut t,
        "envfile/link",
        tar::EntryType::Symlink,
        b"",
        Some("/etc"),
    );
    refused(r, &write(r, "symlink.tar.zst", t), "link");

    // A duplicate member.
    let mut t = tar::Builder::new(Vec::new());
    entry(
        &mut t,
        "manifest.json",
        tar::EntryType::Regular,
        &manifest(std::slice::from_ref(&good_env)),
        None,
    );
    entry(
        &mut t,
        "envfile/Envfile",
        tar::EntryType::Regular,
        ENVFILE,
        None,
    );
    entry(
        &mut t,
        "envfile/Envfile",
        tar::EntryType::Regular,
        ENVFILE,
        None,
    );
    refused(r, &write(r, "duplicate.tar.zst", t), "appears twice");

    // A manifest that lies about a size.
    let mut t = tar::Builder::new(Vec::new());
    entry(
        &mut t,
        "manifest.json",
        tar::EntryType::Regular,
        &manifest(&[("envfile/Envfile", 3, sha(ENVFILE))]),
        None,
    );
    entry(
        &mut t,
        "envfile/Envfile",
        tar::EntryType::Regular,
        ENVFILE,
        None,
    );
    refused(r, &write(r, "size.tar.zst", t), "but the manifest says 3");

    // A checksum that does not match.
    let mut t = tar::Builder::new(Vec::new());
    entry(
        &mut t,
        "manifest.json",
        tar::EntryType::Regular,
        &manifest(&[("envfile/Envfile", ENVFILE.len() as u64, sha(b"other"))]),
        None,
    );
    entry(
        &mut t,
        "envfile/Envfile",
        tar::EntryType::Regular,
        ENVFILE,
        None,
    );
    refused(
        r,
        &write(r, "checksum.tar.zst", t),
        "does not match its checksum",
    );

    // A decompression bomb: 256 MiB of zeros in a tiny file, declared honestly or not.
    let zeros = vec![0u8; 256 << 20];
    let mut t = tar::Builder::new(Vec::new());
    entry(
        &mut t,
        "manifest.json",
        tar::EntryType::Regular,
        &manifest(&[
            good_env.clone(),
            ("machines/a.image", zeros.len() as u64, sha(&zeros)),
        ]),
        None,
    );
    entry(
        &mut t,
        "envfile/Envfile",
        tar::EntryType::Regular,
        ENVFILE,
        None,
    );
    entry(
        &mut t,
        "machines/a.image",
        tar::EntryType::Regular,
        &zeros,
        None,
    );
    refused(r, &write(r, "bomb.tar.zst", t), "decompression bomb");

    // A member missing, and not an archive at all.
    let mut t = tar::Builder::new(Vec::new());
    entry(
        &mut t,
        "manifest.json",
        tar::EntryType::Regular,
        &manifest(&[good_env.clone(), ("envfile/gone", 1, sha(b"x"))]),
        None,
    );
    entry(
        &mut t,
        "envfile/Envfile",
        tar::EntryType::Regular,
        ENVFILE,
        None,
    );
    refused(
        r,
        &write(r, "missing.tar.zst", t),
        "missing from the archive",
    );
    std::fs::write(r.join("junk.tar.zst"), b"not an archive").unwrap();
    refused(r, &r.join("junk.tar.zst"), "refused");
}

#[test]
fn an_archive_into_a_folder_holding_another_environment_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::create_dir_all(r.join("target")).unwrap();
    std::fs::write(r.join("target/Envfile"), "# mine\n").unwrap();
    let mut t = tar::Builder::new(Vec::new());
    let m = manifest(&[("envfile/Envfile", ENVFILE.len() as u64, sha(ENVFILE))]);
    entry(&mut t, "manifest.json", tar::EntryType::Regular, &m, None);
    entry(
        &mut t,
        "envfile/Envfile",
        tar::EntryType::Regular,
        ENVFILE,
        None,
    );
    let archive = write(r, "ok.tar.zst", t);
    let out = envrig_in(r, &["import", archive.to_str().unwrap(), "-C", "target"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("already holds a different environment"),
        "{}",
        out.stderr
    );
    assert_eq!(
        std::fs::read_to_string(r.join("target/Envfile")).unwrap(),
        "# mine\n",
        "nothing is lost"
    );
}

/// A manifest machine: `machine` in the manifest, `of` in its snapshot, state in `member`.
fn machine(machine: &str, of: &str, snapshot: &str, member: &str) -> serde_json::Value {
    serde_json::json!({
        "machine": machine, "provider": "docker", "member": member,
        "snapshot": {
            "id": "/etc", "name": snapshot, "machine": of,
            "created": "2026-01-01T00:00:00Z", "running": true, "labels": {},
            "spec": {
                "resource_name": "../../x", "machine": of, "base": "/etc/shadow",
                "cpus": null, "memory_bytes": null, "hostname": of, "env": {},
                "command": null, "ports": [],
                "synced": [{"host": "/", "guest": "/host", "read_only": false}],
                "labels": {}, "options": {"privileged": true}, "network": null
            }
        }
    })
}

/// An archive holding `envfile`, the manifest machines `machines` and the members `extra`.
fn archive(
    dir: &Path,
    name: &str,
    envfile: &[u8],
    machines: serde_json::Value,
    extra: &[(&str, &[u8])],
) -> std::path::PathBuf {
    let mut members = vec![serde_json::json!({
        "path": "envfile/Envfile", "size": envfile.len(), "sha256": sha(envfile)
    })];
    for (p, b) in extra {
        members.push(serde_json::json!({"path": p, "size": b.len(), "sha256": sha(b)}));
    }
    let m = serde_json::to_vec(&serde_json::json!({
        "format": 1, "envrig": "0.1.0", "project": "evil", "snapshot": null,
        "created": "2026-01-01T00:00:00Z", "machines": machines, "members": members
    }))
    .unwrap();
    let mut t = tar::Builder::new(Vec::new());
    entry(&mut t, "manifest.json", tar::EntryType::Regular, &m, None);
    entry(
        &mut t,
        "envfile/Envfile",
        tar::EntryType::Regular,
        envfile,
        None,
    );
    for (p, b) in extra {
        entry(&mut t, p, tar::EntryType::Regular, b, None);
    }
    write(dir, name, t)
}

#[test]
fn manifest_fields_are_checked_before_anything_is_written() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let image: &[u8] = b"not really an image";
    let cases = [
        (
            "missing.tar.zst",
            machine("b", "b", "s1", "machines/b.image"),
            "machines/b.image",
            "which its Envfile does not declare",
        ),
        (
            "snapmachine.tar.zst",
            machine("a", "../../escaped", "s1", "machines/a.image"),
            "machines/a.image",
            "says it is of another machine",
        ),
        (
            "snapname.tar.zst",
            machine("a", "a", "../s1", "machines/a.image"),
            "machines/a.image",
            "`../s1` is not a valid name",
        ),
        (
            "member.tar.zst",
            machine("a", "a", "s1", "machines/other.image"),
            "machines/other.image",
            "is not its member `machines/a.image`",
        ),
    ];
    for (name, m, member, expect) in cases {
        let a = archive(r, name, ENVFILE, serde_json::json!([m]), &[(member, image)]);
        refused(r, &a, expect);
        assert!(
            !r.join("target").exists(),
            "{name}: the folder made is removed"
        );
    }
    let mut m = machine("a", "a", "s1", "machines/a.image");
    m["provider"] = serde_json::json!("libvirt");
    let a = archive(
        r,
        "provider.tar.zst",
        ENVFILE,
        serde_json::json!([m]),
        &[("machines/a.image", image)],
    );
    refused(r, &a, "but the Envfile gives it `docker`");
}

const TAKER: &str = r#"[boxes.bb]
docker = "envrig-test/busybox:latest"
[machines.a]
box = "bb"
env = { TOKEN = "${ENVRIG_TEST_TOKEN}", PLAIN = "${ENVRIG_TEST_UNSET:-x}" }
synced = [{ host = "/", guest = "/host" }, { host = "../outside", guest = "/o", mode = "ro" }]
ports = ["127.0.0.1:18080:80"]
[machines.a.docker]
privileged = true
[[machines.a.provision]]
file = { source = "/etc/hostname", destination = "/tmp/h" }
"#;

#[test]
fn what_an_archive_takes_from_the_host_is_refused_without_trust_and_shown_by_dry_run() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let a = archive(
        r,
        "taker.tar.zst",
        TAKER.as_bytes(),
        serde_json::json!([]),
        &[],
    );
    let env = [("ENVRIG_TEST_TOKEN", "s3cret")];
    let err = refused_with(r, &a, &env, "needs your trust");
    for expect in [
        "`/` is outside the import folder (`machines.a.synced[0]`)",
        "outside` is outside the import folder (`machines.a.synced[1]`)",
        "`/etc/hostname` is outside the import folder (`machines.a.provision[0].file.source`)",
        "a privileged machine can take over this host (`machines.a.docker.privileged`)",
        "`ENVRIG_TEST_TOKEN` may hold a secret of this host",
        "--dry-run",
        "--trust",
    ] {
        assert!(err.contains(expect), "expected `{expect}` in: {err}");
    }
    assert!(
        !err.contains("s3cret"),
        "a host value is never shown: {err}"
    );
    assert!(!err.contains("ENVRIG_TEST_UNSET"), "{err}");
    assert!(!r.join("target").exists(), "the folder made is removed");

    // `--dry-run` shows it all, exits 0 and leaves nothing behind.
    let home = tempfile::tempdir().unwrap();
    let args = ["import", a.to_str().unwrap(), "-C", "target", "--dry-run"];
    let out = envrig_home_env(r, home.path(), &env, &args);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for expect in [
        "/ -> /host (read-write)",
        "privileged",
        "127.0.0.1:18080->80/tcp",
        "/etc/hostname copied into the machine",
        "ENVRIG_TEST_TOKEN",
        "needs --trust",
    ] {
        assert!(
            out.stdout.contains(expect),
            "expected `{expect}` in: {}",
            out.stdout
        );
    }
    assert!(!r.join("target").exists(), "--dry-run touches nothing");

    let mut json_args = args.to_vec();
    json_args.push("--json");
    let out = envrig_home_env(r, home.path(), &env, &json_args);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let doc: serde_json::Value =
        serde_json::from_str(out.stdout.lines().last().unwrap_or_default()).unwrap();
    assert_eq!(doc["schema"], "envrig.import-check/1");
    assert_eq!(doc["needs_trust"], true);
    assert_eq!(doc["dry_run"], true);
    let kinds: Vec<&str> = doc["grants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "host_path",
            "host_path",
            "host_path",
            "privileged",
            "port",
            "host_variable"
        ]
    );
    assert_eq!(doc["grants"][4]["risk"], serde_json::Value::Null);
    assert!(
        !r.join("target").exists(),
        "--dry-run --json touches nothing"
    );
}

#[test]
fn an_honest_archive_needs_no_trust() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let text = "[boxes.bb]\ndocker = \"envrig-test/busybox:latest\"\n[machines.a]\nbox = \"bb\"\n\
                synced = [{ host = \".\", guest = \"/src\" }]\nports = [\"8080:80\"]\n\
                [[machines.a.provision]]\nscript = \"setup.sh\"\n";
    let a = archive(
        r,
        "honest.tar.zst",
        text.as_bytes(),
        serde_json::json!([]),
        &[("envfile/setup.sh", b"echo hi\n")],
    );
    let out = envrig_in(
        r,
        &[
            "import",
            a.to_str().unwrap(),
            "-C",
            "target",
            "--dry-run",
            "--json",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let doc: serde_json::Value =
        serde_json::from_str(out.stdout.lines().last().unwrap_or_default()).unwrap();
    assert_eq!(doc["needs_trust"], false, "{doc}");
    assert_eq!(doc["grants"].as_array().unwrap().len(), 3, "{doc}");
    assert!(!r.join("target").exists());
}

#[test]
fn a_link_in_the_import_folder_that_leads_out_of_it_needs_trust() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::create_dir_all(r.join("target")).unwrap();
    std::os::unix::fs::symlink("/", r.join("target/link")).unwrap();
    let text = "[boxes.bb]\ndocker = \"envrig-test/busybox:latest\"\n[machines.a]\nbox = \"bb\"\n\
                synced = [{ host = \"link/etc\", guest = \"/e\" }]\n";
    let a = archive(
        r,
        "link.tar.zst",
        text.as_bytes(),
        serde_json::json!([]),
        &[],
    );
    let out = envrig_in(r, &["import", a.to_str().unwrap(), "-C", "target"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "link/etc` leads to `/etc`, outside the import folder (`machines.a.synced[0]`)"
        ),
        "{}",
        out.stderr
    );
    assert!(!r.join("target/Envfile").exists());
    assert!(r.join("target/link").exists(), "what was there stays");
}

/// Runs `envrig ARGS` in `dir` at a terminal (through `script`), typing `input`.
fn at_a_terminal(dir: &Path, args: &str, input: &[u8]) -> (i32, String) {
    use std::process::{Command, Stdio};
    let cmd = format!("{} {args}", env!("CARGO_BIN_EXE_envrig"));
    let mut child = Command::new("timeout")
        .args(["60", "script", "-qec", &cmd, "/dev/null"])
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env("ENVRIG_TEST_TOKEN", "s3cret")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tests need `script` (util-linux) and `timeout`");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn at_a_terminal_import_asks_first_and_a_no_imports_nothing() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let a = archive(
        r,
        "taker.tar.zst",
        TAKER.as_bytes(),
        serde_json::json!([]),
        &[],
    );
    let args = format!("import {} -C target", a.display());
    let (code, out) = at_a_terminal(r, &args, b"n\n");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("/ -> /host (read-write)"), "{out}");
    assert!(
        out.contains("import it, with what it takes from this host? [y/N]"),
        "{out}"
    );
    assert!(out.contains("nothing imported"), "{out}");
    assert!(!r.join("target").exists(), "nothing was written");
}
