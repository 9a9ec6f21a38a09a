//! The libvirt provider against a libvirt host elsewhere (`qemu+tcp://…`), through the plugin
//! process as envrig uses it: the box goes there through libvirt's storage API, once; the
//! machine's disk is a volume there; nothing is written on this host's images folder for it;
//! exec goes through the guest agent; what cannot work there says so.
//!
//! The host comes from `ENVRIG_TEST_LIBVIRT_REMOTE` (a URI such as
//! `qemu+tcp://198.18.200.31/system`: `scripts/engines.sh up 3 2` prints the rig's libvirt
//! hosts, each with a libvirt of its own in its own mount and network namespaces). Ignored
//! by a plain `cargo test`; `scripts/test.sh` runs it, and then it FAILS when the variable is
//! unset, the host does not answer or the test guest (`scripts/build-test-guest.sh`) is
//! missing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envrig_provider_api::plugin::Plugin;
use envrig_provider_api::{
    EngineAddress, ExecRequest, NetworkAttachment, NetworkSpec, OutputStream, Provider,
    ProviderError, Selector, SyncedFolder, labels, testkit,
};

/// The remote host's URI, or a failure saying how to get one.
fn remote_uri() -> String {
    std::env::var("ENVRIG_TEST_LIBVIRT_REMOTE").unwrap_or_else(|_| {
        panic!(
            "ENVRIG_TEST_LIBVIRT_REMOTE is not set: set it to the URI of a libvirt host that is \
             not this one, e.g. a `lN` line of `scripts/engines.sh up 3 2` \
             (qemu+tcp://198.18.200.31/system)"
        )
    })
}

fn guest() -> PathBuf {
    let guest = std::env::var("ENVRIG_TEST_GUEST")
        .unwrap_or_else(|_| "/var/cache/envrig-test/guests/small-latest".to_string());
    std::fs::canonicalize(&guest).unwrap_or_else(|e| {
        panic!("the test guest {guest} is missing ({e}); run scripts/build-test-guest.sh")
    })
}

async fn connect(uri: &str) -> Arc<dyn Provider> {
    let plugin = Plugin::start(
        Path::new(env!("CARGO_BIN_EXE_envrig-provider-libvirt")),
        "libvirt",
        "warn",
    )
    .unwrap_or_else(|e| panic!("the libvirt plugin does not start: {e}"));
    let address = EngineAddress {
        uri: uri.to_string(),
        cert_path: None,
    };
    Arc::new(
        plugin
            .connect(Some(&address))
            .await
            .unwrap_or_else(|e| panic!("the remote libvirt host {uri} is not usable: {e}")),
    )
}

/// `virsh -c URI ARGS…`'s stdout; `None` when it fails.
fn virsh(uri: &str, args: &[&str]) -> Option<String> {
    let out = Command::new("virsh")
        .arg("-c")
        .arg(uri)
        .args(args)
        .output()
        .expect("virsh (libvirt-clients) is installed");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The volumes of envrig's pool on the remote host.
fn volumes(uri: &str) -> Vec<String> {
    virsh(uri, &["vol-list", "--pool", "envrig"])
        .unwrap_or_default()
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// The file name of the disk volume `vol` is an overlay on.
fn backing(uri: &str, vol: &str) -> String {
    let xml = virsh(uri, &["vol-dumpxml", "--pool", "envrig", vol])
        .unwrap_or_else(|| panic!("no volume {vol}"));
    let from = xml
        .find("<backingStore>")
        .unwrap_or_else(|| panic!("{vol} has no backing: {xml}"));
    let path = &xml[from..];
    let path = &path[path.find("<path>").unwrap() + 6..path.find("</path>").unwrap()];
    path.rsplit('/').next().unwrap().to_string()
}

/// What tells one making of a volume from another: its XML's timestamps (the change time
/// has nanoseconds), `None` when there is no such volume.
fn made(uri: &str, vol: &str) -> Option<String> {
    let xml = virsh(uri, &["vol-dumpxml", "--pool", "envrig", vol])?;
    let from = xml.find("<timestamps>")?;
    let to = xml.find("</timestamps>")?;
    Some(xml[from..to].to_string())
}

async fn run(p: &dyn Provider, id: &str, argv: &[&str]) -> (i64, String, String) {
    let req = ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..ExecRequest::default()
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = p
        .exec(id, &req, &mut |s: OutputStream, b: &[u8]| match s {
            OutputStream::Stdout => out.extend_from_slice(b),
            OutputStream::Stderr => err.extend_from_slice(b),
        })
        .await
        .expect("exec");
    (
        code,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

/// Every entry of `dir` whose name holds `needle`.
fn entries_naming(dir: &Path, needle: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(needle))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: needs a remote libvirt host (ENVRIG_TEST_LIBVIRT_REMOTE); scripts/test.sh runs it"]
async fn a_machine_on_a_remote_libvirt_host_lives_in_its_pool() {
    let uri = remote_uri();
    let guest = guest();
    let p = connect(&uri).await;
    let p = p.as_ref();

    // What the host says of itself.
    let info = p.engine_info().await.expect("engine_info");
    assert!(
        info.version.starts_with("libvirt ") && info.version.contains("QEMU"),
        "{info:?}"
    );
    assert!(info.cpus > 0 && info.memory > 0, "{info:?}");
    assert!(info.cluster.is_none(), "{info:?}");

    let sha = envrig_provider_api::hash::sha256_file(&guest.join("disk.qcow2"))
        .expect("hash the test guest")
        .0;
    // The box's name there: a small qcow2 volume on the upload that holds the box's files.
    let alias = format!("envrig-box-{sha}.qcow2");
    let before = made(&uri, &alias);

    let unique = testkit::unique();
    let env_id = format!("remote{unique}");
    let base = guest.to_str().unwrap();
    let mut one = testkit::spec(base, &env_id, "one");
    one.memory_bytes = Some(160 << 20);
    let t0 = Instant::now();
    let created = p.create(&one).await.expect("create on the remote host");
    let first = t0.elapsed();
    let after = made(&uri, &alias).unwrap_or_else(|| {
        panic!(
            "no box volume {alias} in the remote pool: {:?}",
            volumes(&uri)
        )
    });
    let box_vol = backing(&uri, &alias);
    let upload = box_vol.strip_suffix(".qcow2").unwrap().to_string();
    assert!(
        upload.starts_with(&format!("envrig-box-{sha}.")),
        "{box_vol}"
    );
    if let Some(b) = &before {
        assert_eq!(b, &after, "a box already there is not uploaded again");
    }
    eprintln!(
        "remote create: {:.2} s ({})",
        first.as_secs_f64(),
        if before.is_some() {
            "box already there"
        } else {
            "box uploaded"
        }
    );
    let res = created.resource_name.clone();
    let vols = volumes(&uri);
    for v in [alias.clone(), box_vol.clone(), format!("{res}.qcow2")] {
        assert!(vols.contains(&v), "{v} is not in the remote pool: {vols:?}");
    }
    // The overlay is backed by the box's volume, there.
    assert_eq!(backing(&uri, &format!("{res}.qcow2")), box_vol);
    // The box arrived whole: its bytes there are the bytes here.
    let back = tempfile::NamedTempFile::new().unwrap();
    virsh(
        &uri,
        &[
            "vol-download",
            "--pool",
            "envrig",
            &box_vol,
            back.path().to_str().unwrap(),
        ],
    )
    .expect("download the box's volume");
    assert_eq!(
        envrig_provider_api::hash::sha256_file(back.path())
            .unwrap()
            .0,
        sha
    );
    // Nothing of it on this host's images folder (nor in the folder a remote connection
    // keeps its hash cache in).
    for dir in [
        PathBuf::from("/var/lib/libvirt/images/envrig"),
        envrig_provider_api::home::home_dir().join("libvirt-remote"),
    ] {
        assert!(
            entries_naming(&dir, &res).is_empty(),
            "{} holds {:?}",
            dir.display(),
            entries_naming(&dir, &res)
        );
    }
    // The domain is not on this host's libvirt.
    assert!(
        virsh("qemu:///system", &["dominfo", &res]).is_none(),
        "{res} is on this host's libvirt"
    );

    // Started and reached through the guest agent.
    let t0 = Instant::now();
    p.start(&created.id)
        .await
        .expect("start on the remote host");
    eprintln!("remote start: {:.2} s", t0.elapsed().as_secs_f64());
    let (code, out, _) = run(p, &created.id, &["echo", "hello from afar"]).await;
    assert_eq!((code, out.as_str()), (0, "hello from afar\n"));
    let (_, host, _) = run(p, &created.id, &["hostname"]).await;
    assert_eq!(host.trim(), "one");

    // A second machine from the same box finds it there: no second upload.
    let mut two = testkit::spec(base, &env_id, "two");
    two.memory_bytes = Some(160 << 20);
    let t0 = Instant::now();
    let second = p.create(&two).await.expect("a second create");
    eprintln!(
        "remote create, box there: {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(
        made(&uri, &alias).as_deref(),
        Some(after.as_str()),
        "the box was uploaded again"
    );
    assert_eq!(
        backing(&uri, &format!("{}.qcow2", second.resource_name)),
        box_vol
    );
    // The box's alias, and its disk, kernel and initrd once each.
    let mut of_box: Vec<String> = volumes(&uri)
        .into_iter()
        .filter(|v| v.starts_with(&format!("envrig-box-{sha}")))
        .collect();
    of_box.sort();
    let mut want = vec![alias.clone()];
    want.extend(["initrd.img", "qcow2", "vmlinuz"].map(|f| format!("{upload}.{f}")));
    want.sort();
    assert_eq!(of_box, want);
    p.remove(&second.id).await.expect("remove the second");
    assert!(
        !volumes(&uri)
            .iter()
            .any(|v| v.starts_with(&format!("{}.", second.resource_name))),
        "the second machine's volumes stay: {:?}",
        volumes(&uri)
    );

    // What cannot work there says so.
    match p.ssh_endpoint(&created.id).await {
        Err(ProviderError::NotSupported { what, .. }) => {
            assert!(what.contains("remote libvirt host"), "{what}")
        }
        other => panic!("an SSH endpoint on a remote host: {other:?}"),
    }
    let mut live = testkit::spec(base, &env_id, "live");
    live.synced = vec![SyncedFolder {
        host: "/tmp".into(),
        guest: "/mnt".into(),
        read_only: true,
    }];
    live.options.insert(
        "synced".into(),
        envrig_provider_api::OptionValue::Str("virtiofs".into()),
    );
    match p.create(&live).await {
        Err(ProviderError::NotSupported { what, .. }) => {
            assert!(what.contains("synced = \"rsync\""), "{what}")
        }
        other => panic!("a live synced folder on a remote host: {other:?}"),
    }
    assert!(
        !volumes(&uri)
            .iter()
            .any(|v| v.starts_with(&format!("{}.", live.resource_name))),
        "a refused machine leaves nothing"
    );
    match p
        .package(&created.id, "envrig-remote-test", &BTreeMap::new())
        .await
    {
        Err(ProviderError::NotSupported { .. }) => {}
        other => panic!("package on a remote host: {other:?}"),
    }

    // Stopped, removed: its volumes go, the box stays for the next machine.
    p.stop(&created.id, Duration::from_secs(20))
        .await
        .expect("stop");
    p.remove(&created.id).await.expect("remove");
    let left = volumes(&uri);
    assert!(
        !left.iter().any(|v| v.starts_with(&format!("{res}."))),
        "the machine's volumes stay: {left:?}"
    );
    assert!(left.contains(&alias) && left.contains(&box_vol), "{left:?}");
    p.purge(&Selector::env(&env_id)).await.expect("purge");
    assert!(p.list(&Selector::env(&env_id)).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: needs a remote libvirt host (ENVRIG_TEST_LIBVIRT_REMOTE); scripts/test.sh runs it"]
async fn libvirt_on_a_remote_host_passes_the_conformance_suite() {
    let uri = remote_uri();
    let guest = guest();
    let p = connect(&uri).await;
    testkit::run_all(p, guest.to_str().unwrap(), &testkit::unique()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: needs a remote libvirt host (ENVRIG_TEST_LIBVIRT_REMOTE); scripts/test.sh runs it"]
async fn machines_on_a_remote_host_share_a_network_and_keep_snapshots_and_drift() {
    let uri = remote_uri();
    let guest = guest();
    let p = connect(&uri).await;
    let p = p.as_ref();
    let unique = testkit::unique();
    let env_id = format!("rnet{unique}");
    let net = format!("envrig-{env_id}");
    p.ensure_network(&NetworkSpec {
        name: net.clone(),
        labels: BTreeMap::from([(labels::ENV.to_string(), env_id.clone())]),
        subnet: None,
        subnet_pool: None,
        domain: Some("rnet.envrig.internal".into()),
        span: false,
        join: None,
    })
    .await
    .expect("a private network on the remote host");
    assert!(
        virsh(&uri, &["net-info", &net]).is_some(),
        "the network is not on the remote host"
    );
    let base = guest.to_str().unwrap();
    let spec = |m: &str| {
        let mut s = testkit::spec(base, &env_id, m);
        s.memory_bytes = Some(160 << 20);
        s.network = Some(NetworkAttachment {
            network: net.clone(),
            aliases: vec![m.to_string()],
        });
        s
    };
    let (sa, sb) = (spec("a"), spec("b"));
    let a = p.create(&sa).await.expect("create a");
    let b = p.create(&sb).await.expect("create b");
    let (ra, rb) = tokio::join!(p.start(&a.id), p.start(&b.id));
    ra.expect("start a");
    rb.expect("start b");
    // They reach each other by name.
    let ping = "for i in $(seq 1 20); do ping -c 1 -W 2 b >/dev/null 2>&1 && exit 0; sleep 1; done; ping -c 1 -W 2 b";
    let (code, out, err) = run(p, &a.id, &["sh", "-c", ping]).await;
    assert_eq!(code, 0, "a does not reach b: {out}{err}");

    // An internal snapshot with memory, restored in place.
    let snap = p
        .snapshot_save(
            &a.id,
            "s1",
            &sa,
            &BTreeMap::from([(labels::ENV.to_string(), env_id.clone())]),
            true,
        )
        .await
        .expect("snapshot");
    run(p, &a.id, &["sh", "-c", "echo later > /root/later"]).await;
    p.snapshot_restore(&snap, Some(&a.id), &sa)
        .await
        .expect("restore");
    let (code, _, _) = run(p, &a.id, &["test", "-e", "/root/later"]).await;
    assert_eq!(
        code, 1,
        "the restored machine has what was written after the snapshot"
    );

    // Drift since a baseline kept on the remote host.
    p.mark_baseline(&a.id).await.expect("baseline");
    assert!(
        volumes(&uri).contains(&format!("{}.drift-baseline.tsv", a.resource_name)),
        "{:?}",
        volumes(&uri)
    );
    run(p, &a.id, &["sh", "-c", "echo drifted > /root/drifted"]).await;
    let changes = p.drift(&a.id).await.expect("drift");
    assert!(
        changes.iter().any(|c| c.path == "/root/drifted"),
        "{changes:?}"
    );

    for m in [&a, &b] {
        p.remove(&m.id).await.expect("remove");
    }
    p.purge(&Selector::env(&env_id)).await.expect("purge");
    assert!(
        virsh(&uri, &["net-info", &net]).is_none(),
        "the network stays"
    );
    let left = volumes(&uri);
    for m in [&a, &b] {
        assert!(
            !left
                .iter()
                .any(|v| v.starts_with(&format!("{}.", m.resource_name))),
            "{left:?}"
        );
    }
}
