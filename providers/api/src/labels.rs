//! The label vocabulary written on every engine resource, and selectors over it.
//!
//! Labels are how envrig rebuilds its state from the engines alone: a container (or a libvirt
//! domain's metadata) says which environment, machine and generation it belongs to.

use std::collections::BTreeMap;

/// Prefix of every envrig label.
/// The name every baked layer starts with: `envrig-baked-<fingerprint16>[-w|-wn]`.
pub const BAKED_NAME_PREFIX: &str = "envrig-baked-";

/// The fingerprint (16 hex digits) a baked layer's name carries; empty for another name.
pub fn baked_fingerprint(name: &str) -> &str {
    name.strip_prefix(BAKED_NAME_PREFIX)
        .and_then(|r| r.split('-').next())
        .unwrap_or("")
}

pub const PREFIX: &str = "dev.envrig.";
/// The environment identity: a hash of the project name and its folder.
pub const ENV: &str = "dev.envrig.env";
/// The project's name (as in the Envfile, or derived from the folder).
pub const PROJECT: &str = "dev.envrig.project";
/// The absolute folder of the Envfile.
pub const FOLDER: &str = "dev.envrig.folder";
/// The absolute path of the Envfile.
pub const ENVFILE: &str = "dev.envrig.envfile";
/// The machine's name in the Envfile.
pub const MACHINE: &str = "dev.envrig.machine";
/// The machine's generation (1, 2, ...).
pub const GENERATION: &str = "dev.envrig.generation";
/// The provider that created the resource.
pub const PROVIDER: &str = "dev.envrig.provider";
/// The engine endpoint the resource was placed on (`envrig engine add` NAME, `local` for
/// the provider's local engine).
pub const ENGINE: &str = "dev.envrig.engine";
/// What the machine reserves of its engine, for placement's headroom: memory in bytes
/// and CPUs, as `MEMORY,CPUS`.
pub const RESERVES: &str = "dev.envrig.reserves";
/// The envrig version that created the resource.
pub const VERSION: &str = "dev.envrig.version";
/// When the resource was created (RFC 3339, UTC).
pub const CREATED: &str = "dev.envrig.created";
/// The hash of the settings that shaped the resource; a different hash means "stale".
pub const CONFIG: &str = "dev.envrig.config";
/// When `gc` may destroy the resource (RFC 3339, UTC); absent: never.
pub const EXPIRES: &str = "dev.envrig.expires";
/// On a snapshot: its name.
pub const SNAPSHOT: &str = "dev.envrig.snapshot";
/// On a snapshot: the id of the save that made it (one per `snapshot save`, `export` or
/// `import`), shared by every machine saved at that moment.
pub const SNAPSHOT_SET: &str = "dev.envrig.snapshot.set";
/// On a snapshot: the machines its save took (comma-separated), so a set that a killed save
/// left incomplete is recognised and never listed.
pub const SNAPSHOT_MACHINES: &str = "dev.envrig.snapshot.machines";
/// On a temporary snapshot (the moment an `export` of "now" takes): the process that owns it
/// (`BOOT_ID:PID:START_TIME`). Never listed; deleted by its export, or by the next save,
/// export or destroy once that process is gone.
pub const SNAPSHOT_TEMP: &str = "dev.envrig.snapshot.temp";
/// On a packaged base: the fingerprint of what it was made from (config and steps).
pub const FINGERPRINT: &str = "dev.envrig.fingerprint";
/// On a snapshot: the machine wrote its files to disk first (its disk alone holds them).
pub const FLUSHED: &str = "dev.envrig.flushed";
/// On a machine: its fingerprint's inputs, readable (JSON), so a later `up` can say what
/// changed.
pub const INPUTS: &str = "dev.envrig.inputs";
/// What starting the generation means (its `always` steps and readiness check as the Envfile
/// said when it was made), as JSON: `rollback` starts an older generation with it.
pub const START: &str = "dev.envrig.start";
/// On a new generation's build (provisioned beside the generation that serves, then baked
/// and removed): never a machine's current resource.
pub const CANDIDATE: &str = "dev.envrig.candidate";
/// On a baked layer: the full fingerprint of the machine whose provisioned state it holds.
pub const BAKED: &str = "dev.envrig.baked";
/// On a layer's labels given to `package`: keep the machine's running memory with the layer
/// (providers with `warm_start`), so machines made from it start warm.
pub const WARM: &str = "dev.envrig.warm";
/// On an imported snapshot's labels given to `snapshot_import`: bring the machine back from
/// its disk and boot it, even when it carries saved memory (`import --cold`).
pub const COLD: &str = "dev.envrig.cold";
/// On the [`crate::MachineInfo`] a restore of an imported snapshot returns (never on a
/// resource): the machine resumed from its saved memory, its processes kept.
pub const RESUMED: &str = "dev.envrig.resumed";
/// On a machine made from a baked layer: that layer's fingerprint (16 hex digits).
pub const LAYER: &str = "dev.envrig.layer";
/// On a network holder (a provider's resource that keeps a machine's host ports and names
/// while its generations come and go): the hash of what it holds. Never a machine.
pub const HOLDER: &str = "dev.envrig.holder";
/// Where the resource was made from: the machine id and the mount and pid namespaces of
/// the envrig that made it. `gc` judges "folder gone" and "process gone" only for its own.
pub const HOST: &str = "dev.envrig.host";
/// For the environment of one `envrig run`: its instance id.
pub const INSTANCE: &str = "dev.envrig.instance";
/// For the environment of one `envrig run`: the process that owns it
/// (`BOOT_ID:PID:START_TIME`), so `gc` can tell when it died.
pub const OWNER: &str = "dev.envrig.owner";

/// A conjunction of label conditions: every `(key, Some(v))` must equal, every `(key, None)`
/// must be present.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Selector {
    pub conditions: Vec<(String, Option<String>)>,
}

impl Selector {
    /// Everything envrig created, in every environment.
    pub fn all_envrig() -> Self {
        Selector::default().has(ENV)
    }

    /// Everything of one environment.
    pub fn env(env_id: &str) -> Self {
        Selector::default().eq(ENV, env_id)
    }

    pub fn eq(mut self, key: &str, value: &str) -> Self {
        self.conditions
            .push((key.to_string(), Some(value.to_string())));
        self
    }

    pub fn has(mut self, key: &str) -> Self {
        self.conditions.push((key.to_string(), None));
        self
    }

    /// Whether `labels` satisfy every condition.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.conditions.iter().all(|(k, v)| match v {
            Some(v) => labels.get(k) == Some(v),
            None => labels.contains_key(k),
        })
    }

    /// Docker-style `key=value` / `key` filter strings.
    pub fn to_filter_strings(&self) -> Vec<String> {
        self.conditions
            .iter()
            .map(|(k, v)| match v {
                Some(v) => format!("{k}={v}"),
                None => k.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layers_fingerprint_is_read_from_its_name() {
        assert_eq!(
            baked_fingerprint("envrig-baked-0123456789abcdef"),
            "0123456789abcdef"
        );
        assert_eq!(
            baked_fingerprint("envrig-baked-0123456789abcdef-wn"),
            "0123456789abcdef"
        );
        assert_eq!(baked_fingerprint("debian"), "");
    }

    #[test]
    fn selector_matches_equality_and_presence() {
        let mut labels = BTreeMap::new();
        labels.insert(ENV.to_string(), "abc".to_string());
        labels.insert(MACHINE.to_string(), "web".to_string());
        assert!(Selector::env("abc").matches(&labels));
        assert!(!Selector::env("abd").matches(&labels));
        assert!(Selector::env("abc").has(MACHINE).matches(&labels));
        assert!(!Selector::env("abc").has(GENERATION).matches(&labels));
        assert_eq!(
            Selector::env("abc").has(MACHINE).to_filter_strings(),
            vec![
                "dev.envrig.env=abc".to_string(),
                "dev.envrig.machine".to_string()
            ]
        );
    }
}
