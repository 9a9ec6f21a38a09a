//! Envfile.lock and fingerprints on the real engines (ignored unless run with `--run-ignored all`, as `scripts/test.sh` does).

mod common;

use std::process::Command;

use common::{Project, TEST_IMAGE, docker, e2e, envrig_home, unique};

fn fingerprints(run: &dyn Fn(&[&str]) -> common::Run) -> Vec<(String, String)> {
    let st = run(&["status", "--json"]).ok().json();
    st["machines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["machine"].as_str().unwrap().to_string(),
                m["fingerprint"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn the_lock_pins_images_and_fingerprints_across_checkouts() {
    e2e();
    // An image of this test's own, so that moving and retagging it disturbs no other test.
    let image = format!("envrig-test/{}:1", unique("lockimg"));
    docker(&["tag", TEST_IMAGE, &image]).ok();
    let name = unique("lock");
    let text = format!(
        "[project]\nname = \"{name}\"\n[boxes.bb]\ndocker = \"{image}\"\n[defaults]\nbox = \"bb\"\n[machines.web]\n[[machines.web.provision]]\nshell = \"echo web\"\n[machines.db]\n"
    );
    let a = Project::new(&text);
    let r = a.envrig(&["up"]).ok();
    assert!(r.stderr.contains("wrote Envfile.lock"), "{}", r.stderr);
    let lock = std::fs::read_to_string(a.path().join("Envfile.lock")).unwrap();
    assert!(
        !lock.contains(a.path().to_str().unwrap()),
        "no host path: {lock}"
    );
    let fa = fingerprints(&|args| a.envrig(args));
    assert!(fa.iter().all(|(_, f)| f.len() == 16), "{fa:?}");

    // The image moves to "another host" by save/load; a second checkout elsewhere, with its
    // own ENVRIG_HOME, gets the same fingerprints with --locked.
    let tar = a.path().join("image.tar");
    docker(&["save", "-o", tar.to_str().unwrap(), &image]).ok();
    docker(&["rmi", &image]).ok();
    docker(&["load", "-i", tar.to_str().unwrap()]).ok();
    let b = Project::new(&text);
    std::fs::write(b.path().join("Envfile.lock"), &lock).unwrap();
    let home = tempfile::tempdir().unwrap();
    let run_b = |args: &[&str]| envrig_home(b.path(), home.path(), args);
    run_b(&["up", "--locked"]).ok();
    assert_eq!(
        fingerprints(&run_b),
        fa,
        "the same Envfile and lock, the same fingerprints"
    );
    run_b(&["destroy", "-f"]).ok();

    // A changed Envfile is refused, naming the machine.
    std::fs::write(
        b.path().join("Envfile"),
        text.replace("[machines.db]\n", "[machines.db]\nmemory = \"64MiB\"\n"),
    )
    .unwrap();
    let r = run_b(&["up", "--locked"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("machine `db`"), "{}", r.stderr);
    assert!(!r.stderr.contains("machine `web`"), "{}", r.stderr);

    // The same name retagged to another image is refused, naming the box.
    std::fs::write(b.path().join("Envfile"), &text).unwrap();
    let cid = docker(&["create", &image, "true"])
        .ok()
        .stdout
        .trim()
        .to_string();
    docker(&["commit", &cid, &image]).ok();
    docker(&["rm", &cid]).ok();
    let r = run_b(&["up", "--locked"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("box `bb`"), "{}", r.stderr);
    // Without --locked, the pinned image is used, and that is said.
    let r = run_b(&["up"]).ok();
    assert!(r.stderr.contains("using sha256:"), "{}", r.stderr);
    assert_eq!(fingerprints(&run_b), fa);
    run_b(&["destroy", "-f"]).ok();
    // `envrig lock` moves the pin.
    run_b(&["lock"]).ok();
    assert_ne!(
        std::fs::read_to_string(b.path().join("Envfile.lock")).unwrap(),
        lock
    );
    run_b(&["up", "--locked", "--no-provision"]).ok();
    run_b(&["destroy", "-f"]).ok();
    let _ = docker(&["rmi", &image]);
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn a_libvirt_box_is_locked_by_its_sha256() {
    e2e();
    let guest = std::env::var("ENVRIG_TEST_GUEST")
        .unwrap_or_else(|_| "/var/cache/envrig-test/guests/small-latest".into());
    let home = tempfile::tempdir().unwrap();
    let name = unique("vmlock");
    let mut p = Project::new(&format!(
        "[project]\nname = \"{name}\"\n[boxes.tiny]\nlibvirt = \"{name}\"\n[machines.vm]\nbox = \"tiny\"\nprovider = \"libvirt\"\n"
    ));
    p.destroy_on_drop = false;
    let run = |args: &[&str]| envrig_home(p.path(), home.path(), args);
    run(&["box", "add", &name, &guest]).ok();
    run(&["lock"]).ok();
    let lock = std::fs::read_to_string(p.path().join("Envfile.lock")).unwrap();
    let sha = run(&["box", "list", "--json"]).ok().json()["boxes"][0]["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(lock.contains(&format!("id = \"sha256:{sha}\"")), "{lock}");
    assert!(lock.contains("size = "), "{lock}");
    // Another disk under the same box name is refused with --locked.
    let other = p.path().join("other.qcow2");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&other)
        .arg("16M")
        .status()
        .expect("end-to-end tests need qemu-img; run scripts/host-setup.sh");
    assert!(st.success());
    run(&["box", "add", &name, other.to_str().unwrap(), "--force"]).ok();
    let r = run(&["up", "--locked"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("box `tiny`"), "{}", r.stderr);
    run(&["box", "remove", &name]).ok();
}
