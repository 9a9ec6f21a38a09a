//! The provider conformance suite against a real libvirt, booting the small test guest.
//!
//! Runs when `ENVRIG_E2E=1` and then FAILS when libvirtd does not answer or the test guest
//! (`scripts/build-test-guest.sh`) is missing; without the variable it does nothing.

use std::sync::Arc;

use envrig_provider_api::testkit;
use envrig_provider_libvirt::LibvirtProvider;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libvirt_passes_the_conformance_suite() {
    if std::env::var("ENVRIG_E2E").as_deref() != Ok("1") {
        eprintln!("ENVRIG_E2E is not 1: the libvirt conformance suite needs a real libvirtd");
        return;
    }
    let guest = std::env::var("ENVRIG_TEST_GUEST")
        .unwrap_or_else(|_| "/var/cache/envrig-test/guests/small-latest".to_string());
    let guest = std::fs::canonicalize(&guest)
        .unwrap_or_else(|e| panic!("ENVRIG_E2E=1 but the test guest {guest} is missing ({e}); run scripts/build-test-guest.sh"));
    let provider = LibvirtProvider::connect().await.unwrap_or_else(|e| {
        panic!("ENVRIG_E2E=1 but libvirt is not usable: {e}; run scripts/libvirt-setup.sh")
    });
    let unique = format!(
        "{}{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    testkit::run_all(Arc::new(provider), guest.to_str().unwrap(), &unique).await;
}
