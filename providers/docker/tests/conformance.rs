//! The provider conformance suite against a real Docker engine.
//!
//! Runs when `ENVRIG_E2E=1` (the README's test command sets it) and then FAILS when no engine
//! answers or the test image is missing; without the variable it does nothing.

use std::sync::Arc;

use envrig_provider_api::testkit;
use envrig_provider_docker::DockerProvider;

const TEST_IMAGE: &str = "envrig-test/busybox:latest";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_passes_the_conformance_suite() {
    if std::env::var("ENVRIG_E2E").as_deref() != Ok("1") {
        eprintln!("ENVRIG_E2E is not 1: the Docker conformance suite needs a real engine");
        return;
    }
    let provider = DockerProvider::connect().await.unwrap_or_else(|e| {
        panic!("ENVRIG_E2E=1 but Docker is not usable: {e}; run scripts/host-setup.sh")
    });
    let unique = format!(
        "{}{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    testkit::run_all(Arc::new(provider), TEST_IMAGE, &unique).await;
}
