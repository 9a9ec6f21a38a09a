//! What an `up` resolves before planning ([`Resolved`]): the bases `Envfile.lock` pins, the
//! machines' fingerprints and their inputs (`lockfile::before_up`), and the baked layers
//! that machines created now start from (`bake::choose_layers`). It is a value, passed to
//! planning (`spec::desired`), spec building (`spec::machine_spec`) and provisioning; the
//! commands that resolve nothing pass an empty one.

use std::collections::BTreeMap;

/// What was resolved for the machines of one `up`, by machine name.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    /// Bases pinned by `Envfile.lock` that machines are created from.
    pub pins: BTreeMap<String, String>,
    /// Machines' fingerprints (written on their resources).
    pub fingerprints: BTreeMap<String, String>,
    /// Baked layers that machines created now start from.
    pub layers: BTreeMap<String, String>,
    /// Machines' fingerprint inputs (written on their resources).
    pub inputs: BTreeMap<String, BTreeMap<String, String>>,
    /// The team's layer cache this `up` pulls from (and pushes to), if any.
    pub cache: Option<super::cache::Cache>,
}

impl Resolved {
    /// The base `machine` is pinned to, if the lock pins one that is here.
    pub fn pin(&self, machine: &str) -> Option<&str> {
        self.pins.get(machine).map(String::as_str)
    }

    /// `machine`'s fingerprint, when its base is known.
    pub fn fingerprint(&self, machine: &str) -> Option<&str> {
        self.fingerprints.get(machine).map(String::as_str)
    }

    /// The baked layer `machine` is created from, if any.
    pub fn layer(&self, machine: &str) -> Option<&str> {
        self.layers.get(machine).map(String::as_str)
    }

    /// `machine`'s fingerprint inputs, when its base is known.
    pub fn inputs(&self, machine: &str) -> Option<&BTreeMap<String, String>> {
        self.inputs.get(machine)
    }

    /// The same, with `machine` created from `layer` (a layer just built for it).
    pub fn with_layer(&self, machine: &str, layer: &str) -> Resolved {
        let mut r = self.clone();
        r.layers.insert(machine.to_string(), layer.to_string());
        r
    }
}
