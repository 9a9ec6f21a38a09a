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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: needs a real engine; scripts/test.sh runs it"]
async fn libvirt_session_passes_the_conformance_suite_as_an_ordinary_user() {
    // The plugin runs as the test user (scripts/rootless-user.sh) on its session daemon:
    // a copy of it the user can read, started through a wrapper that changes user.
    let user = std::env::var("ENVRIG_TEST_USER").unwrap_or_else(|_| "envrig-user".into());
    let id = std::process::Command::new("id")
        .args(["-u", &user])
        .output()
        .expect("id");
    assert!(
        id.status.success(),
        "no user {user}; run scripts/host-setup.sh"
    );
    let uid = String::from_utf8_lossy(&id.stdout).trim().to_string();
    let guest = std::env::var("ENVRIG_TEST_GUEST")
        .unwrap_or_else(|_| "/var/cache/envrig-test/guests/small-latest".to_string());
    let guest = std::fs::canonicalize(&guest).unwrap_or_else(|e| {
        panic!("the test guest {guest} is missing ({e}); run scripts/build-test-guest.sh")
    });
    let dir = tempfile::Builder::new()
        .prefix("envrig-session-")
        .tempdir_in("/tmp")
        .unwrap();
    let plugin = dir.path().join("envrig-provider-libvirt");
    std::fs::copy(env!("CARGO_BIN_EXE_envrig-provider-libvirt"), &plugin).unwrap();
    let wrapper = dir.path().join("as-user");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec runuser -u {user} -- env -i HOME=/home/{user} XDG_RUNTIME_DIR=/run/user/{uid} \
             PATH=/usr/local/bin:/usr/bin:/bin LIBVIRT_DEFAULT_URI=qemu:///session {} \"$@\"\n",
            plugin.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    for p in [dir.path(), plugin.as_path(), wrapper.as_path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let plugin = Plugin::start(&wrapper, "libvirt", "warn")
        .unwrap_or_else(|e| panic!("the libvirt plugin does not start as {user}: {e}"));
    let provider = plugin
        .connect(None)
        .await
        .unwrap_or_else(|e| panic!("libvirt's session daemon is not usable: {e}"));
    assert!(
        !envrig_provider_api::Provider::capabilities(&provider).private_network,
        "a session daemon makes no bridges"
    );
    testkit::run_all(
        Arc::new(provider),
        guest.to_str().unwrap(),
        &testkit::unique(),
    )
    .await;
}
