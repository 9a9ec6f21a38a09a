//! Hostile archives given to `envrig import` are refused with a clear message, before any
//! engine is touched, and nothing is written outside the target folder. No engine needed.

mod common;

use std::io::Write;
use std::path::Path;

use common::envrig_in;
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
    let before: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let r = envrig_in(root, &["import", archive.to_str().unwrap(), "-C", "target"]);
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
