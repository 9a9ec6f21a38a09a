//! The conformance suite every provider runs against its real engine.
//!
//! Plain async functions, as in object_store's `integration.rs`: a provider's own test calls
//! [`run_all`] with a connected provider and a base that exists (or can be fetched) on the
//! engine. Each check panics with a message naming what broke.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::{
    ExecRequest, MachineSpec, MachineState, OutputStream, Provider, ProviderError, Selector, labels,
};

/// The output and exit code of a command run through [`Provider::exec`].
#[derive(Debug, Default)]
pub struct Captured {
    pub stdout: String,
    pub stderr: String,
    pub code: i64,
}

/// Runs `argv` in the machine and collects its output.
pub async fn capture(p: &dyn Provider, id: &str, argv: &[&str]) -> Captured {
    let req = ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..ExecRequest::default()
    };
    capture_req(p, id, &req).await
}

async fn capture_req(p: &dyn Provider, id: &str, req: &ExecRequest) -> Captured {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut sink = |s: OutputStream, b: &[u8]| match s {
        OutputStream::Stdout => out.extend_from_slice(b),
        OutputStream::Stderr => err.extend_from_slice(b),
    };
    let code = p
        .exec(id, req, &mut sink)
        .await
        .unwrap_or_else(|e| panic!("exec {:?} failed: {e}", req.argv));
    Captured {
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
        code,
    }
}

/// A spec for a conformance machine: labelled with a unique environment id.
pub fn spec(base: &str, env_id: &str, machine: &str) -> MachineSpec {
    let mut labels = BTreeMap::new();
    labels.insert(labels::ENV.to_string(), env_id.to_string());
    labels.insert(labels::MACHINE.to_string(), machine.to_string());
    labels.insert(labels::GENERATION.to_string(), "1".to_string());
    MachineSpec {
        resource_name: format!("envrig-conformance-{env_id}-{machine}"),
        machine: machine.to_string(),
        base: base.to_string(),
        cpus: Some(1),
        memory_bytes: Some(64 * 1024 * 1024),
        hostname: machine.to_string(),
        env: BTreeMap::from([("ENVRIG_CONFORMANCE".to_string(), "yes".to_string())]),
        command: None,
        ports: Vec::new(),
        synced: Vec::new(),
        labels,
        options: BTreeMap::new(),
        network: None,
        handover: false,
        warm: false,
    }
}

/// A one-file tar archive.
pub fn tar_with(path: &str, body: &[u8]) -> Vec<u8> {
    // A minimal ustar writer: the test kit must not depend on a provider's tar library.
    let mut header = [0u8; 512];
    header[..path.len()].copy_from_slice(path.as_bytes());
    header[100..107].copy_from_slice(b"0000644");
    header[108..115].copy_from_slice(b"0000000");
    header[116..123].copy_from_slice(b"0000000");
    let size = format!("{:011o}", body.len());
    header[124..135].copy_from_slice(size.as_bytes());
    header[136..147].copy_from_slice(b"00000000000");
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|b| *b as u32).sum();
    let sum = format!("{sum:06o}\0 ");
    header[148..156].copy_from_slice(sum.as_bytes());
    let mut out = header.to_vec();
    out.extend_from_slice(body);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// A suffix no other test run on this host has: the process id and the clock's nanoseconds.
pub fn unique() -> String {
    format!(
        "{}{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    )
}

/// The whole suite. `base` must be usable by `p`; `unique` keeps parallel runs apart.
pub async fn run_all(p: Arc<dyn Provider>, base: &str, unique: &str) {
    let env_id = format!("conf{unique}");
    let selector = Selector::env(&env_id);
    let p = p.as_ref();

    // A missing base is reported as NotFound, so the core knows to fetch it.
    let mut missing = spec("envrig-conformance/no-such-image:0", &env_id, "missing");
    missing.resource_name.push_str("-x");
    match p.create(&missing).await {
        Err(ProviderError::NotFound { .. }) => {}
        other => panic!("create with a missing base: expected NotFound, got {other:?}"),
    }

    // Create: labelled, listed, not running yet.
    let s = spec(base, &env_id, "one");
    let created = p.create(&s).await.expect("create");
    assert_eq!(created.resource_name, s.resource_name);
    assert_eq!(
        created.labels.get(labels::MACHINE).map(String::as_str),
        Some("one")
    );
    let listed = p.list(&selector).await.expect("list");
    assert_eq!(
        listed.len(),
        1,
        "list by label finds exactly the created machine"
    );
    assert_eq!(listed[0].id, created.id);
    assert!(
        listed[0].state.can_start(),
        "a new machine can be started: {:?}",
        listed[0].state
    );
    assert!(
        p.list(&Selector::env(&format!("{env_id}-other")))
            .await
            .expect("list")
            .is_empty(),
        "another environment's selector finds nothing"
    );

    // Start: running, and it keeps running whatever the base's default command is.
    p.start(&created.id).await.expect("start");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let info = p.inspect(&created.id).await.expect("inspect");
    assert_eq!(info.state, MachineState::Running);

    // Exec: stdout, stderr and the exit code come back apart.
    let c = capture(
        p,
        &created.id,
        &["sh", "-c", "echo out; echo err >&2; exit 7"],
    )
    .await;
    assert_eq!(c.stdout, "out\n");
    assert_eq!(c.stderr, "err\n");
    assert_eq!(c.code, 7);
    let c = capture(
        p,
        &created.id,
        &["sh", "-c", "echo $ENVRIG_CONFORMANCE; hostname"],
    )
    .await;
    assert_eq!(
        c.stdout, "yes\none\n",
        "the spec's env and hostname reach the machine"
    );
    let req = ExecRequest {
        argv: vec!["sh".into(), "-c".into(), "echo $A".into()],
        env: BTreeMap::from([("A".to_string(), "from-exec".to_string())]),
        ..ExecRequest::default()
    };
    assert_eq!(
        capture_req(p, &created.id, &req).await.stdout,
        "from-exec\n"
    );

    // Upload: a tar lands in the guest folder (`/root`, not `/tmp`: a guest may keep `/tmp`
    // in memory, and this file must survive a restart below).
    let tar = tar_with("conformance.txt", b"payload\n");
    p.upload(&created.id, "/root", tar).await.expect("upload");
    let c = capture(p, &created.id, &["cat", "/root/conformance.txt"]).await;
    assert_eq!((c.stdout.as_str(), c.code), ("payload\n", 0));
    let tar = tar_with("var/lib/conformance/deep/x.txt", b"deep\n");
    let uploaded = p.upload(&created.id, "/", tar).await;
    uploaded.expect("upload with missing parents");
    let c = capture(
        p,
        &created.id,
        &[
            "sh",
            "-c",
            "cat /var/lib/conformance/deep/x.txt; stat -c %a /tmp",
        ],
    )
    .await;
    assert_eq!(
        c.stdout, "deep\n1777\n",
        "parents are created, existing folders kept"
    );
    // Reading a small file back, and a missing one.
    assert_eq!(
        p.read_file(&created.id, "/var/lib/conformance/deep/x.txt")
            .await
            .expect("read_file"),
        Some(b"deep\n".to_vec())
    );
    assert_eq!(
        p.read_file(&created.id, "/var/lib/conformance/missing")
            .await
            .expect("read_file of a missing file"),
        None
    );

    // Copies streamed through host files: a folder in (mode kept), out again, a missing
    // path out.
    let host = tempfile::tempdir().expect("a temporary folder");
    // A plugin run as another user than its test (libvirt's session daemon) writes here too.
    {
        use std::os::unix::fs::PermissionsExt;
        let open = std::fs::Permissions::from_mode(0o777);
        std::fs::set_permissions(host.path(), open).expect("chmod");
    }
    let tar_in = host.path().join("in.tar");
    {
        let mut b = tar::Builder::new(std::fs::File::create(&tar_in).expect("create"));
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, "cpdir", std::io::empty())
            .expect("tar");
        let body = vec![b'z'; 300_000];
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o751);
        h.set_size(body.len() as u64);
        b.append_data(&mut h, "cpdir/run.sh", &body[..])
            .expect("tar");
        b.finish().expect("tar");
    }
    p.copy_in(&created.id, &tar_in, "/root")
        .await
        .expect("copy_in");
    let c = capture(
        p,
        &created.id,
        &["sh", "-c", "stat -c '%a %s' /root/cpdir/run.sh"],
    )
    .await;
    assert_eq!(c.stdout, "751 300000\n", "copy_in keeps modes and sizes");
    let tar_out = host.path().join("out.tar");
    p.copy_out(&created.id, "/root/cpdir", &tar_out)
        .await
        .expect("copy_out");
    let mut names = Vec::new();
    let mut archive = tar::Archive::new(std::fs::File::open(&tar_out).expect("open"));
    for e in archive.entries().expect("entries") {
        let e = e.expect("entry");
        let path = e.path().expect("path").display().to_string();
        names.push((
            path.trim_end_matches('/').to_string(),
            e.header().mode().unwrap_or(0) & 0o7777,
            e.size(),
        ));
    }
    names.sort();
    assert_eq!(
        names,
        vec![
            ("cpdir".to_string(), 0o755, 0),
            ("cpdir/run.sh".to_string(), 0o751, 300_000)
        ],
        "copy_out sends one top entry named as the path"
    );
    match p.copy_out(&created.id, "/root/no-such", &tar_out).await {
        Err(ProviderError::NotFound { .. }) => {}
        other => panic!("copy_out of a missing path: expected NotFound, got {other:?}"),
    }
    // Logs: what is there now, without following.
    let mut log = Vec::new();
    let req = crate::LogRequest {
        tail: Some(50),
        ..crate::LogRequest::default()
    };
    p.logs(&created.id, &req, &mut |_, b: &[u8]| {
        log.extend_from_slice(b)
    })
    .await
    .expect("logs");

    // Stop is graceful and quick, and idempotent.
    let t0 = std::time::Instant::now();
    p.stop(&created.id, Duration::from_secs(20))
        .await
        .expect("stop");
    assert!(
        t0.elapsed() < Duration::from_secs(25),
        "stop took {:?}",
        t0.elapsed()
    );
    p.stop(&created.id, Duration::from_secs(20))
        .await
        .expect("second stop");
    assert_eq!(
        p.inspect(&created.id).await.expect("inspect").state,
        MachineState::Stopped
    );

    // Start again: the disk was kept.
    p.start(&created.id).await.expect("restart");
    let c = capture(p, &created.id, &["cat", "/root/conformance.txt"]).await;
    assert_eq!(c.stdout, "payload\n", "files survive a stop and start");

    // Remove: gone, and removing again succeeds.
    p.remove(&created.id).await.expect("remove");
    p.remove(&created.id).await.expect("second remove");
    assert!(p.list(&selector).await.expect("list").is_empty());
    match p.inspect(&created.id).await {
        Err(ProviderError::NotFound { .. }) => {}
        other => panic!("inspect after remove: expected NotFound, got {other:?}"),
    }
    p.purge(&selector)
        .await
        .expect("purge of an empty environment");
}
