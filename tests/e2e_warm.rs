//! Warm starts through the real binary against the real libvirtd: a layer baked with its
//! machine's memory, clones restored from it that keep its processes yet are new machines
//! (ignored unless run by `scripts/test.sh`; a missing libvirtd, guest or box fails).

mod common;

use std::path::Path;

use common::{Run, e2e, envrig_home, guest, unique};

/// Runs `script` in `machine` of the project in `dir`; its stdout.
fn sh(dir: &Path, home: &Path, machine: &str, script: &str) -> String {
    let r = envrig_home(dir, home, &["exec", machine, "--", "sh", "-c", script]);
    assert_eq!(r.code, 0, "in {machine}: {}\n{}", r.stderr, r.stdout);
    r.stdout
}

/// What makes a machine itself: hostname, machine-id, private MAC and address, SSH host key.
#[derive(Debug, Clone, PartialEq)]
struct Identity {
    hostname: String,
    machine_id: String,
    mac: String,
    address: String,
    host_key: String,
}

fn identity(dir: &Path, home: &Path, machine: &str, host_key_cmd: &str) -> Identity {
    // The address comes with the renewed lease: tried for a bounded time.
    let script = format!(
        "hostname; cat /etc/machine-id 2>/dev/null || echo none; cat /sys/class/net/eth1/address; \
         i=0; while [ $i -lt 50 ] && ! ip -4 -o addr show eth1 | grep -q inet; do i=$((i+1)); sleep 0.2; done; \
         ip -4 -o addr show eth1 | awk '{{print $4}}'; {host_key_cmd}"
    );
    let out = sh(dir, home, machine, &script);
    let l: Vec<&str> = out.lines().collect();
    assert!(l.len() >= 5, "identity of {machine}: {out}");
    Identity {
        hostname: l[0].into(),
        machine_id: l[1].into(),
        mac: l[2].into(),
        address: l[3].into(),
        host_key: l[4].into(),
    }
}

fn assert_all_differ(ids: &[&Identity]) {
    for (i, a) in ids.iter().enumerate() {
        for b in &ids[i + 1..] {
            assert_ne!(a.machine_id, b.machine_id, "{a:?} {b:?}");
            assert_ne!(a.mac, b.mac, "{a:?} {b:?}");
            assert_ne!(a.host_key, b.host_key, "{a:?} {b:?}");
        }
    }
}

/// Destroys the projects in its folders when dropped, passed or not.
struct Down<'a>(Vec<&'a Path>, &'a Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        for d in self.0.iter().filter(|d| d.join("Envfile").is_file()) {
            let _ = envrig_home(d, self.1, &["destroy", "-f"]);
        }
    }
}

fn up(dir: &Path, home: &Path) -> Run {
    let r = envrig_home(dir, home, &["up"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    r
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn warm_clones_of_one_layer_keep_its_processes_and_are_new_machines() {
    e2e();
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let tag = unique("warm");
    // Two machines of one recipe (the hostname is not part of it): one layer for both. The
    // step starts a counter that lives in memory only, and counts its own runs on disk.
    let envfile = |name: &str| {
        format!(
            "[project]\nname = \"{name}\"\nwarm = true\n[boxes.tiny]\nlibvirt = \"{}\"\n[defaults]\nbox = \"tiny\"\nprovider = \"libvirt\"\nmemory = \"192MiB\"\n[[defaults.provision]]\nshell = \"echo {tag} >> /root/runs; (i=0; while true; do i=$((i+1)); echo $i > /run/counter; sleep 1; done) >/dev/null 2>&1 </dev/null &\"\n[machines.web1]\n[machines.web2]\n",
            guest()
        )
    };
    let a = common::Project::in_subfolder(work.path(), "a", &envfile(&format!("{tag}-a")));
    let b = common::Project::in_subfolder(work.path(), "b", &envfile(&format!("{tag}-b")));
    let h = home.path();
    let _down = Down(vec![&a, &b], h);
    let r = up(&a, h);
    assert!(r.stderr.contains("baked layer"), "{}", r.stderr);
    let layers: Vec<_> = std::fs::read_dir(h.join("boxes"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with("-wn"))
        .collect();
    assert_eq!(layers.len(), 1, "one warm layer for both machines");
    let memory = layers[0].path().join("memory.save");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&memory)
        .unwrap_or_else(|e| panic!("{}: {e}", memory.display()))
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the memory image is root's alone");
    let dropbear =
        "dropbearkey -y -f /etc/dropbear/dropbear_ed25519_host_key | grep -o 'SHA256:[^ ]*'";
    let a1 = identity(&a, h, "web1", dropbear);

    let r = up(&b, h);
    for m in ["web1", "web2"] {
        assert!(
            r.stderr.contains(&format!("[{m}] started warm")),
            "{m} started warm: {}",
            r.stderr
        );
    }
    assert!(!r.stderr.contains("booted cold"), "{}", r.stderr);
    // The counter started by the step before the layer was baked runs on in both clones:
    // their memory is the layer's, not a boot's; the step itself did not run again.
    for m in ["web1", "web2"] {
        let out = sh(
            &b,
            h,
            m,
            "cat /run/counter; sleep 2.5; cat /run/counter; cat /root/runs",
        );
        let l: Vec<&str> = out.lines().collect();
        let (first, later): (u32, u32) = (l[0].parse().unwrap(), l[1].parse().unwrap());
        assert!(
            first >= 1 && later > first,
            "{m}: the counter runs on: {out}"
        );
        assert_eq!(
            l[2..],
            [tag.as_str()],
            "{m}: the step ran once, in the layer: {out}"
        );
    }
    // Each clone is a machine of its own: its hostname, machine-id, MAC, address, host keys.
    let b1 = identity(&b, h, "web1", dropbear);
    let b2 = identity(&b, h, "web2", dropbear);
    assert_eq!(
        (b1.hostname.as_str(), b2.hostname.as_str()),
        ("web1", "web2")
    );
    assert_ne!(b1.address, b2.address);
    assert_all_differ(&[&a1, &b1, &b2]);
    // They find each other by name, and SSH takes the environment's key with the new host key.
    let out = sh(
        &b,
        h,
        "web2",
        "ping -c1 -W5 web1 >/dev/null && echo reached",
    );
    assert_eq!(out, "reached\n");
    let r = envrig_home(&b, h, &["ssh", "web1", "--", "hostname"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "web1\n"), "{}", r.stderr);
    // Its drift baseline is the layer's, with what re-identification wrote: no drift.
    for m in ["web1", "web2"] {
        let j = envrig_home(&b, h, &["drift", m, "--json"]).ok().json();
        assert_eq!(j["drifted"], false, "{m}: {j}");
    }
    for d in [&a, &b] {
        assert_eq!(envrig_home(d, h, &["destroy", "-f"]).code, 0);
    }
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn a_real_debian_box_starts_warm_with_systemd_resolved_and_new_host_keys() {
    e2e();
    let dir = std::env::var("ENVRIG_TEST_DEBIAN_BOX")
        .unwrap_or_else(|_| "/var/cache/envrig-test/boxes/debian-latest".into());
    let boxfile = Path::new(&dir).join("debian.box");
    assert!(
        boxfile.is_file(),
        "{} is missing; run scripts/host-setup.sh",
        boxfile.display()
    );
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let h = home.path();
    let tag = unique("warmdeb");
    let envfile = |name: &str| {
        format!(
            "[project]\nname = \"{name}\"\nwarm = true\n[boxes.debian]\nlibvirt = \"debian\"\n[boxes.tiny]\nlibvirt = \"{}\"\n[machines.db]\nbox = \"tiny\"\nprovider = \"libvirt\"\nmemory = \"160MiB\"\nwarm = false\n[machines.vm]\nbox = \"debian\"\nprovider = \"libvirt\"\nmemory = \"512MiB\"\n[[machines.vm.provision]]\nshell = \"systemctl is-system-running --wait > /root/state || true; echo {tag} >> /root/runs\"\n",
            guest()
        )
    };
    let a = common::Project::in_subfolder(work.path(), "a", &envfile(&format!("{tag}-a")));
    let b = common::Project::in_subfolder(work.path(), "b", &envfile(&format!("{tag}-b")));
    let _down = Down(vec![&a, &b], h);
    let r = envrig_home(&a, h, &["box", "add", "debian", boxfile.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    up(&a, h);
    let openssh = "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub | awk '{print $2}'";
    let a_vm = identity(&a, h, "vm", openssh);
    let r = up(&b, h);
    assert!(r.stderr.contains("[vm] started warm"), "{}", r.stderr);
    assert!(!r.stderr.contains("[vm] booted cold"), "{}", r.stderr);
    let b_vm = identity(&b, h, "vm", openssh);
    assert_eq!(b_vm.hostname, "vm");
    assert_all_differ(&[&a_vm, &b_vm]);
    // systemd runs on, the step ran once (in the layer), systemd-resolved finds `db` by its
    // bare name on the clone's network, and SSH as vagrant takes the environment's key.
    let out = sh(
        &b,
        h,
        "vm",
        "sudo -n cat /root/state /root/runs; for i in $(seq 1 40); do getent hosts db >/dev/null && break; sleep 0.25; done; ping -c1 -W5 db >/dev/null && echo reached",
    );
    assert_eq!(out, format!("running\n{tag}\nreached\n"), "{out}");
    let r = envrig_home(&b, h, &["ssh", "vm", "--", "sudo", "-n", "id", "-u"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "0\n"), "{}", r.stderr);
    let j = envrig_home(&b, h, &["drift", "vm", "--json"]).ok().json();
    assert_eq!(j["drifted"], false, "{j}");
    for d in [&a, &b] {
        assert_eq!(envrig_home(d, h, &["destroy", "-f"]).code, 0);
    }
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn a_capsule_keeps_its_running_processes_through_export_and_import() {
    e2e();
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let h = home.path();
    // A VM whose step starts a counter kept in memory only (/run is a tmpfs: a boot starts
    // without it), and a container beside it.
    let text = format!(
        "[project]\nname = \"{}\"\nbake = false\n[boxes.tiny]\nlibvirt = \"{}\"\ndocker = \"{}\"\n[machines.vm]\nbox = \"tiny\"\nprovider = \"libvirt\"\nmemory = \"192MiB\"\n[[machines.vm.provision]]\nshell = \"(i=0; while true; do i=$((i+1)); echo $i > /run/counter; sleep 1; done) >/dev/null 2>&1 </dev/null &\"\n[machines.box]\nbox = \"tiny\"\nprovider = \"docker\"\n",
        unique("capsule"),
        guest(),
        common::TEST_IMAGE
    );
    let a = common::Project::in_subfolder(work.path(), "a", &text);
    let warm = work.path().join("warm");
    let cold = work.path().join("cold");
    let _down = Down(vec![&a, &warm, &cold], h);
    up(&a, h);
    let at = |d: &Path| -> u32 { sh(d, h, "vm", "cat /run/counter").trim().parse().unwrap() };
    // Counted a while, then saved: the moment is the snapshot.
    for _ in 0..40 {
        if at(&a) >= 5 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let r = envrig_home(&a, h, &["snapshot", "save", "s1"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let saved = at(&a);
    assert!(saved >= 5, "{saved}");
    let file = work.path().join("capsule.tar.zst");
    let r = envrig_home(
        &a,
        h,
        &["export", "--snapshot", "s1", "-o", file.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(envrig_home(&a, h, &["destroy", "-f"]).code, 0);

    // Resuming saved memory needs trust (and the guest is a box given as a host path).
    let import = |dir: &Path, extra: &[&str]| {
        let mut args = vec![
            "import",
            file.to_str().unwrap(),
            "-C",
            dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        envrig_home(work.path(), h, &args)
    };
    let r = import(&warm, &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("saved memory") && r.stderr.contains("--cold"),
        "{}",
        r.stderr
    );
    let r = import(&warm, &["--trust"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("[vm] resumed where it was saved"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("[box] restarted from its files"),
        "{}",
        r.stderr
    );
    // The counter goes on from where it was saved, in the same process: not from zero.
    let first = at(&warm);
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let later = at(&warm);
    assert!(
        first >= saved && later > first,
        "saved {saved}, then {first}, {later}"
    );
    // `--cold`: the disk alone, booted; nothing of the counter survives.
    let r = import(&cold, &["--trust", "--cold", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j = r.json();
    assert_eq!(j["resumed"], serde_json::json!([]), "{j}");
    let mut restarted: Vec<String> = serde_json::from_value(j["restarted"].clone()).unwrap();
    restarted.sort();
    assert_eq!(restarted, ["box", "vm"], "{j}");
    let out = sh(&cold, h, "vm", "cat /run/counter 2>/dev/null || echo none");
    assert_eq!(out, "none\n");
}
