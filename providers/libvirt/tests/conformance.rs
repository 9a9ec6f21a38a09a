//! The provider conformance suite against a real libvirt, booting the small test guest,
//! through the plugin process (`envrig-provider-libvirt`) as envrig uses it.
//!
//! Ignored by a plain `cargo test`; `scripts/test.sh` runs it, and then it FAILS when libvirtd
//! does not answer or the test guest (`scripts/build-test-guest.sh`) is missing.

use std::sync::Arc;

use envrig_provider_api::plugin::Plugin;
use envrig_provider_api::testkit;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: needs a real engine; scripts/test.sh runs it"]
async fn libvirt_passes_the_conformance_suite() {
    let guest = std::env::var("ENVRIG_TEST_GUEST")
        .unwrap_or_else(|_| "/var/cache/envrig-test/guests/small-latest".to_string());
    let guest = std::fs::canonicalize(&guest).unwrap_or_else(|e| {
        panic!("the test guest {guest} is missing ({e}); run scripts/build-test-guest.sh")
    });
    let plugin = Plugin::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_envrig-provider-libvirt")),
        "libvirt",
        "warn",
    )
    .unwrap_or_else(|e| panic!("the libvirt plugin does not start: {e}"));
    let provider = plugin
        .connect(None)
        .await
        .unwrap_or_else(|e| panic!("libvirt is not usable: {e}; run scripts/libvirt-setup.sh"));
    testkit::run_all(
        Arc::new(provider),
        guest.to_str().unwrap(),
        &testkit::unique(),
    )
    .await;
}
