//! What the Envfile knows of providers, in one place until the providers describe their
//! own schema: the provider names it accepts, the default one, the keys of each
//! `[machines.NAME.<provider>]` table and how they are read, and how a box's reference for
//! a provider is checked.

use std::collections::BTreeMap;

use envrig_provider_api::OptionValue;

use super::read::{Parser, V, get, join};
use super::values;

/// Provider names the Envfile format knows (whether or not this build has them).
pub const KNOWN_PROVIDERS: &[&str] = &["docker", "libvirt"];

/// The provider used when neither the machine, the command line nor the project names one.
pub const DEFAULT_PROVIDER: &str = "docker";

const DOCKER_KEYS: &[&str] = &["privileged", "init"];
const LIBVIRT_KEYS: &[&str] = &["machine_type", "accel", "disk_size", "synced", "graphics"];

impl Parser<'_> {
    pub(super) fn options(
        &mut self,
        path: &str,
        v: &V<'_>,
        provider: &str,
    ) -> Option<BTreeMap<String, OptionValue>> {
        let table = self.table(path, v)?;
        let known = if provider == "docker" {
            DOCKER_KEYS
        } else {
            LIBVIRT_KEYS
        };
        self.check_keys(path, table, known);
        let mut out = BTreeMap::new();
        for key in known {
            let Some(val) = get(table, key) else { continue };
            let p = join(path, key);
            let parsed = match *key {
                "privileged" | "init" => self.bool(&p, val).map(OptionValue::Bool),
                "graphics" => self
                    .one_of(&p, val, &["vnc", "spice", "none"])
                    .map(OptionValue::Str),
                "machine_type" => self.str(&p, val).and_then(|s| {
                    let ok = !s.is_empty()
                        && s.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
                    if ok {
                        Some(OptionValue::Str(s))
                    } else {
                        self.error(
                            &p,
                            val.span(),
                            format!("`{s}` is not a machine type like \"q35\" or \"pc\""),
                        );
                        None
                    }
                }),
                "accel" => self
                    .one_of(&p, val, &["auto", "kvm", "tcg"])
                    .map(OptionValue::Str),
                "synced" => self
                    .one_of(&p, val, &["auto", "virtiofs", "9p", "rsync"])
                    .map(OptionValue::Str),
                "disk_size" => self.str(&p, val).and_then(|s| {
                    let r = values::parse_size(&s);
                    self.with(&p, val, r).map(|b| OptionValue::Int(b as i64))
                }),
                _ => None,
            };
            if let Some(parsed) = parsed {
                out.insert(key.to_string(), parsed);
            }
        }
        Some(out)
    }

    /// Checks `s`, a box's reference for `provider` written at `path`.
    pub(super) fn check_box_ref(&mut self, provider: &str, path: &str, v: &V<'_>, s: &str) {
        if provider == "docker" {
            // Reported here; the reference is kept so machines using the box do
            // not report a second, misleading "no reference" error.
            let c = values::check_image_ref(s);
            self.with(path, v, c);
        }
    }
}
