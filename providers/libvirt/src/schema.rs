//! What the libvirt provider says of itself before it connects: its capabilities (on the
//! daemon a command with no endpoint connects to) and its Envfile keys.

use envrig_provider_api::Capabilities;
use envrig_provider_api::schema::{BoxRef, Key, Schema};

use crate::{NAME, remote};

/// What the libvirt provider can do (known without connecting).
pub const CAPABILITIES: Capabilities = Capabilities {
    custom_command: false,
    live_synced_folders: false,
    ssh: true,
    interactive: false,
    private_network: true,
    box_store: true,
    drift_from_base: false,
    spanning_network: false,
    shares_network: true,
    warm_start: true,
};

/// The provider's name in Envfiles.
pub const PROVIDER_NAME: &str = NAME;

/// The URI a connection with no endpoint opens: `LIBVIRT_DEFAULT_URI`, else the system
/// daemon.
pub(crate) fn default_uri() -> String {
    std::env::var("LIBVIRT_DEFAULT_URI")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "qemu:///system".to_string())
}

/// Whether `uri` is this host's unprivileged daemon (`qemu:///session`): VMs run as the
/// user, with user-mode networking; it cannot make bridges, so no private network.
pub(crate) fn is_session(uri: &str) -> bool {
    remote::remote_host(uri).is_none() && !uri.split('?').next().unwrap_or(uri).ends_with("/system")
}

/// What the provider can do on a daemon at `uri`.
pub(crate) fn capabilities_at(uri: &str) -> Capabilities {
    Capabilities {
        private_network: !is_session(uri),
        // Another provider's machines join the bridge only on this host.
        shares_network: !is_session(uri) && remote::remote_host(uri).is_none(),
        ..CAPABILITIES
    }
}

/// What the Envfile may say to this provider: `[machines.NAME.libvirt]`'s keys (read in
/// `define.rs`, `hardware.rs`, `disk.rs` and `synced.rs`) and boxes as a folder or a name in the store
/// (any non-empty string: `store.rs` looks it up).
pub fn schema() -> Schema {
    Schema {
        name: NAME.to_string(),
        // Said at the plugin's hello, before any connection: for the daemon a command with
        // no endpoint connects to.
        capabilities: capabilities_at(&default_uri()),
        keys: vec![
            Key::word("machine_type", "a machine type like \"q35\" or \"pc\""),
            Key::one_of("accel", &["auto", "kvm", "tcg"]),
            Key::size("disk_size"),
            Key::one_of("synced", &["auto", "virtiofs", "9p", "rsync"]),
            Key::one_of("graphics", &["vnc", "spice", "none"]),
            Key::one_of(
                "video",
                &["cirrus", "vga", "virtio", "qxl", "bochs", "ramfb"],
            ),
            Key::one_of("cpu_mode", &["host-passthrough", "host-model", "maximum"]),
            Key::bool("nested"),
        ],
        box_ref: BoxRef::Any,
        engine_schemes: ["qemu", "qemu+ssh", "qemu+tcp", "qemu+tls", "qemu+unix"]
            .map(String::from)
            .to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_hosts_unprivileged_daemon_lacks_a_private_network() {
        for uri in [
            "qemu:///session",
            "qemu+unix:///session",
            "qemu:///session?x=1",
        ] {
            assert!(is_session(uri), "{uri}");
            assert!(!capabilities_at(uri).private_network, "{uri}");
        }
        for uri in [
            "qemu:///system",
            "qemu+unix:///system",
            "qemu+ssh://h/system",
            "qemu+tcp://h/system",
        ] {
            assert!(!is_session(uri), "{uri}");
            assert!(capabilities_at(uri).private_network, "{uri}");
        }
    }
}
