//! What the Envfile leaves to providers, read against what they say of themselves
//! ([`Providers`]: the registry, whose schemas are `envrig_provider_api::schema`): which
//! words name providers, the keys of each `[machines.NAME.<provider>]` table by the types
//! the provider declares, and box references. No provider is named here.
//!
//! A word that is none of this envrig's providers is taken for a provider of another host
//! (a plugin not installed here) when it is a valid provider name and no known word is a
//! near miss of it; a near miss is an error with a did-you-mean.

use std::collections::BTreeMap;
use std::ops::Range;

use envrig_provider_api::OptionValue;
use envrig_provider_api::schema::{BoxRef, KeyKind, Schema};

use super::diag::did_you_mean;
use super::read::{Parser, V, get, join};
use super::values::{self, Name};

/// What loading asks of the providers: envrig's registry, or a list in tests.
pub trait Providers {
    /// The names of the providers this envrig has, the default one (used when neither a
    /// machine, the project nor `--provider` names one) first. Starts no plugin.
    fn names(&self) -> Vec<&str>;
    /// Provider `name`'s schema; `None` when there is no such provider or it cannot say
    /// (its plugin does not start). May start a plugin.
    fn schema(&self, name: &str) -> Option<&Schema>;
}

/// Every schema listed is a provider, the first the default.
impl Providers for Vec<Schema> {
    fn names(&self) -> Vec<&str> {
        self.iter().map(|s| s.name.as_str()).collect()
    }

    fn schema(&self, name: &str) -> Option<&Schema> {
        self.iter().find(|s| s.name == name)
    }
}

/// A box's reference for a provider, checked once the providers in use are known.
pub(super) struct BoxRefAt {
    pub(super) provider: String,
    pub(super) path: String,
    pub(super) span: Range<usize>,
    pub(super) reference: String,
}

impl Parser<'_> {
    /// The default provider's name.
    pub(super) fn default_provider(&self) -> String {
        let names = self.opts.providers.names();
        names.first().copied().unwrap_or_default().to_string()
    }

    /// Whether `key`, among keys `known`, names a provider: one of this envrig's, or a
    /// valid provider name that is no near miss of a known word.
    pub(super) fn names_provider(&self, key: &str, known: &[&str]) -> bool {
        let names = self.opts.providers.names();
        names.contains(&key)
            || (did_you_mean(key, known.iter().chain(&names).copied()).is_none()
                && Name::parse(key).is_ok())
    }

    /// A `provider = "..."` value.
    pub(super) fn provider(&mut self, path: &str, v: &V<'_>) -> Option<String> {
        let s = self.str(path, v)?;
        if self.names_provider(&s, &[]) {
            return Some(s);
        }
        let opts = self.opts;
        self.one_of(path, v, &opts.providers.names())
    }

    /// The keys of `[machines.NAME.<provider>]`, read by the types the provider's schema
    /// declares; taken as written (empty) when the provider cannot say (`envrig up`
    /// refuses its machines and says why).
    pub(super) fn options(
        &mut self,
        path: &str,
        v: &V<'_>,
        provider: &str,
    ) -> Option<BTreeMap<String, OptionValue>> {
        let table = self.table(path, v)?;
        let opts = self.opts;
        let Some(schema) = opts.providers.schema(provider) else {
            return Some(BTreeMap::new());
        };
        let known: Vec<&str> = schema.keys.iter().map(|k| k.name.as_str()).collect();
        self.check_keys(path, table, &known);
        let mut out = BTreeMap::new();
        for key in &schema.keys {
            let Some(val) = get(table, &key.name) else {
                continue;
            };
            let p = join(path, &key.name);
            let parsed = match &key.kind {
                KeyKind::Bool => self.bool(&p, val).map(OptionValue::Bool),
                KeyKind::OneOf { values } => {
                    let values: Vec<&str> = values.iter().map(String::as_str).collect();
                    self.one_of(&p, val, &values).map(OptionValue::Str)
                }
                KeyKind::Size => self.str(&p, val).and_then(|s| {
                    let r = values::parse_size(&s);
                    self.with(&p, val, r).map(|b| OptionValue::Int(b as i64))
                }),
                KeyKind::Word { like } => self.str(&p, val).and_then(|s| {
                    let ok = !s.is_empty()
                        && s.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
                    let r = if ok {
                        Ok(OptionValue::Str(s))
                    } else {
                        Err(format!("`{s}` is not {like}"))
                    };
                    self.with(&p, val, r)
                }),
            };
            if let Some(parsed) = parsed {
                out.insert(key.name.clone(), parsed);
            }
        }
        Some(out)
    }

    /// Checks a box's reference as its provider's schema says (a provider that cannot
    /// say checks its references itself). Reported where it is written; the reference is
    /// kept either way, so machines using the box do not report a second, misleading
    /// "no reference" error.
    pub(super) fn check_box_ref(&mut self, r: &BoxRefAt) {
        let opts = self.opts;
        let Some(schema) = opts.providers.schema(&r.provider) else {
            return;
        };
        match schema.box_ref {
            BoxRef::Any => {}
            BoxRef::Image => {
                if let Err(msg) = values::check_image_ref(&r.reference) {
                    self.error(&r.path, r.span.clone(), msg);
                }
            }
        }
    }

    /// `NAME = "PLACEHOLDER"` for each provider, for help texts (a plugin that cannot say
    /// gets `"..."`).
    pub(super) fn box_ref_examples(&self, names: &[&str]) -> Vec<String> {
        names
            .iter()
            .map(|n| {
                let placeholder = self
                    .opts
                    .providers
                    .schema(n)
                    .map_or("...", |s| s.box_ref.placeholder());
                format!("`{n} = \"{placeholder}\"`")
            })
            .collect()
    }
}
