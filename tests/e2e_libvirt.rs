//! The libvirt provider through the real binary, against the real libvirtd, booting the small
//! test guest (ignored unless run by `scripts/test.sh`; a missing libvirtd or guest fails).

mod common;

use std::process::Command;

use common::{Project, TEST_IMAGE, e2e, envrig_home, guest, unique};

fn domains() -> Vec<String> {
    let out = Command::new("virsh")
        .args(["-c", "qemu:///system", "list", "--all", "--name"])
        .output()
        .expect("end-to-end tests need virsh; run scripts/host-setup.sh");
    assert!(
        out.status.success(),
        "virsh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn a_vm_and_a_container_live_and_die_as_one_environment() {
    e2e();
    let name = unique("mixed");
    let port = common::free_port();
    let text = format!(
        "[project]\nname = \"{name}\"\nbake = false\n\n[boxes.tiny]\nlibvirt = \"{}\"\ndocker = \"{TEST_IMAGE}\"\n\n[machines.vm]\nbox = \"tiny\"\nprovider = \"libvirt\"\nmemory = \"256MiB\"\nports = [\"127.0.0.1:{port}:8080\"]\nenv = {{ ROLE = \"vm\" }}\n[[machines.vm.provision]]\nshell = \"echo provisioned > /root/p; mkdir -p /srv/www; echo served by the vm > /srv/www/index.html; busybox httpd -p 8080 -h /srv/www\"\n[[machines.vm.provision]]\nfile = {{ source = \"conf.txt\", destination = \"/etc/envrig-conf.txt\" }}\n\n[machines.box]\nbox = \"tiny\"\n",
        guest()
    );
    let p = Project::new(&text);
    std::fs::write(p.path().join("conf.txt"), "from the host\n").unwrap();
    let r = p.envrig(&["up"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let st = p.envrig(&["status", "--json"]).ok().json();
    let row = |m: &str| {
        st["machines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["machine"] == m)
            .unwrap()
            .clone()
    };
    assert_eq!(
        (row("vm")["provider"].as_str(), row("vm")["state"].as_str()),
        (Some("libvirt"), Some("running"))
    );
    assert_eq!(
        (
            row("box")["provider"].as_str(),
            row("box")["state"].as_str()
        ),
        (Some("docker"), Some("running"))
    );
    let vm_name = row("vm")["resource_name"].as_str().unwrap().to_string();
    assert!(domains().contains(&vm_name));
    // The forwarded port answers on 127.0.0.1 (an HTTP server the step started).
    {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        c.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").unwrap();
        let mut body = String::new();
        let _ = c.read_to_string(&mut body);
        assert!(body.contains("served by the vm"), "{body}");
    }
    // `port` says where the VM's port is forwarded to (passt).
    assert_eq!(
        p.envrig(&["port", "vm"]).ok().stdout,
        format!("8080/tcp -> 127.0.0.1:{port}\n")
    );
    assert_eq!(
        row("vm")["ports"],
        serde_json::json!([format!("127.0.0.1:{port}->8080/tcp")])
    );

    // exec: output and exit code; the machine's env, hostname, provisioning and file step.
    let r = p.envrig(&[
        "exec",
        "vm",
        "--",
        "sh",
        "-c",
        "echo $ROLE $(hostname); cat /root/p /etc/envrig-conf.txt; exit 5",
    ]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (5, "vm vm\nprovisioned\nfrom the host\n"),
        "{}",
        r.stderr
    );
    // A second up is a no-op.
    let r = p.envrig(&["up"]).ok();
    assert!(r.stderr.contains("2 unchanged"), "{}", r.stderr);
    // The container and the VM reach each other by name: the container is on the VM
    // network's bridge, its DNS forwards to the network's, where its name is registered.
    let get = |from: &str, to: &str, port: u16| {
        let script = format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {to} {port}");
        p.envrig(&["exec", from, "--", "sh", "-c", &script])
            .ok()
            .stdout
    };
    assert!(get("box", "vm", 8080).ends_with("served by the vm\n"));
    p.envrig(&[
        "exec",
        "box",
        "--",
        "sh",
        "-c",
        "mkdir -p /w && echo served by the box > /w/index.html && httpd -p 8081 -h /w",
    ])
    .ok();
    assert!(get("vm", "box", 8081).ends_with("served by the box\n"));

    // cp: 200 MB into the VM and back out over SSH, the same bytes; a folder keeps modes.
    {
        use common::follow::{sha256_of, write_big};
        let sum = write_big(&p.path().join("big.bin"), 200_000_000);
        p.envrig(&["cp", "big.bin", "vm:/root/"]).ok();
        let inside = p
            .envrig(&["exec", "vm", "--", "sha256sum", "/root/big.bin"])
            .ok()
            .stdout;
        assert_eq!(inside.split_whitespace().next(), Some(sum.as_str()));
        p.envrig(&["cp", "vm:/root/big.bin", "back.bin"]).ok();
        assert_eq!(sha256_of(&p.path().join("back.bin")), sum);
        p.envrig(&["exec", "vm", "--", "rm", "/root/big.bin"]).ok();
        std::fs::create_dir_all(p.path().join("tree/sub")).unwrap();
        std::fs::write(p.path().join("tree/sub/run.sh"), "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::Permissions::from_mode(0o750);
        std::fs::set_permissions(p.path().join("tree/sub/run.sh"), mode).unwrap();
        p.envrig(&["cp", "tree", "vm:/srv/copied"]).ok();
        let st = p.envrig(&[
            "exec",
            "vm",
            "--",
            "stat",
            "-c",
            "%a %U",
            "/srv/copied/sub/run.sh",
        ]);
        assert_eq!(st.ok().stdout, "750 root\n");
    }
    // logs: the VM's console and the container's output interleave, followed until Ctrl-C.
    {
        let r = p.envrig(&["logs", "vm", "--tail", "3"]).ok();
        assert!(
            !r.stdout.is_empty() && r.stdout.lines().count() <= 3,
            "{}",
            r.stdout
        );
        let mut f = common::follow::Following::start(p.path(), &["logs", "-f", "--tail", "0"]);
        std::thread::sleep(std::time::Duration::from_secs(1));
        p.envrig(&["exec", "vm", "--", "sh", "-c", "echo vm-live > /dev/ttyS0"])
            .ok();
        p.envrig(&[
            "exec",
            "box",
            "--",
            "sh",
            "-c",
            "echo box-live > /proc/1/fd/1",
        ])
        .ok();
        let limit = std::time::Duration::from_secs(30);
        assert!(f.wait_for("[vm] vm-live", limit), "{:?}", f.seen);
        assert!(f.wait_for("[box] box-live", limit), "{:?}", f.seen);
        assert_eq!(f.interrupt(), Some(0));
        // A guest without a journal says so.
        let r = p.envrig(&["logs", "--journal", "vm"]);
        assert!(
            r.code == 1 && r.stderr.contains("no journal"),
            "{}",
            r.stderr
        );
    }

    // halt keeps the disk; up brings the same domain back.
    p.envrig(&["halt", "vm"]).ok();
    let st = p.envrig(&["status", "--json"]).ok().json();
    let vm = st["machines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["machine"] == "vm")
        .unwrap()
        .clone();
    assert_eq!(vm["state"], "stopped");
    p.envrig(&["up"]).ok();
    assert_eq!(
        p.envrig(&["exec", "vm", "--", "cat", "/root/p"])
            .ok()
            .stdout,
        "provisioned\n"
    );
    // A restarted container is named again (its address may change).
    p.envrig(&["halt", "box"]).ok();
    p.envrig(&["up"]).ok();
    p.envrig(&["exec", "box", "--", "httpd", "-p", "8081", "-h", "/w"])
        .ok();
    assert!(get("vm", "box", 8081).ends_with("served by the box\n"));

    // destroy leaves no domain and no overlay.
    p.envrig(&["destroy", "-f"]).ok();
    assert!(!domains().contains(&vm_name), "the domain is gone");
    assert!(
        !std::path::Path::new("/var/lib/libvirt/images/envrig")
            .join(&vm_name)
            .exists(),
        "the overlay is gone"
    );
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn a_domain_destroyed_by_hand_is_recreated() {
    e2e();
    let text = format!(
        "[project]\nname = \"{}\"\n[boxes.tiny]\nlibvirt = \"{}\"\n[machines.vm]\nbox = \"tiny\"\nprovider = \"libvirt\"\n",
        unique("byhand"),
        guest()
    );
    let p = Project::new(&text);
    p.envrig(&["up"]).ok();
    let st = p.envrig(&["status", "--json"]).ok().json();
    let name = st["machines"][0]["resource_name"]
        .as_str()
        .unwrap()
        .to_string();
    let virsh = |args: &[&str]| {
        Command::new("virsh")
            .args(["-c", "qemu:///system"])
            .args(args)
            .output()
            .unwrap()
    };
    virsh(&["destroy", &name]);
    virsh(&["undefine", &name, "--snapshots-metadata"]);
    let st = p.envrig(&["status", "--json"]).ok().json();
    assert_eq!(st["machines"][0]["state"], "not-created");
    p.envrig(&["up"]).ok();
    assert_eq!(
        p.envrig(&["exec", "vm", "--", "echo", "back"]).ok().stdout,
        "back\n"
    );
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn boxes_are_added_listed_used_and_removed_only_when_unused() {
    e2e();
    let home = tempfile::tempdir().unwrap();
    let name = unique("tiny");
    let text = format!(
        "[project]\nname = \"{name}\"\n[boxes.tiny]\nlibvirt = \"{name}\"\n[machines.vm]\nbox = \"tiny\"\nprovider = \"libvirt\"\n"
    );
    let mut p = Project::new(&text);
    p.destroy_on_drop = false;
    let run = |args: &[&str]| envrig_home(p.path(), home.path(), args);
    let r = run(&["box", "add", &name, &guest()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("added box `{name}`")),
        "{}",
        r.stderr
    );
    let again = run(&["box", "add", &name, &guest()]);
    assert_eq!(
        again.code, 2,
        "adding a name that exists is refused: {}",
        again.stderr
    );
    let list = run(&["box", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(v["schema"], "envrig.boxes/1");
    assert_eq!(v["boxes"][0]["name"], name.as_str());
    assert_eq!(v["boxes"][0]["kernel"], true);
    assert_eq!(v["boxes"][0]["sha256"].as_str().unwrap().len(), 64);

    let r = run(&["up"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        run(&["exec", "vm", "--", "echo", "from the box"]).stdout,
        "from the box\n"
    );
    let r = run(&["box", "remove", &name]);
    assert_eq!(r.code, 2, "a box in use cannot be removed: {}", r.stderr);
    assert!(r.stderr.contains("is used by"), "{}", r.stderr);
    assert_eq!(run(&["destroy", "-f"]).code, 0);
    let r = run(&["box", "remove", &name]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let list = run(&["box", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    assert!(v["boxes"].as_array().unwrap().is_empty());
}

fn networks() -> Vec<String> {
    let out = Command::new("virsh")
        .args(["-c", "qemu:///system", "net-list", "--all", "--name"])
        .output()
        .expect("end-to-end tests need virsh; run scripts/host-setup.sh");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[track_caller]
fn vm_sh(run: &dyn Fn(&[&str]) -> common::Run, machine: &str, script: &str) -> String {
    let r = run(&["exec", machine, "--", "sh", "-c", script]);
    assert_eq!(r.code, 0, "in {machine}: {}\n{}", r.stderr, r.stdout);
    r.stdout
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn vm_snapshots_restore_in_place_and_travel_as_one_file() {
    e2e();
    let text = format!(
        "[project]\nname = \"{}\"\n[boxes.tiny]\nlibvirt = \"{}\"\n[defaults]\nbox = \"tiny\"\nprovider = \"libvirt\"\nmemory = \"192MiB\"\n[machines.a]\nhostname = \"alpha\"\n[machines.b]\n",
        unique("vmsnap"),
        guest()
    );
    let p = Project::new(&text);
    let run = |args: &[&str]| p.envrig(args);
    run(&["up"]).ok();
    // The machines reach each other by name (and hostname) on their private network.
    // `up` returns when the guest agent answers; the guest's DHCP client on the private
    // network may finish a moment later (seen in CI): names are tried for a bounded time.
    let ping = |name: &str| {
        format!(
            "for i in $(seq 1 20); do ping -c 1 -W 2 {name} >/dev/null 2>&1 && exit 0; sleep 1; done; ping -c 1 -W 2 {name} || {{ cat /etc/resolv.conf; ip -4 -o addr; nslookup {name}; exit 1; }}"
        )
    };
    vm_sh(&run, "a", &ping("b"));
    vm_sh(&run, "b", &ping("a"));
    vm_sh(&run, "b", &ping("alpha"));
    let nets = networks();
    let env = run(&["status", "--json"]).ok().json()["env_id"]
        .as_str()
        .unwrap()
        .to_string();
    let net = nets
        .iter()
        .find(|n| n.contains(&env[..8]))
        .unwrap_or_else(|| panic!("no network of {env} in {nets:?}"))
        .clone();
    // The network left inactive (a host restart), then removed by hand: `up` starts it or
    // makes it again, and the machines find each other by name as before.
    let virsh = |args: &[&str]| {
        let o = Command::new("virsh")
            .args(["-c", "qemu:///system"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "virsh {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    for undefine in [false, true] {
        run(&["halt"]).ok();
        virsh(&["net-destroy", &net]);
        if undefine {
            virsh(&["net-undefine", &net]);
        }
        run(&["up"]).ok();
        vm_sh(&run, "a", &ping("b"));
        vm_sh(&run, "b", &ping("alpha"));
    }
    vm_sh(&run, "a", "echo a-marker > /root/marker");
    vm_sh(&run, "b", "echo b-marker > /root/marker");
    let before = run(&["status", "--json"]).ok().json();
    run(&["snapshot", "save", "s1"]).ok();
    let r = run(&["snapshot", "save", "s1"]);
    assert_eq!(r.code, 2, "saving over a name needs --force: {}", r.stderr);
    let list = run(&["snapshot", "list", "--json"]).ok().json();
    assert_eq!(list["snapshots"][0]["name"], "s1");
    assert_eq!(
        list["snapshots"][0]["machines"],
        serde_json::json!(["a", "b"])
    );

    vm_sh(
        &run,
        "a",
        "rm /root/marker; echo changed > /root/changed; sync",
    );
    vm_sh(&run, "b", "rm /root/marker; sync");
    // One machine back; the other keeps its change.
    run(&["snapshot", "restore", "s1", "b"]).ok();
    assert_eq!(vm_sh(&run, "b", "cat /root/marker"), "b-marker\n");
    assert_eq!(vm_sh(&run, "a", "ls /root"), "changed\n");
    // All back, in place: the same domains, running.
    run(&["snapshot", "restore", "s1"]).ok();
    assert_eq!(
        vm_sh(&run, "a", "ls /root; cat /root/marker"),
        "marker\na-marker\n"
    );
    let after = run(&["status", "--json"]).ok().json();
    for i in 0..2 {
        let (b, a) = (&before["machines"][i], &after["machines"][i]);
        assert_eq!(a["state"], "running");
        assert_eq!(a["resource_name"], b["resource_name"]);
    }

    // Export the snapshot, destroy, import elsewhere: the marker is there.
    vm_sh(&run, "a", "rm /root/marker; sync");
    let file = p.path().join("vms.tar.zst");
    run(&["export", "--snapshot", "s1", "-o", file.to_str().unwrap()]).ok();
    run(&["destroy", "-f"]).ok();
    for m in before["machines"].as_array().unwrap() {
        assert!(!domains().contains(&m["resource_name"].as_str().unwrap().to_string()));
    }
    assert!(!networks().contains(&net), "destroy removes the network");
    let other = tempfile::tempdir().unwrap();
    let target = other.path().join("copy");
    // The test guest is a box given as a host path: a disk outside the box store, which an
    // archive gets only with --trust.
    let import = |extra: &[&str]| {
        let mut args = vec!["import", file.to_str().unwrap(), "-C", "copy"];
        args.extend_from_slice(extra);
        common::envrig_in(other.path(), &args)
    };
    let r = import(&[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("machines.a.box"), "{}", r.stderr);
    let r = import(&["--trust"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let imported = |args: &[&str]| common::envrig_in(&target, args);
    assert_eq!(vm_sh(&imported, "a", "cat /root/marker"), "a-marker\n");
    assert_eq!(vm_sh(&imported, "b", "cat /root/marker"), "b-marker\n");
    let list = imported(&["snapshot", "list", "--json"]).ok().json();
    assert_eq!(list["snapshots"][0]["name"], "s1");
    vm_sh(&imported, "b", &ping("alpha"));
    let st = imported(&["status", "--json"]).ok().json();
    imported(&["destroy", "-f"]).ok();
    for m in st["machines"].as_array().unwrap() {
        let name = m["resource_name"].as_str().unwrap().to_string();
        assert!(!domains().contains(&name));
        assert!(
            !std::path::Path::new("/var/lib/libvirt/images/envrig")
                .join(&name)
                .exists()
        );
    }
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn a_vm_packaged_as_a_box_brings_its_files_without_provisioning() {
    e2e();
    let home = tempfile::tempdir().unwrap();
    let name = unique("vmpkg");
    let text = format!(
        "[project]\nname = \"{name}\"\n[boxes.tiny]\nlibvirt = \"{}\"\n[machines.vm]\nbox = \"tiny\"\nprovider = \"libvirt\"\n[[machines.vm.provision]]\nshell = \"echo baked > /opt-baked; echo ran >> /root/count\"\n",
        guest()
    );
    let p = Project::new(&text);
    let run = |args: &[&str]| envrig_home(p.path(), home.path(), args);
    run(&["up"]).ok();
    let r = run(&["package", "vm", "--as", "baked"]).ok();
    assert!(r.stderr.contains("packaged `vm`"), "{}", r.stderr);
    let boxes = run(&["box", "list", "--json"]).ok().json();
    assert_eq!(boxes["boxes"][0]["name"], "baked", "{boxes}");
    let labels: serde_json::Value = serde_json::from_slice(
        &std::fs::read(home.path().join("boxes/baked/labels.json")).unwrap(),
    )
    .unwrap();
    assert!(
        labels["dev.envrig.fingerprint"]
            .as_str()
            .is_some_and(|f| f.len() == 16),
        "{labels}"
    );
    run(&["destroy", "-f"]).ok();

    let q = Project::new(&format!(
        "[project]\nname = \"{name}-b\"\n[boxes.baked]\nlibvirt = \"baked\"\n[machines.vm]\nbox = \"baked\"\nprovider = \"libvirt\"\n"
    ));
    let run_q = |args: &[&str]| envrig_home(q.path(), home.path(), args);
    run_q(&["up"]).ok();
    assert_eq!(
        vm_sh(&run_q, "vm", "cat /opt-baked /root/count"),
        "baked\nran\n"
    );
    run_q(&["destroy", "-f"]).ok();
    run_q(&["box", "remove", "baked"]).ok();
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn ssh_uses_a_key_of_the_environment_and_the_pinned_host_key() {
    e2e();
    let home = tempfile::tempdir().unwrap();
    let text = format!(
        "[project]\nname = \"{}\"\n[boxes.tiny]\nlibvirt = \"{}\"\n[machines.vm]\nbox = \"tiny\"\nprovider = \"libvirt\"\nenv = {{ ROLE = \"vm\" }}\n[[machines.vm.provision]]\nfile = {{ source = \"f.txt\", destination = \"/etc/f.txt\" }}\n",
        unique("vmssh"),
        guest()
    );
    let mut p = Project::new(&text);
    p.destroy_on_drop = false;
    std::fs::write(p.path().join("f.txt"), "by the agent\n").unwrap();
    let run = |args: &[&str]| envrig_home(p.path(), home.path(), args);
    run(&["up"]).ok();
    let r = run(&[
        "ssh",
        "vm",
        "--",
        "sh",
        "-c",
        "echo $((6*7)) from $(hostname); exit 7",
    ]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (7, "42 from vm\n"),
        "{}",
        r.stderr
    );

    let config = run(&["ssh-config", "vm"]).ok().stdout;
    let field = |k: &str| {
        config
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{k} ")))
            .unwrap_or_else(|| panic!("no {k} in {config}"))
            .to_string()
    };
    let (port, identity, known) = (
        field("Port"),
        field("IdentityFile"),
        field("UserKnownHostsFile"),
    );
    assert!(
        identity.starts_with(home.path().to_str().unwrap()),
        "{identity}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&identity).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(
        std::fs::read_to_string(&known)
            .unwrap()
            .starts_with(&format!("[127.0.0.1]:{port} ssh-")),
        "the host key is pinned at first contact"
    );
    // The box's own (insecure) key no longer opens the machine: it was replaced.
    let ssh = |key: &str, known_hosts: &str| {
        Command::new("ssh")
            .args(["-i", key, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"])
            .args(["-o", &format!("UserKnownHostsFile={known_hosts}")])
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=10"])
            .args(["-p", &port, "root@127.0.0.1", "true"])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("end-to-end tests need OpenSSH's client; run scripts/host-setup.sh")
    };
    let box_key = std::path::Path::new(&guest()).join("insecure_key");
    assert_eq!(
        ssh(box_key.to_str().unwrap(), &known).status.code(),
        Some(255)
    );
    assert_eq!(ssh(&identity, &known).status.code(), Some(0));

    // Commands and uploads over SSH (as for a guest without an agent): output, exit code,
    // the machine's env, a file provisioned.
    std::fs::write(p.path().join("f.txt"), "over SSH\n").unwrap();
    let over_ssh = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_envrig"))
            .args(args)
            .current_dir(p.path())
            .env("ENVRIG_HOME", home.path())
            .env("ENVRIG_LIBVIRT_EXEC", "ssh")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        common::Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    };
    let r = over_ssh(&[
        "exec",
        "vm",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 4",
    ]);
    assert_eq!((r.code, r.stdout.as_str()), (4, "out\n"), "{}", r.stderr);
    assert!(r.stderr.contains("err"), "{}", r.stderr);
    over_ssh(&["provision"]).ok();
    let r = over_ssh(&["exec", "vm", "--", "sh", "-c", "echo $ROLE; cat /etc/f.txt"]);
    assert_eq!(r.stdout, "vm\nover SSH\n", "{}", r.stderr);

    // A host key that is not the pinned one is refused.
    let pinned = std::fs::read_to_string(&known).unwrap();
    let other_key = std::fs::read_to_string(format!("{identity}.pub")).unwrap();
    std::fs::write(&known, format!("[127.0.0.1]:{port} {}", other_key.trim())).unwrap();
    let r = run(&["ssh", "vm", "--", "true"]);
    assert_eq!(r.code, 255, "{}", r.stderr);
    std::fs::write(&known, pinned).unwrap();

    // The login user was reported by the guest: one that is an ssh option never reaches ssh.
    let keys_dir = std::path::Path::new(&identity).parent().unwrap();
    let user_file = std::fs::read_dir(keys_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|f| f.extension().is_some_and(|x| x == "user"))
        .expect("the login user is recorded next to the key");
    let recorded = std::fs::read_to_string(&user_file).unwrap();
    let marker = home.path().join("pwned");
    std::fs::write(
        &user_file,
        format!("-oProxyCommand=touch {}", marker.display()),
    )
    .unwrap();
    for args in [&["ssh", "vm", "--", "true"][..], &["ssh-config", "vm"][..]] {
        let r = run(args);
        assert_eq!(r.code, 1, "{args:?}: {}{}", r.stdout, r.stderr);
        assert!(r.stderr.contains("not a user name"), "{}", r.stderr);
        assert!(!r.stdout.contains("ProxyCommand"), "{}", r.stdout);
    }
    let made: Vec<_> = std::fs::read_dir(home.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("pwned"))
        .collect();
    assert!(
        made.is_empty(),
        "ssh ran the guest's ProxyCommand: {made:?}"
    );
    std::fs::write(&user_file, recorded).unwrap();
    run(&["ssh", "vm", "--", "true"]).ok();

    // destroy takes the keys with the last machine.
    run(&["destroy", "-f"]).ok();
    assert!(
        !std::path::Path::new(&identity).exists(),
        "the environment's key is removed"
    );
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn synced_folders_copied_at_up_and_provision_when_asked_to() {
    e2e();
    let text = format!(
        "[project]\nname = \"{}\"\n[boxes.tiny]\nlibvirt = \"{}\"\n[machines.vm]\nbox = \"tiny\"\nprovider = \"libvirt\"\nsynced = [{{ host = \"./app\", guest = \"/srv/app\" }}]\n[machines.vm.libvirt]\nsynced = \"rsync\"\n",
        unique("vmcopy"),
        guest()
    );
    let dir = Project::new(&text);
    std::fs::create_dir_all(dir.path().join("app/sub")).unwrap();
    std::fs::write(dir.path().join("app/sub/a.txt"), "v1\n").unwrap();
    let run = |args: &[&str]| dir.envrig(args);
    let r = run(&["up"]).ok();
    assert!(
        r.stderr.contains("copied into /srv/app (not live"),
        "a copy is never silent: {}",
        r.stderr
    );
    let cat = || {
        run(&["exec", "vm", "--", "cat", "/srv/app/sub/a.txt"])
            .ok()
            .stdout
    };
    assert_eq!(cat(), "v1\n");
    std::fs::write(dir.path().join("app/sub/a.txt"), "v2\n").unwrap();
    assert_eq!(cat(), "v1\n", "a copy is not live");
    let r = run(&["provision"]).ok();
    assert!(r.stderr.contains("copied into /srv/app"), "{}", r.stderr);
    assert_eq!(cat(), "v2\n");
    run(&["destroy", "-f"]).ok();
}

/// Serves `body` over HTTP on a loopback port, honouring `Range: bytes=N-`. The first
/// `broken` responses stop after half the body (a download that breaks off). Returns the
/// port and the number of body bytes sent, by response.
fn serve(body: Vec<u8>, broken: usize) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<usize>>>) {
    use std::io::{BufRead, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sent2 = sent.clone();
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().take(8).enumerate() {
            let Ok(mut conn) = conn else { continue };
            conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
            let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
            let mut from = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(r) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    from = r.trim().trim_end_matches('-').parse().unwrap_or(0);
                }
            }
            let part = &body[from.min(body.len())..];
            let head = if from > 0 {
                format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {from}-{}/{}\r\nConnection: close\r\n\r\n",
                    part.len(),
                    body.len() - 1,
                    body.len()
                )
            } else {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    part.len()
                )
            };
            let upto = if n < broken {
                part.len() / 2
            } else {
                part.len()
            };
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(&part[..upto]);
            sent2.lock().unwrap().push(upto);
        }
    });
    (port, sent)
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn a_box_from_a_url_is_resumed_checked_and_boots() {
    e2e();
    // A vagrant-libvirt .box (gzip) of the small guest, carrying its kernel.
    let work = tempfile::tempdir().unwrap();
    let g = std::path::PathBuf::from(guest());
    for (from, to) in [
        ("disk.qcow2", "box.img"),
        ("vmlinuz", "vmlinuz"),
        ("initrd.img", "initrd.img"),
        ("cmdline", "cmdline"),
    ] {
        std::fs::copy(g.join(from), work.path().join(to)).unwrap();
    }
    std::fs::write(
        work.path().join("metadata.json"),
        r#"{"provider":"libvirt","format":"qcow2","virtual_size":1}"#,
    )
    .unwrap();
    let boxfile = work.path().join("small.box");
    let st = Command::new("tar")
        .args(["-czf", boxfile.to_str().unwrap(), "-C"])
        .arg(work.path())
        .args([
            "metadata.json",
            "box.img",
            "vmlinuz",
            "initrd.img",
            "cmdline",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let body = std::fs::read(&boxfile).unwrap();
    let sha = {
        use sha2::Digest;
        sha2::Sha256::digest(&body)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let (port, sent) = serve(body.clone(), 1);
    let url = format!("http://127.0.0.1:{port}/boxes/small.box");

    let home = tempfile::tempdir().unwrap();
    let name = unique("urlbox");
    let mut p = Project::new(&format!(
        "[project]\nname = \"{name}\"\n[boxes.tiny]\nlibvirt = \"{name}\"\n[machines.vm]\nbox = \"tiny\"\nprovider = \"libvirt\"\n"
    ));
    p.destroy_on_drop = false;
    let run = |args: &[&str]| envrig_home(p.path(), home.path(), args);
    let checksum = format!("sha256:{sha}");
    // The first try breaks off half way: nothing is listed, and it says how to go on.
    let r = run(&["box", "add", &name, &url, "--checksum", &checksum]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("resume"), "{}", r.stderr);
    assert_eq!(
        run(&["box", "list", "--json"]).ok().json()["boxes"],
        serde_json::json!([])
    );
    // The second resumes where it stopped and checks the whole.
    run(&["box", "add", &name, &url, "--checksum", &checksum]).ok();
    let sent = sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0] + sent[1], body.len(), "resumed, not fetched again");
    let boxes = run(&["box", "list", "--json"]).ok().json();
    assert_eq!(boxes["boxes"][0]["name"], name.as_str());
    assert_eq!(boxes["boxes"][0]["kernel"], true);

    // A checksum that does not match adds nothing.
    let (port2, _) = serve(body, 0);
    let bad = format!("sha256:{}", "0".repeat(64));
    let r = run(&[
        "box",
        "add",
        "other",
        &format!("http://127.0.0.1:{port2}/small.box"),
        "--checksum",
        &bad,
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("nothing was added"), "{}", r.stderr);
    assert_eq!(
        run(&["box", "list", "--json"]).ok().json()["boxes"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // The box boots.
    run(&["up"]).ok();
    assert_eq!(
        run(&["exec", "vm", "--", "echo", "from the url"])
            .ok()
            .stdout,
        "from the url\n"
    );
    run(&["destroy", "-f"]).ok();
    run(&["box", "remove", &name]).ok();
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn a_guest_that_does_not_boot_fails_up_with_its_console() {
    e2e();
    // The small guest's box, told to boot from a disk that does not exist.
    let bad = tempfile::tempdir().unwrap();
    let g = std::path::PathBuf::from(guest());
    for f in ["disk.qcow2", "vmlinuz", "initrd.img"] {
        std::fs::copy(g.join(f), bad.path().join(f)).unwrap();
    }
    std::fs::write(
        bad.path().join("cmdline"),
        "console=ttyS0 root=/dev/vdz panic=-1",
    )
    .unwrap();
    let text = format!(
        "[project]\nname = \"{}\"\n[boxes.bad]\nlibvirt = \"{}\"\n[machines.vm]\nbox = \"bad\"\nprovider = \"libvirt\"\n",
        unique("noboot"),
        bad.path().display()
    );
    let p = Project::new(&text);
    let t0 = std::time::Instant::now();
    let r = p.envrig(&["up"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("stopped while it booted") && r.stderr.contains("envrig-initramfs:"),
        "the error shows the end of the console: {}",
        r.stderr
    );
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(90),
        "it fails at once"
    );
    let st = p.envrig(&["status", "--json"]).ok().json();
    let name = st["machines"][0]["resource_name"]
        .as_str()
        .unwrap_or("")
        .to_string();
    p.envrig(&["destroy", "-f"]).ok();
    assert!(name.is_empty() || !domains().contains(&name));
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn synced_folders_are_live_through_virtiofs() {
    e2e();
    let text = format!(
        "[project]\nname = \"{}\"\n[boxes.tiny]\nlibvirt = \"{}\"\n[machines.vm]\nbox = \"tiny\"\nprovider = \"libvirt\"\nsynced = [{{ host = \"./app\", guest = \"/srv/app\" }}, {{ host = \"./conf\", guest = \"/etc/app\", mode = \"ro\" }}]\n",
        unique("vmlive"),
        guest()
    );
    let p = Project::new(&text);
    for d in ["app", "conf"] {
        std::fs::create_dir_all(p.path().join(d)).unwrap();
    }
    std::fs::write(p.path().join("conf/c.txt"), "conf\n").unwrap();
    let r = p.envrig(&["up"]).ok();
    assert!(
        !r.stderr.contains("copied"),
        "with virtiofsd on the host (scripts/host-setup.sh installs it) folders are live: {}",
        r.stderr
    );
    let sh = |script: &str| p.envrig(&["exec", "vm", "--", "sh", "-c", script]);
    // Host to guest, at once, without provisioning.
    std::fs::write(p.path().join("app/h.txt"), "from the host\n").unwrap();
    assert_eq!(sh("cat /srv/app/h.txt").ok().stdout, "from the host\n");
    std::fs::write(p.path().join("app/h.txt"), "from the host, longer now\n").unwrap();
    assert_eq!(
        sh("cat /srv/app/h.txt").ok().stdout,
        "from the host, longer now\n"
    );
    // Guest to host, at once, readable by others (umask 022).
    sh("echo from the guest > /srv/app/g.txt").ok();
    assert_eq!(
        std::fs::read_to_string(p.path().join("app/g.txt")).unwrap(),
        "from the guest\n"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(p.path().join("app/g.txt"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);
    // A read-only folder is read-only, whatever the guest does.
    assert_eq!(sh("cat /etc/app/c.txt").ok().stdout, "conf\n");
    let r = sh("mount -o remount,rw /etc/app; echo x > /etc/app/c.txt");
    assert_ne!(r.code, 0, "{}", r.stdout);
    assert_eq!(
        std::fs::read_to_string(p.path().join("conf/c.txt")).unwrap(),
        "conf\n"
    );
    // Mounted again after a restart.
    p.envrig(&["halt"]).ok();
    p.envrig(&["up"]).ok();
    assert_eq!(sh("cat /srv/app/g.txt").ok().stdout, "from the guest\n");
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn a_real_debian_vagrant_box_comes_up_with_ssh_and_systemd() {
    e2e();
    let dir = std::env::var("ENVRIG_TEST_DEBIAN_BOX")
        .unwrap_or_else(|_| "/var/cache/envrig-test/boxes/debian-latest".into());
    let boxfile = std::path::Path::new(&dir).join("debian.box");
    assert!(
        boxfile.is_file(),
        "{} is missing; run scripts/host-setup.sh",
        boxfile.display()
    );
    let home = tempfile::tempdir().unwrap();
    let name = unique("deb");
    // `vm` (systemd-resolved) does not depend on `db` (the small guest), yet finds it by
    // its bare name while it provisions: the network hands out a DNS search domain.
    let mut p = Project::new(&format!(
        "[project]\nname = \"{name}\"\n[boxes.debian]\nlibvirt = \"{name}\"\n[boxes.tiny]\nlibvirt = \"{}\"\ndocker = \"{TEST_IMAGE}\"\n[machines.db]\nbox = \"tiny\"\nprovider = \"libvirt\"\nmemory = \"160MiB\"\n[machines.web]\nbox = \"tiny\"\n[[machines.web.provision]]\nrun = \"always\"\nshell = \"mkdir -p /w && echo served by the container > /w/index.html && httpd -p 8081 -h /w\"\n[machines.vm]\nbox = \"debian\"\nprovider = \"libvirt\"\nmemory = \"512MiB\"\n[[machines.vm.provision]]\nshell = \"systemctl is-system-running --wait > /root/state || true\"\n[[machines.vm.provision]]\nshell = \"for i in $(seq 1 40); do getent hosts db && break; sleep 0.5; done; getent hosts db > /root/db-at-provisioning\"\n",
        guest()
    ));
    p.destroy_on_drop = false;
    let run = |args: &[&str]| envrig_home(p.path(), home.path(), args);
    run(&["box", "add", &name, boxfile.to_str().unwrap()]).ok();
    let boxes = run(&["box", "list", "--json"]).ok().json();
    assert_eq!(
        boxes["boxes"][0]["kernel"], true,
        "the box carries its kernel"
    );
    run(&["up"]).ok();
    // systemd came up whole; the machine's name is set.
    let r = run(&[
        "exec",
        "vm",
        "--user",
        "root",
        "--",
        "sh",
        "-c",
        "cat /root/state; hostname; cat /root/db-at-provisioning",
    ])
    .ok();
    assert!(r.stdout.starts_with("running\nvm\n"), "{}", r.stdout);
    // systemd-resolved answers with the canonical (fully qualified) name.
    let resolved = r.stdout.lines().last().unwrap_or_default();
    let names: Vec<&str> = resolved.split_whitespace().skip(1).collect();
    assert!(
        names
            .iter()
            .any(|n| *n == "db" || *n == format!("db.{name}.envrig.internal")),
        "`db` resolved while `vm` provisioned: {}",
        r.stdout
    );
    // `logs --journal`: the guest's journal, its tail, and followed (a line logged now).
    let r = run(&["logs", "--journal", "vm", "--tail", "5"]).ok();
    assert!((1..=5).contains(&r.stdout.lines().count()), "{}", r.stdout);
    let mut f = common::follow::Following::start_home(
        p.path(),
        home.path(),
        &["logs", "--journal", "-f", "vm", "--tail", "0"],
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    run(&[
        "exec",
        "vm",
        "--user",
        "root",
        "--",
        "logger",
        "-t",
        "envrigtest",
        "journal-live",
    ])
    .ok();
    let limit = std::time::Duration::from_secs(30);
    let seen = f.wait_until(
        |l| l.contains("envrigtest") && l.ends_with("journal-live"),
        limit,
    );
    assert!(seen, "{:?}", f.seen);
    assert_eq!(f.interrupt(), Some(0));
    // Bare and fully qualified names resolve through systemd-resolved, and answer.
    let r = run(&[
        "exec",
        "vm",
        "--",
        "sh",
        "-c",
        &format!(
            "getent hosts db.{name}.envrig.internal && ping -c1 -W5 db >/dev/null && echo pinged"
        ),
    ])
    .ok();
    assert!(r.stdout.contains("pinged"), "{}{}", r.stdout, r.stderr);
    // The container `web` by its bare name through systemd-resolved, and the VM from the
    // container by its name. (Its server is started by an `always` step: a machine made
    // from a baked layer of another run skips its `once` steps, and a layer keeps no process.)
    let r = run(&[
        "exec",
        "vm",
        "--",
        "bash",
        "-c",
        "exec 3<>/dev/tcp/web/8081 && printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3",
    ])
    .ok();
    assert!(
        r.stdout.ends_with("served by the container\n"),
        "{}{}",
        r.stdout,
        r.stderr
    );
    let r = run(&[
        "exec",
        "web",
        "--",
        "sh",
        "-c",
        "nc -w 5 vm 22 </dev/null | head -c 8",
    ])
    .ok();
    assert!(r.stdout.starts_with("SSH-2.0-"), "{}{}", r.stdout, r.stderr);
    // `exec` runs as the login user `ssh` uses, with a login environment, in their home.
    let r = run(&[
        "exec",
        "vm",
        "--",
        "sh",
        "-c",
        "echo ~; id -un; pwd; echo $USER $LOGNAME; test -n \"$LANG\" && echo lang",
    ])
    .ok();
    assert_eq!(
        r.stdout, "/home/vagrant\nvagrant\n/home/vagrant\nvagrant vagrant\nlang\n",
        "{}",
        r.stderr
    );
    let r = run(&["exec", "vm", "--", "sh", "-c", "touch ~/a.txt && ls ~"]).ok();
    assert!(r.stdout.contains("a.txt"), "{}", r.stdout);
    let r = run(&["ssh", "vm", "--", "sh", "-c", "echo ~; id -un; pwd"]).ok();
    assert_eq!(
        r.stdout, "/home/vagrant\nvagrant\n/home/vagrant\n",
        "ssh and exec agree: {}",
        r.stderr
    );
    // SSH as vagrant, with the environment's key: Vagrant's insecure key was replaced.
    let config = run(&["ssh-config", "vm"]).ok().stdout;
    assert!(config.contains("User vagrant"), "{config}");
    let r = run(&["ssh", "vm", "--", "sudo", "-n", "id", "-u"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "0\n"), "{}", r.stderr);
    let port = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("Port "))
        .unwrap()
        .to_string();
    let insecure = p.path().join("vagrant-insecure");
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/providers/libvirt/keys/vagrant.key.ed25519"
        ),
        &insecure,
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&insecure, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = Command::new("ssh")
        .args(["-i", insecure.to_str().unwrap(), "-o", "IdentitiesOnly=yes"])
        .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"])
        .args([
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=10",
        ])
        .args(["-p", &port, "vagrant@127.0.0.1", "true"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(255), "the insecure key is refused");
    run(&["destroy", "-f"]).ok();
    run(&["box", "remove", &name]).ok();
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn a_cloud_image_gets_the_key_from_a_nocloud_seed() {
    e2e();
    let dir = std::env::var("ENVRIG_TEST_CLOUD_BOX")
        .unwrap_or_else(|_| "/var/cache/envrig-test/boxes/cloud-latest".into());
    let dir = std::fs::canonicalize(&dir).unwrap_or_else(|e| {
        panic!("the cloud box {dir} is missing ({e}); run scripts/host-setup.sh")
    });
    // A box with cloud-init, no guest agent and no key of its own: only the seed lets us in.
    let text = format!(
        "[project]\nname = \"{}\"\n[boxes.cloud]\nlibvirt = \"{}\"\n[machines.vm]\nbox = \"cloud\"\nprovider = \"libvirt\"\nmemory = \"512MiB\"\n[[machines.vm.provision]]\nshell = \"echo provisioned over ssh > /root/p\"\n",
        unique("cloud"),
        dir.display()
    );
    let p = Project::new(&text);
    p.envrig(&["up"]).ok();
    let r = p.envrig(&[
        "exec",
        "vm",
        "--",
        "sh",
        "-c",
        "hostname; cat /root/p; exit 6",
    ]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (6, "vm\nprovisioned over ssh\n"),
        "{}",
        r.stderr
    );
    let config = p.envrig(&["ssh-config", "vm"]).ok().stdout;
    assert!(config.contains("User root"), "{config}");
    let r = p.envrig(&["ssh", "vm", "--", "id", "-u"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "0\n"), "{}", r.stderr);
    p.envrig(&["destroy", "-f"]).ok();
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn a_baked_vm_layer_is_backed_by_its_box_and_skips_once_steps() {
    e2e();
    let home = tempfile::tempdir().unwrap();
    let tag = unique("vmbake");
    let text = format!(
        "[project]\nname = \"vmbake\"\n[boxes.tiny]\nlibvirt = \"{}\"\n[machines.vm]\nbox = \"tiny\"\nprovider = \"libvirt\"\n[[machines.vm.provision]]\nname = \"setup\"\nshell = \"echo {tag} >> /root/count; echo baked > /opt-baked\"\n",
        guest()
    );
    let a = Project::new(&text);
    let run_a = |args: &[&str]| envrig_home(a.path(), home.path(), args);
    let r = run_a(&["up"]).ok();
    assert!(r.stderr.contains("baked layer"), "{}", r.stderr);
    let fp = run_a(&["status", "--json"]).ok().json()["machines"][0]["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let layer = home.path().join(format!("boxes/envrig-baked-{fp}"));
    let labels: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layer.join("labels.json")).unwrap()).unwrap();
    assert!(
        labels["dev.envrig.baked"]
            .as_str()
            .is_some_and(|f| f.starts_with(&fp)),
        "{labels}"
    );
    // A layer, not a copy: backed by the box, small.
    let info = Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(layer.join("disk.qcow2"))
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert!(info["backing-filename"].is_string(), "{info}");
    let box_size = std::fs::metadata(std::path::Path::new(&guest()).join("disk.qcow2"))
        .unwrap()
        .len();
    assert!(
        std::fs::metadata(layer.join("disk.qcow2")).unwrap().len() < box_size / 2,
        "the layer holds only what the steps changed"
    );

    let b = Project::new(&text);
    let run_b = |args: &[&str]| envrig_home(b.path(), home.path(), args);
    let r = run_b(&["up"]).ok();
    assert!(
        r.stderr
            .contains(&format!("using baked layer {}, 1 step skipped", &fp[..6])),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("running step"), "{}", r.stderr);
    assert_eq!(
        vm_sh(&run_b, "vm", "cat /opt-baked /root/count"),
        format!("baked\n{tag}\n")
    );
    // Its own machine-id and SSH host key, not those of the machine the layer was baked
    // from; SSH takes the new host key (pinned when it was made).
    let who = "cat /etc/machine-id 2>/dev/null || echo none; dropbearkey -y -f /etc/dropbear/dropbear_ed25519_host_key | grep -o 'SHA256:[^ ]*'";
    let (in_a, in_b) = (vm_sh(&run_a, "vm", who), vm_sh(&run_b, "vm", who));
    let (a_lines, b_lines): (Vec<&str>, Vec<&str>) =
        (in_a.lines().collect(), in_b.lines().collect());
    assert_eq!(b_lines.len(), 2, "{in_b}");
    assert_ne!(a_lines[0], b_lines[0], "machine-id: {in_a} / {in_b}");
    assert_ne!(a_lines[1], b_lines[1], "host key: {in_a} / {in_b}");
    let r = run_b(&["ssh", "vm", "--", "true"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    run_b(&["destroy", "-f"]).ok();
    run_a(&["destroy", "-f"]).ok();
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn vm_drift_lists_what_changed_inside_since_provisioning() {
    e2e();
    let home = tempfile::tempdir().unwrap();
    let text = format!(
        "[project]\nname = \"{}\"\nbake = false\n[boxes.tiny]\nlibvirt = \"{}\"\n[machines.vm]\nbox = \"tiny\"\nprovider = \"libvirt\"\n[[machines.vm.provision]]\nshell = \"mkdir -p /opt/app && echo one > /opt/app/conf && echo keep > /opt/app/keep\"\n",
        unique("vmdrift"),
        guest()
    );
    let p = Project::new(&text);
    let run = |args: &[&str]| envrig_home(p.path(), home.path(), args);
    run(&["up"]).ok();
    let drift = || {
        let j = run(&["drift", "vm", "--json"]).ok().json();
        let mut v: Vec<(String, String)> = j["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["kind"].as_str().unwrap().to_string(),
                    c["path"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(drift(), vec![], "a fresh machine has no drift");
    assert_eq!(run(&["drift", "vm", "--exit-code"]).code, 0);
    vm_sh(
        &run,
        "vm",
        "echo new > /opt/new; echo two-and-longer > /opt/app/conf; rm /opt/app/keep; echo x > /tmp/t; mkdir -p /var/log; echo x > /var/log/l",
    );
    assert_eq!(
        drift(),
        vec![
            ("added".to_string(), "/opt/new".to_string()),
            ("changed".to_string(), "/opt/app/conf".to_string()),
            ("deleted".to_string(), "/opt/app/keep".to_string()),
        ]
    );
    assert_eq!(run(&["drift", "vm", "--exit-code"]).code, 3);
    run(&["destroy", "-f"]).ok();
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn vm_generations_switch_and_roll_back_on_the_same_port() {
    e2e();
    let home = tempfile::tempdir().unwrap();
    let tag = unique("vmgen");
    let port = common::free_port();
    let text = |v: &str| {
        format!(
            "[project]\nname = \"vmgen\"\nimmutable = true\n[boxes.tiny]\nlibvirt = \"{}\"\n[machines.vm]\nbox = \"tiny\"\nprovider = \"libvirt\"\nports = [\"127.0.0.1:{port}:8080\"]\n[machines.vm.ready]\ncommand = \"wget -qO- http://127.0.0.1:8080/ | grep -q {v}\"\ntimeout = \"30s\"\n[[machines.vm.provision]]\nname = \"page\"\nshell = \"mkdir -p /www && echo {v}-{tag} > /www/index.html && (grep -q httpd /etc/inittab || echo '::respawn:/bin/busybox httpd -f -p 8080 -h /www' >> /etc/inittab) && kill -HUP 1\"\n",
            guest()
        )
    };
    let get = || common::http_get(port);
    let p = Project::new(&text("v1"));
    let run = |args: &[&str]| envrig_home(p.path(), home.path(), args);
    run(&["up"]).ok();
    assert_eq!(get(), format!("v1-{tag}"));
    p.write(&text("v2"));
    let r = run(&["up"]).ok();
    assert!(
        r.stderr
            .contains("out of date (step `page` changed): generation 2"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("switched to generation 2"),
        "{}",
        r.stderr
    );
    assert_eq!(get(), format!("v2-{tag}"));
    let st = run(&["status", "--json"]).ok().json();
    assert_eq!(st["machines"][0]["generation"], 2, "{st}");
    let r = run(&["rollback"]).ok();
    assert!(r.stderr.contains("generation 2 -> 1"), "{}", r.stderr);
    assert_eq!(get(), format!("v1-{tag}"));
    run(&["destroy", "-f"]).ok();
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn a_vm_generation_takes_the_machine_name_and_gives_it_back_on_rollback() {
    e2e();
    let home = tempfile::tempdir().unwrap();
    let name = unique("vmnames");
    let text = |v: &str| {
        format!(
            "[project]\nname = \"{name}\"\nimmutable = true\n[boxes.tiny]\nlibvirt = \"{}\"\n[defaults]\nbox = \"tiny\"\nprovider = \"libvirt\"\nmemory = \"192MiB\"\n[machines.a]\n[[machines.a.provision]]\nname = \"version\"\nshell = \"echo {v} > /root/version\"\n[machines.b]\n",
            guest()
        )
    };
    let p = Project::new(&text("v1"));
    let run = |args: &[&str]| envrig_home(p.path(), home.path(), args);
    run(&["up"]).ok();
    // b reaches a by name; the address behind the name is a's current generation.
    let addr_of_a = || {
        let out = vm_sh(&run, "b", "ping -c 1 -W 3 a | head -1");
        out.split(['(', ')']).nth(1).unwrap_or("").to_string()
    };
    let ip_of = |m: &str| {
        vm_sh(
            &run,
            m,
            "ip -4 -o addr show | grep -v ' lo ' | awk '{print $4}' | cut -d/ -f1 | tail -1",
        )
        .trim()
        .to_string()
    };
    let first = addr_of_a();
    assert_eq!(first, ip_of("a"));
    p.write(&text("v2"));
    let r = run(&["up"]).ok();
    assert!(
        r.stderr.contains("switched to generation 2"),
        "{}",
        r.stderr
    );
    assert_eq!(vm_sh(&run, "a", "cat /root/version"), "v2\n");
    assert_eq!(
        addr_of_a(),
        ip_of("a"),
        "the name follows the new generation"
    );
    run(&["rollback", "a"]).ok();
    assert_eq!(vm_sh(&run, "a", "cat /root/version"), "v1\n");
    assert_eq!(addr_of_a(), ip_of("a"), "and comes back on rollback");
    run(&["destroy", "-f"]).ok();
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn vm_hardware_keys_disk_size_graphics_video_cpu_mode_and_nested() {
    e2e();
    let envfile = |name: &str, size: &str| {
        format!(
            "[project]\nname = \"{name}\"\nbake = false\n[boxes.tiny]\nlibvirt = \"{}\"\n[machines.vm]\nbox = \"tiny\"\nprovider = \"libvirt\"\n[machines.vm.libvirt]\ndisk_size = \"{size}\"\ngraphics = \"vnc\"\nvideo = \"vga\"\ncpu_mode = \"maximum\"\n",
            guest()
        )
    };
    // What this host's hypervisor cannot give is refused before anything is made: nested
    // virtualisation under TCG, host-passthrough under TCG, a video card without a display.
    for (extra, says) in [
        ("nested = true\n", "needs KVM"),
        (
            "cpu_mode = \"host-passthrough\"\n",
            "is not offered under TCG",
        ),
    ] {
        let name = unique("hwrefused");
        let text = envfile(&name, "512MiB").replace("cpu_mode = \"maximum\"\n", extra);
        let p = Project::new(&text);
        let r = p.envrig(&["up"]);
        assert!(r.code == 1 && r.stderr.contains(says), "{}", r.stderr);
        assert!(!domains().iter().any(|d| d.starts_with(&name)));
        let r = p.envrig(&["destroy", "-f"]).ok();
        assert!(
            format!("{}{}", r.stdout, r.stderr).contains("nothing to destroy"),
            "{r:?}"
        );
    }
    let text = envfile(&unique("hwrefused"), "512MiB").replace("graphics = \"vnc\"\n", "");
    let r = Project::new(&text).envrig(&["up"]);
    assert!(
        r.code == 1 && r.stderr.contains("add `graphics"),
        "{}",
        r.stderr
    );
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .arg(std::path::Path::new(&guest()).join("disk.qcow2"))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let box_size = v["virtual-size"].as_u64().unwrap();
    assert!(box_size < 512 << 20 && box_size > 64 << 20, "{box_size}");

    // Smaller than the box: refused before anything is made, so nothing is left to destroy.
    let small = unique("disksmall");
    let p = Project::new(&envfile(&small, "64MiB"));
    let r = p.envrig(&["up"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("machine `vm`")
            && r.stderr.contains("64MiB")
            && r.stderr.contains(&format!("({box_size} bytes)"))
            && r.stderr.contains("set `disk_size` to at least"),
        "{}",
        r.stderr
    );
    let r = p.envrig(&["destroy", "-f"]).ok();
    assert!(
        format!("{}{}", r.stdout, r.stderr).contains("nothing to destroy"),
        "{r:?}"
    );
    assert!(!domains().iter().any(|d| d.starts_with(&small)));
    let left = std::fs::read_dir("/var/lib/libvirt/images/envrig")
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&small))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(left, 0, "no machine folder is left");

    // Larger: the guest's block device has that size, and a VNC display is on 127.0.0.1.
    let p = Project::new(&envfile(&unique("disksize"), "512MiB"));
    p.envrig(&["up"]).ok();
    let r = p
        .envrig(&["exec", "vm", "--", "cat", "/sys/block/vda/size"])
        .ok();
    let sectors: u64 = r.stdout.trim().parse().unwrap();
    assert_eq!(sectors * 512, 512 << 20);
    let st = p.envrig(&["status", "--json"]).ok().json();
    let name = st["machines"][0]["resource_name"].as_str().unwrap();
    let out = Command::new("virsh")
        .args(["-c", "qemu:///system", "domdisplay", name])
        .output()
        .unwrap();
    let display = String::from_utf8_lossy(&out.stdout);
    assert!(display.starts_with("vnc://127.0.0.1:"), "{display}");
    // The video card and the CPU mode asked for, as the running domain has them.
    let out = Command::new("virsh")
        .args(["-c", "qemu:///system", "dumpxml", name])
        .output()
        .unwrap();
    let xml = String::from_utf8_lossy(&out.stdout);
    assert!(xml.contains("<model type='vga'"), "{xml}");
    assert!(xml.contains("<cpu mode='maximum'"), "{xml}");
    p.envrig(&["destroy", "-f"]).ok();
}

/// The state `status --json` gives `machine`.
fn state_of(p: &Project, machine: &str) -> String {
    let st = p.envrig(&["status", "--json"]).ok().json();
    st["machines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["machine"] == machine)
        .unwrap_or_else(|| panic!("{st}"))["state"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
#[ignore = "end-to-end: needs real engines; scripts/test.sh runs it"]
fn suspend_saves_a_vms_memory_and_resume_and_up_bring_it_back_where_it_was() {
    e2e();
    let p = Project::new(&format!(
        "[project]\nname = \"{}\"\nbake = false\n\n[boxes.tiny]\nlibvirt = \"{}\"\n\n[machines.vm]\nbox = \"tiny\"\nprovider = \"libvirt\"\nmemory = \"256MiB\"\n",
        unique("susp"),
        guest()
    ));
    p.envrig(&["up"]).ok();
    // A process started before: the same one after, so the memory came back.
    let pid = p
        .envrig(&[
            "exec",
            "vm",
            "--",
            "sh",
            "-c",
            "sleep 1000 >/dev/null 2>&1 & echo $!",
        ])
        .ok()
        .stdout
        .trim()
        .to_string();
    assert!(pid.parse::<u32>().is_ok(), "{pid}");
    let s = p.envrig(&["suspend", "--json"]).ok().json();
    assert_eq!(s["machines"][0], "vm", "{s}");
    assert_eq!(state_of(&p, "vm"), "suspended");
    // libvirt holds it shut off, with its memory saved (managed save).
    let dom = p.envrig(&["status", "--json"]).ok().json()["machines"][0]["resource_name"]
        .as_str()
        .unwrap()
        .to_string();
    let info = Command::new("virsh")
        .args(["-c", "qemu:///system", "dominfo", &dom])
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout).to_string();
    assert!(
        info.contains("shut off") && info.contains("Managed save:   yes"),
        "{info}"
    );
    let e = p.envrig(&["exec", "vm", "--", "true"]);
    assert_eq!(e.code, 1, "{}", e.stderr);
    assert!(
        e.stderr.contains("suspended") && e.stderr.contains("envrig resume"),
        "{}",
        e.stderr
    );
    p.envrig(&["resume"]).ok();
    assert_eq!(state_of(&p, "vm"), "running");
    let pids = p
        .envrig(&["exec", "vm", "--", "pidof", "sleep"])
        .ok()
        .stdout;
    assert!(
        pids.split_whitespace().any(|x| x == pid),
        "{pids} lacks {pid}"
    );
    // `up` resumes a suspended machine; `halt` of one brings it back and shuts it down.
    p.envrig(&["suspend", "vm"]).ok();
    let up = p.envrig(&["up", "--json"]).ok().json();
    assert_eq!(up["machines"][0]["result"], "started", "{up}");
    let pids = p
        .envrig(&["exec", "vm", "--", "pidof", "sleep"])
        .ok()
        .stdout;
    assert!(
        pids.split_whitespace().any(|x| x == pid),
        "{pids} lacks {pid}"
    );
    p.envrig(&["suspend"]).ok();
    p.envrig(&["halt"]).ok();
    assert_eq!(state_of(&p, "vm"), "stopped");
    // Not running: nothing to suspend, said with its state.
    let r = p.envrig(&["suspend", "vm"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("stopped"), "{}", r.stderr);
}
