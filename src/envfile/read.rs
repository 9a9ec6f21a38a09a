//! Value readers: the [`Parser`] that walks the spanned TOML tree collects diagnostics as it
//! reads tables, arrays, strings (with `${VAR}` expansion), booleans, integers, names,
//! `env` tables and host and guest paths, each error pointing at the exact key or value.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::LoadOptions;
use super::diag::{Diagnostic, did_you_mean};
use super::expand::expand;
use super::values;

/// A value of the document, with its span.
pub(super) type V<'i> = Spanned<DeValue<'i>>;

/// Reads values, collecting every problem as a [`Diagnostic`].
pub(super) struct Parser<'a> {
    /// The Envfile's folder: host paths are relative to it.
    pub(super) dir: &'a Path,
    pub(super) opts: &'a LoadOptions<'a>,
    pub(super) diags: Vec<Diagnostic>,
}

pub(super) fn join(path: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if bare {
        key.to_string()
    } else {
        format!("{key:?}")
    };
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}

pub(super) fn kind(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

pub(super) fn get<'t, 'i>(table: &'t DeTable<'i>, key: &str) -> Option<&'t V<'i>> {
    table
        .iter()
        .find(|(k, _)| k.get_ref().as_ref() == key)
        .map(|(_, v)| v)
}

impl<'a> Parser<'a> {
    pub(super) fn error(&mut self, path: &str, span: Range<usize>, msg: impl Into<String>) {
        self.diags.push(Diagnostic::error(path, span, msg));
    }

    pub(super) fn error_help(
        &mut self,
        path: &str,
        span: Range<usize>,
        msg: impl Into<String>,
        help: impl Into<String>,
    ) {
        self.diags
            .push(Diagnostic::error(path, span, msg).with_help(help));
    }

    pub(super) fn expected(&mut self, path: &str, v: &V<'_>, what: &str) {
        let found = kind(v.get_ref());
        self.error(path, v.span(), format!("expected {what}, found {found}"));
    }

    /// Reports every key of `table` not in `known`.
    pub(super) fn check_keys(&mut self, path: &str, table: &DeTable<'_>, known: &[&str]) {
        self.check_keys_except(path, table, known, &[]);
    }

    /// Reports every key of `table` not in `known` nor in `also` (keys taken for another
    /// reason, not offered in a did-you-mean).
    pub(super) fn check_keys_except(
        &mut self,
        path: &str,
        table: &DeTable<'_>,
        known: &[&str],
        also: &[&str],
    ) {
        for (k, _) in table.iter() {
            let key = k.get_ref().as_ref();
            if known.contains(&key) || also.contains(&key) {
                continue;
            }
            let full = join(path, key);
            let where_ = if path.is_empty() {
                "at the top level".to_string()
            } else {
                format!("in `{path}`")
            };
            match did_you_mean(key, known.iter().copied()) {
                Some(s) => self.error_help(
                    &full,
                    k.span(),
                    format!("unknown key `{key}` {where_}"),
                    format!("did you mean `{s}`?"),
                ),
                None => self.error_help(
                    &full,
                    k.span(),
                    format!("unknown key `{key}` {where_}"),
                    format!("expected one of: {}", known.join(", ")),
                ),
            }
        }
    }

    pub(super) fn table<'t, 'i>(&mut self, path: &str, v: &'t V<'i>) -> Option<&'t DeTable<'i>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => {
                self.expected(path, v, "a table");
                None
            }
        }
    }

    pub(super) fn array<'t, 'i>(&mut self, path: &str, v: &'t V<'i>) -> Option<&'t [V<'i>]> {
        match v.get_ref() {
            DeValue::Array(a) => Some(a.as_ref()),
            _ => {
                self.expected(path, v, "an array");
                None
            }
        }
    }

    /// A string, taken as written (no `${VAR}` expansion).
    pub(super) fn raw_str(&mut self, path: &str, v: &V<'_>) -> Option<String> {
        match v.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            _ => {
                self.expected(path, v, "a string");
                None
            }
        }
    }

    /// A string with `${VAR}` expanded from the host's environment.
    pub(super) fn str(&mut self, path: &str, v: &V<'_>) -> Option<String> {
        let raw = self.raw_str(path, v)?;
        match expand(&raw, self.opts.env) {
            Ok(s) => Some(s),
            Err(e) => {
                let help = match &e {
                    super::ExpandError::Unset(name) => format!(
                        "set `{name}`, or give a default: \"${{{name}:-value}}\"; write `$$` for a literal `$`"
                    ),
                    _ => "write `${NAME}` or `${NAME:-default}`; `$$` is a literal `$`".to_string(),
                };
                self.error_help(path, v.span(), e.to_string(), help);
                None
            }
        }
    }

    pub(super) fn non_empty_str(&mut self, path: &str, v: &V<'_>) -> Option<String> {
        let s = self.str(path, v)?;
        if s.trim().is_empty() {
            self.error(path, v.span(), "must not be empty");
            return None;
        }
        Some(s)
    }

    pub(super) fn bool(&mut self, path: &str, v: &V<'_>) -> Option<bool> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.expected(path, v, "`true` or `false`");
                None
            }
        }
    }

    pub(super) fn int(&mut self, path: &str, v: &V<'_>, min: i64, max: i64) -> Option<i64> {
        let n = match v.get_ref() {
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix()).ok(),
            _ => {
                self.expected(path, v, "an integer");
                return None;
            }
        };
        match n {
            Some(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                self.error(path, v.span(), format!("must be between {min} and {max}"));
                None
            }
        }
    }

    pub(super) fn with<T>(&mut self, path: &str, v: &V<'_>, r: Result<T, String>) -> Option<T> {
        match r {
            Ok(t) => Some(t),
            Err(msg) => {
                self.error(path, v.span(), msg);
                None
            }
        }
    }

    pub(super) fn one_of(&mut self, path: &str, v: &V<'_>, allowed: &[&str]) -> Option<String> {
        let s = self.str(path, v)?;
        if allowed.contains(&s.as_str()) {
            return Some(s);
        }
        let list = allowed
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ");
        match did_you_mean(&s, allowed.iter().copied()) {
            Some(m) => self.error_help(
                path,
                v.span(),
                format!("`{s}` is not one of {list}"),
                format!("did you mean \"{m}\"?"),
            ),
            None => self.error(path, v.span(), format!("`{s}` is not one of {list}")),
        }
        None
    }

    pub(super) fn str_list(
        &mut self,
        path: &str,
        v: &V<'_>,
    ) -> Option<Vec<(String, Range<usize>)>> {
        let items = self.array(path, v)?;
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match self.str(&format!("{path}[{i}]"), item) {
                Some(s) => out.push((s, item.span())),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// An `env`-style table: names checked, values strings (numbers and booleans accepted).
    /// A table of string values (`engine_labels = { gpu = "yes" }`).
    pub(super) fn label_map(&mut self, path: &str, v: &V<'_>) -> Option<BTreeMap<String, String>> {
        let table = self.table(path, v)?;
        let mut out = BTreeMap::new();
        let mut ok = true;
        for (k, val) in table.iter() {
            let p = join(path, k.get_ref().as_ref());
            match self.str(&p, val) {
                Some(s) => {
                    out.insert(k.get_ref().to_string(), s);
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    pub(super) fn env_map(&mut self, path: &str, v: &V<'_>) -> Option<BTreeMap<String, String>> {
        let table = self.table(path, v)?;
        let mut out = BTreeMap::new();
        let mut ok = true;
        for (k, val) in table.iter() {
            let name = k.get_ref().as_ref();
            let p = join(path, name);
            if let Err(msg) = values::check_env_name(name) {
                self.error(&p, k.span(), msg);
                ok = false;
                continue;
            }
            let s = match val.get_ref() {
                DeValue::String(_) => self.str(&p, val),
                DeValue::Integer(i) => Some(i.to_string()),
                DeValue::Float(f) => Some(f.to_string()),
                DeValue::Boolean(b) => Some(b.to_string()),
                _ => {
                    self.expected(&p, val, "a string");
                    None
                }
            };
            match s {
                Some(s) => {
                    out.insert(name.to_string(), s);
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// A path relative to the Envfile's folder that must exist.
    pub(super) fn host_path(&mut self, path: &str, v: &V<'_>, want_file: bool) -> Option<String> {
        let s = self.non_empty_str(path, v)?;
        if !self.opts.check_paths {
            return Some(s);
        }
        let full = self.dir.join(&s);
        match std::fs::metadata(&full) {
            Ok(m) if want_file && !m.is_file() => {
                self.error(path, v.span(), format!("`{s}` is not a file"));
                None
            }
            Ok(_) => Some(s),
            Err(_) => {
                self.error_help(
                    path,
                    v.span(),
                    format!("`{s}` does not exist"),
                    format!(
                        "paths are relative to the Envfile's folder ({})",
                        self.dir.display()
                    ),
                );
                None
            }
        }
    }

    pub(super) fn guest_path(&mut self, path: &str, v: &V<'_>) -> Option<String> {
        let s = self.non_empty_str(path, v)?;
        if s.split('/').any(|c| c == "..") || s.contains(':') {
            self.error(
                path,
                v.span(),
                format!("`{s}` must not contain `..` or `:`"),
            );
            return None;
        }
        if s.trim_end_matches('/').is_empty() {
            self.error(path, v.span(), "must name a path below `/`, not `/` itself");
            return None;
        }
        if !s.starts_with('/') || s.contains('\0') {
            self.error(
                path,
                v.span(),
                format!("`{s}` must be an absolute path inside the machine"),
            );
            return None;
        }
        Some(s)
    }
}
