//! The provider conformance suite against real engines: Docker, Podman as root, and the test
//! user's rootless Podman.
//!
//! Ignored by a plain `cargo test`; `scripts/test.sh` runs it, and then it FAILS when no engine
//! answers or the test image is missing.

use std::sync::Arc;

use envrig_provider_api::EngineAddress;
use envrig_provider_api::testkit;
use envrig_provider_docker::{DockerProvider, Flavor};

const TEST_IMAGE: &str = "envrig-test/busybox:latest";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: needs a real engine; scripts/test.sh runs it"]
async fn docker_passes_the_conformance_suite() {
    let provider = DockerProvider::connect()
        .await
        .unwrap_or_else(|e| panic!("Docker is not usable: {e}; run scripts/host-setup.sh"));
    testkit::run_all(Arc::new(provider), TEST_IMAGE, &testkit::unique()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: needs a real engine; scripts/test.sh runs it"]
async fn rootful_podman_passes_the_conformance_suite() {
    // Root's documented socket; the service is started by the provider when none answers.
    let provider = DockerProvider::connect_flavor(Flavor::Podman, None)
        .await
        .unwrap_or_else(|e| panic!("Podman is not usable: {e}; run scripts/host-setup.sh"));
    testkit::run_all(Arc::new(provider), TEST_IMAGE, &testkit::unique()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: needs a real engine; scripts/test.sh runs it"]
async fn rootless_podman_passes_the_conformance_suite() {
    // The test user's own Podman (scripts/rootless-user.sh), its service run as that user.
    let user = std::env::var("ENVRIG_TEST_USER").unwrap_or_else(|_| "envrig-user".into());
    let uid = std::process::Command::new("id")
        .args(["-u", &user])
        .output()
        .expect("id");
    assert!(
        uid.status.success(),
        "no user {user}; run scripts/host-setup.sh"
    );
    let uid = String::from_utf8_lossy(&uid.stdout).trim().to_string();
    let socket = format!("/run/user/{uid}/podman/podman.sock");
    let engine = EngineAddress {
        uri: format!("unix://{socket}"),
        cert_path: None,
    };
    if DockerProvider::connect_flavor(Flavor::Podman, Some(&engine))
        .await
        .is_err()
    {
        // The service outlives this test on purpose (it ends after 120 s unused), as the one
        // envrig starts does: never waited for.
        #[allow(clippy::zombie_processes)]
        std::process::Command::new("runuser")
            .args(["-u", &user, "--", "env", "-i", "PATH=/usr/bin:/bin"])
            .arg(format!("XDG_RUNTIME_DIR=/run/user/{uid}"))
            .arg(format!("HOME=/home/{user}"))
            .args(["podman", "system", "service", "--time", "120"])
            .arg(&engine.uri)
            .current_dir("/")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("runuser podman system service");
    }
    let mut provider = None;
    for _ in 0..100 {
        match DockerProvider::connect_flavor(Flavor::Podman, Some(&engine)).await {
            Ok(p) => {
                provider = Some(p);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    let provider = provider.unwrap_or_else(|| panic!("nothing answers on {socket}"));
    testkit::run_all(Arc::new(provider), TEST_IMAGE, &testkit::unique()).await;
}
