//! The provider conformance suite against a real Docker engine.
//!
//! Ignored by a plain `cargo test`; `scripts/test.sh` runs it, and then it FAILS when no engine
//! answers or the test image is missing.

use std::sync::Arc;

use envrig_provider_api::testkit;
use envrig_provider_docker::DockerProvider;

const TEST_IMAGE: &str = "envrig-test/busybox:latest";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: needs a real engine; scripts/test.sh runs it"]
async fn docker_passes_the_conformance_suite() {
    let provider = DockerProvider::connect()
        .await
        .unwrap_or_else(|e| panic!("Docker is not usable: {e}; run scripts/host-setup.sh"));
    testkit::run_all(Arc::new(provider), TEST_IMAGE, &testkit::unique()).await;
}
