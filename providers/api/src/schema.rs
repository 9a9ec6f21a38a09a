//! What a provider tells envrig about itself for the Envfile: its name, its
//! [`Capabilities`], the keys of its `[machines.NAME.<provider>]` table with their types,
//! and how a box's reference for it is checked.
//!
//! A schema is data, not code: envrig's `envfile` reads and checks the values by the
//! types named here (one reader per type, the same file:line:col diagnostics for every
//! provider), so a plugin describes its keys in its hello without running anything in
//! envrig. The types are the ones today's keys need; a provider needing another adds it here.

use serde::{Deserialize, Serialize};

use crate::Capabilities;

/// A provider's description of itself (a built-in provider's is a value; a plugin says its
/// own in its hello, `plugin::Hello`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schema {
    /// The provider's name as Envfiles use it.
    pub name: String,
    pub capabilities: Capabilities,
    /// The keys of `[machines.NAME.<provider>]`, in the order diagnostics list them;
    /// every other key is refused.
    #[serde(default)]
    pub keys: Vec<Key>,
    /// How a `[boxes.NAME] <provider> = "..."` reference is checked.
    #[serde(default)]
    pub box_ref: BoxRef,
    /// The URI schemes of the engines this provider connects to (`tcp`, `qemu+ssh`): an
    /// engine endpoint (`envrig engine add NAME URI`) belongs to the provider whose
    /// schemes include its URI's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub engine_schemes: Vec<String>,
}

/// One key of a provider's table and the type of its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    pub name: String,
    #[serde(flatten)]
    pub kind: KeyKind,
}

/// The type of a key's value, and so how it is checked and what the provider receives
/// in `MachineSpec::options` (`OptionValue`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum KeyKind {
    /// `true` or `false`: `OptionValue::Bool`.
    Bool,
    /// A string among `values` (did-you-mean on a near miss): `OptionValue::Str`.
    OneOf { values: Vec<String> },
    /// A size like `"20GiB"` or `"512MB"`: `OptionValue::Int`, in bytes.
    Size,
    /// A non-empty string of ASCII letters, digits, `.`, `_` and `-`: `OptionValue::Str`.
    /// `like` completes the refusal "`x y` is not ...": `a machine type like "q35"`.
    Word { like: String },
}

/// How a box's reference for a provider is checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BoxRef {
    /// Any non-empty string (a path or a name the provider looks up itself).
    #[default]
    Any,
    /// An OCI image reference like `debian:12` or `registry.example/app@sha256:...`.
    Image,
}

impl BoxRef {
    /// What a reference looks like, for help texts: `docker = "IMAGE"`.
    pub fn placeholder(self) -> &'static str {
        match self {
            BoxRef::Any => "BOX",
            BoxRef::Image => "IMAGE",
        }
    }
}

impl Key {
    pub fn bool(name: &str) -> Key {
        Key::new(name, KeyKind::Bool)
    }

    pub fn one_of(name: &str, values: &[&str]) -> Key {
        let values = values.iter().map(|v| v.to_string()).collect();
        Key::new(name, KeyKind::OneOf { values })
    }

    pub fn size(name: &str) -> Key {
        Key::new(name, KeyKind::Size)
    }

    pub fn word(name: &str, like: &str) -> Key {
        Key::new(
            name,
            KeyKind::Word {
                like: like.to_string(),
            },
        )
    }

    fn new(name: &str, kind: KeyKind) -> Key {
        Key {
            name: name.to_string(),
            kind,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schema_reads_back_and_its_new_fields_may_be_missing() {
        let s = Schema {
            name: "x".into(),
            capabilities: Capabilities::default(),
            keys: vec![
                Key::bool("b"),
                Key::one_of("o", &["p", "q"]),
                Key::size("s"),
                Key::word("w", "a word like \"w\""),
            ],
            box_ref: BoxRef::Image,
            engine_schemes: vec!["tcp".into()],
        };
        let text = serde_json::to_string(&s).unwrap();
        assert!(
            text.contains(r#"{"name":"o","type":"one_of","values":["p","q"]}"#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Schema>(&text).unwrap(), s);
        let bare: Schema = serde_json::from_str(r#"{"name":"x","capabilities":{}}"#).unwrap();
        assert_eq!((bare.keys.len(), bare.box_ref), (0, BoxRef::Any));
    }
}
