//! From an Envfile machine to the provider-neutral [`MachineSpec`], and the hash of the
//! settings that shape the resource (a different hash makes a machine `stale`).

use envrig_provider_api::{MachineSpec, NetworkAttachment, SyncedFolder, labels};

use super::project::Project;
use super::resolved::Resolved;
use crate::envfile::Machine;
use crate::identity::sha256_hex;
use crate::plan::Desired;

/// The spec for `machine`'s resource of `generation`, labelled with the environment's
/// identity and the config hash, made from what `resolved` says of it (pin, fingerprint,
/// inputs, layer).
pub fn machine_spec(
    project: &Project,
    resolved: &Resolved,
    machine: &Machine,
    generation: u32,
    created: &str,
) -> MachineSpec {
    let mut spec = MachineSpec {
        resource_name: project.identity.resource_name(&machine.name, generation),
        machine: machine.name.to_string(),
        base: machine.base.clone(),
        cpus: machine.cpus,
        memory_bytes: machine.memory,
        hostname: machine.hostname.clone(),
        env: machine.env.clone(),
        command: machine.command.clone(),
        ports: machine.ports.clone(),
        synced: machine
            .synced
            .iter()
            .map(|s| SyncedFolder {
                host: s.host.to_string_lossy().into_owned(),
                guest: s.guest.clone(),
                read_only: s.read_only,
            })
            .collect(),
        labels: project.identity.labels(&machine.name, generation, created),
        options: machine.options(),
        network: project.network_name().map(|network| NetworkAttachment {
            network,
            aliases: aliases(machine),
        }),
        handover: project.hands_over(),
        warm: false,
    };
    let config = config_hash(&spec);
    spec.labels.insert(labels::CONFIG.to_string(), config);
    // What Envfile.lock says: the pinned base to create from (the hash above is of the
    // Envfile's reference, so a pin never makes a machine stale), and the fingerprint.
    if let Some(pinned) = resolved.pin(machine.name.as_str()) {
        spec.base = pinned.to_string();
    }
    if let Some(fp) = resolved.fingerprint(machine.name.as_str()) {
        spec.labels
            .insert(labels::FINGERPRINT.to_string(), fp[..16].to_string());
    }
    if let Some(inputs) = resolved.inputs(machine.name.as_str())
        && let Ok(j) = serde_json::to_string(inputs)
    {
        spec.labels.insert(labels::INPUTS.to_string(), j);
    }
    if let Some(start) = super::start::StartRecipe::of(&project.envfile.dir, machine)
        .filter(|r| !r.always.is_empty() || r.ready.is_some())
        .and_then(|r| r.to_label())
    {
        spec.labels.insert(labels::START.to_string(), start);
    }
    // A baked layer of the same fingerprint replaces the base (see `ops::bake`).
    if let Some(layer) = resolved.layer(machine.name.as_str()) {
        spec.base = layer.to_string();
        if let Some(fp) = spec.labels.get(labels::FINGERPRINT).cloned() {
            spec.labels.insert(labels::LAYER.to_string(), fp);
        }
        spec.warm = super::bake::warm(project, machine);
    }
    if let Some(ttl) = project.ttl.or(machine.ttl)
        && let Some(expires) = expires_at(created, ttl)
    {
        spec.labels.insert(labels::EXPIRES.to_string(), expires);
    }
    if let Some(owner) = &project.owner {
        spec.labels.insert(labels::OWNER.to_string(), owner.clone());
    }
    spec.labels
        .insert(labels::PROVIDER.to_string(), machine.provider.clone());
    spec
}

/// When a machine created at `created` (RFC 3339) with `ttl` expires, as RFC 3339. None
/// when that time cannot be written (past year 9999: its `Display` fails), never a panic,
/// whatever `created` was read back from.
fn expires_at(created: &str, ttl: std::time::Duration) -> Option<String> {
    use std::fmt::Write;
    let at = humantime::parse_rfc3339(created).ok()?.checked_add(ttl)?;
    let mut out = String::new();
    write!(out, "{}", humantime::format_rfc3339_seconds(at)).ok()?;
    Some(out)
}

/// The hash of the settings that shape a machine's resource: everything in the spec but its
/// name and labels (which carry times and generations).
pub fn config_hash(spec: &MachineSpec) -> String {
    let mut shaping = spec.clone();
    shaping.resource_name.clear();
    shaping.labels.clear();
    // How a provider carries ports and names over generations does not shape the machine.
    shaping.handover = false;
    // Nor whether it starts warm: a warm start ends where a boot does.
    shaping.warm = false;
    let json = serde_json::to_vec(&shaping).unwrap_or_default();
    sha256_hex(&json)[..12].to_string()
}

/// What the selected machines should be, for the planner: provider, config hash and the
/// fingerprint and its inputs.
pub fn desired(project: &Project, resolved: &Resolved, machines: &[&Machine]) -> Vec<Desired> {
    machines
        .iter()
        .map(|m| Desired {
            machine: m.name.clone(),
            provider: m.provider.clone(),
            config: config_hash(&machine_spec(project, resolved, m, 1, "")),
            fingerprint: resolved
                .fingerprint(m.name.as_str())
                .map(|f| f[..16.min(f.len())].to_string()),
            inputs: resolved
                .inputs(m.name.as_str())
                .cloned()
                .unwrap_or_default(),
        })
        .collect()
}

/// The names other machines reach `machine` by: its name, and its hostname when it differs.
pub(super) fn aliases(machine: &Machine) -> Vec<String> {
    let mut aliases = vec![machine.name.to_string()];
    if machine.hostname != machine.name.as_str() {
        aliases.push(machine.hostname.clone());
    }
    aliases
}

#[cfg(test)]
mod expiry_tests {
    use super::expires_at;
    use std::time::Duration;

    #[test]
    fn an_expiry_past_year_9999_is_no_label_and_no_panic() {
        let h = Duration::from_secs(3600);
        assert_eq!(
            expires_at("2026-01-01T00:00:00Z", 2 * h).as_deref(),
            Some("2026-01-01T02:00:00Z")
        );
        assert_eq!(expires_at("9999-12-31T23:00:00Z", 2 * h), None);
        assert_eq!(expires_at("2026-01-01T00:00:00Z", Duration::MAX), None);
        assert_eq!(expires_at("not a time", h), None);
    }
}
