//! The team's layer cache, end to end on the rig of real engines: a registry of this test's
//! on the rig's link, three Docker engines standing for three teammates' hosts (each its
//! own engine state and its own `ENVRIG_HOME`). A layer baked and pushed on one host is
//! pulled on another, whose `up` runs no `once` step; a corrupted blob is refused and the
//! machine is provisioned instead.
//!
//! It shares the rig with `e2e_engines.rs`, which kills a rig engine on purpose: the two
//! run one at a time (the `rig` test group in `.config/nextest.toml`).

mod common;

use std::path::Path;

use common::rig::{Registry, engine, rig};
use common::{Run, TEST_IMAGE, e2e, envrig_home_env, unique};

/// envrig on `host` (a rig engine's URI), in `dir`, with its own home and `cache`.
fn on(host: &str, dir: &Path, cache: &str, args: &[&str]) -> Run {
    envrig_home_env(
        dir,
        &dir.join("home"),
        &[("DOCKER_HOST", host), ("ENVRIG_CACHE", cache)],
        args,
    )
}

/// A checkout of the project on one host, destroyed when dropped.
struct Checkout {
    dir: tempfile::TempDir,
    host: String,
    cache: String,
}

impl Checkout {
    fn new(envfile: &str, host: &str, cache: &str) -> Checkout {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Envfile"), envfile).unwrap();
        Checkout {
            dir,
            host: host.to_string(),
            cache: cache.to_string(),
        }
    }

    fn envrig(&self, args: &[&str]) -> Run {
        on(&self.host, self.dir.path(), &self.cache, args)
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        let _ = self.envrig(&["destroy", "-f"]);
    }
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn a_layer_baked_on_one_host_is_pulled_on_another_and_a_corrupt_one_is_refused() {
    e2e();
    let rig = rig();
    let registry = Registry::on_link(&rig);
    let cache = format!("{}/team/{}", registry.addr, unique("cache"));
    // Three machines of three recipes (three layers); each step's output is unique to this
    // run, so a machine made from a pulled layer shows what host A's step wrote.
    let stamp = unique("baked");
    let envfile = format!(
        r#"[project]
name = "{}"

[boxes.bb]
docker = "{TEST_IMAGE}"

[defaults]
box = "bb"

[machines.web1]
provision = [{{ shell = "echo web1-{stamp} > /srv.txt" }}]
[machines.web2]
provision = [{{ shell = "echo web2-{stamp} > /srv.txt" }}]
[machines.db]
provision = [{{ shell = "echo db-{stamp} > /srv.txt" }}]
"#,
        unique("cache")
    );

    // Host A bakes and pushes the three layers.
    let a = Checkout::new(&envfile, &engine(&rig, "d1"), &cache);
    let up = a.envrig(&["up", "--push"]).ok();
    assert_eq!(
        up.stderr.matches("pushed layer").count(),
        3,
        "{}",
        up.stderr
    );
    let tags = registry.get(
        &format!("/v2/{}/tags/list", cache.split_once('/').unwrap().1),
        "application/json",
    );
    assert_eq!(tags.matches("docker-").count(), 3, "{tags}");

    // Host B: another engine, another home, another checkout: the three layers pulled, no
    // step runs, and the machines hold what host A's steps wrote.
    let b = Checkout::new(&envfile, &engine(&rig, "d2"), &cache);
    let up = b.envrig(&["up"]).ok();
    assert_eq!(
        up.stderr.matches("pulled layer").count(),
        3,
        "{}",
        up.stderr
    );
    assert!(!up.stderr.contains("running step"), "{}", up.stderr);
    for (m, want) in [("web1", "web1"), ("web2", "web2"), ("db", "db")] {
        let r = b.envrig(&["exec", m, "--", "cat", "/srv.txt"]).ok();
        assert_eq!(r.stdout, format!("{want}-{stamp}\n"));
    }

    // A blob of db's layer corrupted in the registry: host C refuses it (the engine checks
    // every digest), provisions db itself, and still takes the webs' layers.
    // db's fingerprint, from the lock file host A wrote.
    let lock = std::fs::read_to_string(a.dir.path().join("Envfile.lock")).unwrap();
    let db = lock
        .split("[machines.db]")
        .nth(1)
        .expect("db in Envfile.lock");
    let fp = db
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint = \""))
        .expect("db's fingerprint")
        .trim_end_matches('"');
    let db_tag = format!("docker-{}", &fp[..16]);
    assert!(tags.contains(&db_tag), "{db_tag} not in {tags}");
    let repo = cache.split_once('/').unwrap().1;
    let manifest = registry.get(
        &format!("/v2/{repo}/manifests/{db_tag}"),
        "application/vnd.docker.distribution.manifest.v2+json",
    );
    let m: serde_json::Value = serde_json::from_str(&manifest).unwrap_or_else(|e| {
        panic!("no manifest for {db_tag} ({e}): {manifest}");
    });
    let top = m["layers"].as_array().unwrap().last().unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let file = registry.blob_file(&top);
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();

    let c = Checkout::new(&envfile, &engine(&rig, "d3"), &cache);
    let up = c.envrig(&["up"]).ok();
    assert!(
        up.stderr.contains("is not used") && up.stderr.contains("verification failed"),
        "{}",
        up.stderr
    );
    assert_eq!(
        up.stderr.matches("pulled layer").count(),
        2,
        "{}",
        up.stderr
    );
    assert!(up.stderr.contains("[db] running step"), "{}", up.stderr);
    let r = c.envrig(&["exec", "db", "--", "cat", "/srv.txt"]).ok();
    assert_eq!(r.stdout, format!("db-{stamp}\n"));

    // Pushing with no cache to push to is a usage error, before anything is made.
    let none = tempfile::tempdir().unwrap();
    std::fs::write(none.path().join("Envfile"), &envfile).unwrap();
    let r = envrig_home_env(
        none.path(),
        &none.path().join("home"),
        &[("DOCKER_HOST", &engine(&rig, "d1")), ("ENVRIG_CACHE", "")],
        &["up", "--push"],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("needs a cache"), "{}", r.stderr);
}

/// A VM's layer: an artifact of envrig's own in a registry on loopback, pushed from one
/// `ENVRIG_HOME` (one box store: a host) and pulled into another over the same box; a blob
/// corrupted in the registry is refused by envrig's own check and the VM provisioned.
#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn a_vm_layer_goes_through_the_registry_checked() {
    e2e();
    let registry = Registry::on("127.0.0.1");
    let cache = format!("{}/team/{}", registry.addr, unique("vmcache"));
    let stamp = unique("vm");
    let envfile = format!(
        r#"[project]
name = "{}"
provider = "libvirt"

[boxes.tiny]
libvirt = "{}"

[machines.vm]
box = "tiny"
memory = "256MiB"
provision = [{{ shell = "echo {stamp} > /root/marker" }}]
"#,
        unique("vmcache"),
        common::guest()
    );
    let host = |dir: &Path, args: &[&str]| {
        envrig_home_env(dir, &dir.join("home"), &[("ENVRIG_CACHE", &cache)], args)
    };
    struct Gone<'a>(&'a dyn Fn(&Path, &[&str]) -> Run, std::path::PathBuf);
    impl Drop for Gone<'_> {
        fn drop(&mut self) {
            let _ = (self.0)(&self.1, &["destroy", "-f"]);
        }
    }
    let checkout = || {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("Envfile"), &envfile).unwrap();
        d
    };

    let a = checkout();
    let _a = Gone(&host, a.path().to_path_buf());
    let up = host(a.path(), &["up", "--push"]).ok();
    assert!(up.stderr.contains("pushed layer"), "{}", up.stderr);
    host(a.path(), &["destroy", "-f"]).ok();

    let b = checkout();
    let _b = Gone(&host, b.path().to_path_buf());
    let up = host(b.path(), &["up"]).ok();
    assert!(up.stderr.contains("pulled layer"), "{}", up.stderr);
    assert!(!up.stderr.contains("running step"), "{}", up.stderr);
    let r = host(b.path(), &["exec", "vm", "--", "cat", "/root/marker"]).ok();
    assert_eq!(r.stdout, format!("{stamp}\n"));
    host(b.path(), &["destroy", "-f"]).ok();

    // The disk's blob corrupted in the registry.
    let repo = cache.split_once('/').unwrap().1;
    let tags = registry.get(&format!("/v2/{repo}/tags/list"), "application/json");
    let tag = tags
        .split('"')
        .find(|t| t.starts_with("libvirt-"))
        .unwrap_or_else(|| panic!("no libvirt layer in {tags}"))
        .to_string();
    let manifest = registry.get(
        &format!("/v2/{repo}/manifests/{tag}"),
        "application/vnd.oci.image.manifest.v1+json",
    );
    let m: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    let disk = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["annotations"]["org.opencontainers.image.title"] == "disk.qcow2")
        .unwrap_or_else(|| panic!("no disk in {manifest}"))["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let file = registry.blob_file(&disk);
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();
    let c = checkout();
    let _c = Gone(&host, c.path().to_path_buf());
    let up = host(c.path(), &["up"]).ok();
    assert!(up.stderr.contains("is not used"), "{}", up.stderr);
    assert!(up.stderr.contains("running step"), "{}", up.stderr);
    let r = host(c.path(), &["exec", "vm", "--", "cat", "/root/marker"]).ok();
    assert_eq!(r.stdout, format!("{stamp}\n"));
}

/// A capsule through a registry: `export --to` sends the archive, `import REF` takes it
/// (checked against its digest) and imports it as a file; a corrupted blob is refused and
/// nothing is imported.
#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn a_capsule_goes_through_a_registry_and_a_corrupt_one_is_refused() {
    e2e();
    let registry = Registry::on("127.0.0.1");
    let repo = format!("team/{}", unique("capsule"));
    let reference = format!("{}/{repo}:bug-1", registry.addr);
    let p = common::Project::new(&format!(
        "[project]\nname = \"{}\"\n[boxes.bb]\ndocker = \"{TEST_IMAGE}\"\n[machines.web]\nbox = \"bb\"\n",
        unique("capsule")
    ));
    p.envrig(&["up"]).ok();
    p.envrig(&[
        "exec",
        "web",
        "--",
        "sh",
        "-c",
        "echo at-the-bug > /srv.txt",
    ])
    .ok();
    p.envrig(&["snapshot", "save", "bug"]).ok();
    let sent = p
        .envrig(&["export", "--snapshot", "bug", "--to", &reference, "--json"])
        .ok();
    assert_eq!(
        sent.json()["reference"],
        reference.as_str(),
        "{}",
        sent.stdout
    );

    let there = tempfile::tempdir().unwrap();
    let imported = common::envrig_in(there.path(), &["import", &reference]).ok();
    assert!(imported.stderr.contains("pulled"), "{}", imported.stderr);
    let r = common::envrig_in(there.path(), &["exec", "web", "--", "cat", "/srv.txt"]).ok();
    assert_eq!(r.stdout, "at-the-bug\n");
    common::envrig_in(there.path(), &["destroy", "-f"]).ok();

    // The archive's blob corrupted in the registry: refused, nothing imported.
    let manifest = registry.get(
        &format!("/v2/{repo}/manifests/bug-1"),
        "application/vnd.oci.image.manifest.v1+json",
    );
    let m: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    let blob = m["layers"][0]["digest"].as_str().unwrap().to_string();
    let file = registry.blob_file(&blob);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let r = common::envrig_in(elsewhere.path(), &["import", &reference]);
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.to_lowercase().contains("digest"), "{}", r.stderr);
    assert!(!elsewhere.path().join("Envfile").exists());
}
