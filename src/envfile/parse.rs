//! The Envfile walker: reads the spanned TOML tree key by key, so that every error points at
//! the exact key or value, unknown keys get a "did you mean", and every problem is collected
//! rather than stopping at the first.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use envrig_provider_api::{OptionValue, PortSpec};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::diag::{Diagnostic, did_you_mean};
use super::expand::expand;
use super::values::{self, Name};
use super::{
    BoxDef, DEFAULT_PROVIDER, Envfile, KNOWN_PROVIDERS, KeySpan, LoadOptions, Machine, Network,
    Project, Ready, RunPolicy, Step, StepKind, Synced,
};

type V<'i> = Spanned<DeValue<'i>>;

/// Dependencies as written, each with its span.
type DepList = Vec<(Name, Range<usize>)>;

const TOP_KEYS: &[&str] = &["project", "network", "boxes", "defaults", "machines"];
const PROJECT_KEYS: &[&str] = &["name", "provider", "immutable", "keep", "bake"];
const NETWORK_KEYS: &[&str] = &["subnet"];
const MACHINE_KEYS: &[&str] = &[
    "box",
    "provider",
    "cpus",
    "memory",
    "hostname",
    "ports",
    "synced",
    "env",
    "depends_on",
    "ttl",
    "command",
    "drift_ignore",
    "ready",
    "provision",
    "docker",
    "libvirt",
];
const READY_KEYS: &[&str] = &["command", "timeout", "interval"];
const STEP_KEYS: &[&str] = &[
    "name", "shell", "script", "file", "args", "env", "run", "user",
];
const FILE_KEYS: &[&str] = &["source", "destination"];
const SYNCED_KEYS: &[&str] = &["host", "guest", "mode"];
const DOCKER_KEYS: &[&str] = &["privileged", "init"];
const LIBVIRT_KEYS: &[&str] = &["machine_type", "accel", "disk_size", "synced", "graphics"];

/// A value together with where it was written.
#[derive(Debug, Clone)]
struct Field<T> {
    value: T,
    at: KeySpan,
}

/// One machine table (or `[defaults]`) as written, before merging.
#[derive(Debug, Clone, Default)]
struct MachineRaw {
    box_name: Option<Field<String>>,
    provider: Option<Field<String>>,
    cpus: Option<Field<u32>>,
    memory: Option<Field<u64>>,
    hostname: Option<Field<String>>,
    ports: Option<Field<Vec<PortSpec>>>,
    synced: Option<Field<Vec<Synced>>>,
    env: Option<Field<BTreeMap<String, String>>>,
    depends_on: Option<Field<DepList>>,
    ttl: Option<Field<Duration>>,
    command: Option<Field<Vec<String>>>,
    drift_ignore: Option<Field<Vec<String>>>,
    ready: Option<Field<Ready>>,
    provision: Option<Field<Vec<Step>>>,
    docker: Option<Field<BTreeMap<String, OptionValue>>>,
    libvirt: Option<Field<BTreeMap<String, OptionValue>>>,
}

struct Parser<'a> {
    dir: &'a Path,
    opts: &'a LoadOptions<'a>,
    diags: Vec<Diagnostic>,
}

fn join(path: &str, key: &str) -> String {
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

fn kind(v: &DeValue<'_>) -> &'static str {
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

fn get<'t, 'i>(table: &'t DeTable<'i>, key: &str) -> Option<&'t V<'i>> {
    table
        .iter()
        .find(|(k, _)| k.get_ref().as_ref() == key)
        .map(|(_, v)| v)
}

impl<'a> Parser<'a> {
    fn error(&mut self, path: &str, span: Range<usize>, msg: impl Into<String>) {
        self.diags.push(Diagnostic::error(path, span, msg));
    }

    fn error_help(
        &mut self,
        path: &str,
        span: Range<usize>,
        msg: impl Into<String>,
        help: impl Into<String>,
    ) {
        self.diags
            .push(Diagnostic::error(path, span, msg).with_help(help));
    }

    fn expected(&mut self, path: &str, v: &V<'_>, what: &str) {
        let found = kind(v.get_ref());
        self.error(path, v.span(), format!("expected {what}, found {found}"));
    }

    /// Reports every key of `table` not in `known`.
    fn check_keys(&mut self, path: &str, table: &DeTable<'_>, known: &[&str]) {
        for (k, _) in table.iter() {
            let key = k.get_ref().as_ref();
            if known.contains(&key) {
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

    fn table<'t, 'i>(&mut self, path: &str, v: &'t V<'i>) -> Option<&'t DeTable<'i>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => {
                self.expected(path, v, "a table");
                None
            }
        }
    }

    fn array<'t, 'i>(&mut self, path: &str, v: &'t V<'i>) -> Option<&'t [V<'i>]> {
        match v.get_ref() {
            DeValue::Array(a) => Some(a.as_ref()),
            _ => {
                self.expected(path, v, "an array");
                None
            }
        }
    }

    /// A string, taken as written (no `${VAR}` expansion).
    fn raw_str(&mut self, path: &str, v: &V<'_>) -> Option<String> {
        match v.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            _ => {
                self.expected(path, v, "a string");
                None
            }
        }
    }

    /// A string with `${VAR}` expanded from the host's environment.
    fn str(&mut self, path: &str, v: &V<'_>) -> Option<String> {
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

    fn non_empty_str(&mut self, path: &str, v: &V<'_>) -> Option<String> {
        let s = self.str(path, v)?;
        if s.trim().is_empty() {
            self.error(path, v.span(), "must not be empty");
            return None;
        }
        Some(s)
    }

    fn bool(&mut self, path: &str, v: &V<'_>) -> Option<bool> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.expected(path, v, "`true` or `false`");
                None
            }
        }
    }

    fn int(&mut self, path: &str, v: &V<'_>, min: i64, max: i64) -> Option<i64> {
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

    fn with<T>(&mut self, path: &str, v: &V<'_>, r: Result<T, String>) -> Option<T> {
        match r {
            Ok(t) => Some(t),
            Err(msg) => {
                self.error(path, v.span(), msg);
                None
            }
        }
    }

    fn one_of(&mut self, path: &str, v: &V<'_>, allowed: &[&str]) -> Option<String> {
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

    fn str_list(&mut self, path: &str, v: &V<'_>) -> Option<Vec<(String, Range<usize>)>> {
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
    fn env_map(&mut self, path: &str, v: &V<'_>) -> Option<BTreeMap<String, String>> {
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
    fn host_path(&mut self, path: &str, v: &V<'_>, want_file: bool) -> Option<String> {
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

    fn guest_path(&mut self, path: &str, v: &V<'_>) -> Option<String> {
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

    fn options(
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

    fn ready(&mut self, path: &str, v: &V<'_>) -> Option<Ready> {
        let t = self.table(path, v)?;
        self.check_keys(path, t, READY_KEYS);
        let command = match get(t, "command") {
            Some(c) => self.non_empty_str(&join(path, "command"), c),
            None => {
                self.error(path, v.span(), "a readiness check needs a `command`");
                None
            }
        };
        let mut dur = |key: &str, default: u64| -> Option<Duration> {
            match get(t, key) {
                Some(d) => {
                    let p = join(path, key);
                    let s = self.str(&p, d)?;
                    let r = values::parse_duration(&s);
                    self.with(&p, d, r)
                }
                None => Some(Duration::from_secs(default)),
            }
        };
        let timeout = dur("timeout", 60);
        let interval = dur("interval", 1);
        Some(Ready {
            command: command?,
            timeout: timeout?,
            interval: interval?,
        })
    }

    fn steps(&mut self, path: &str, v: &V<'_>) -> Option<Vec<Step>> {
        let items = self.array(path, v)?;
        let mut out = Vec::new();
        let mut ok = true;
        for (index, item) in items.iter().enumerate() {
            match self.step(&format!("{path}[{index}]"), item, index) {
                Some(s) => out.push(s),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn step(&mut self, path: &str, v: &V<'_>, index: usize) -> Option<Step> {
        let t = self.table(path, v)?;
        self.check_keys(path, t, STEP_KEYS);
        let errors_before = self.diags.len();
        let kinds: Vec<&str> = ["shell", "script", "file"]
            .into_iter()
            .filter(|k| get(t, k).is_some())
            .collect();
        if kinds.len() != 1 {
            let msg = if kinds.is_empty() {
                "a provisioning step needs one of `shell`, `script` or `file`".to_string()
            } else {
                format!(
                    "a provisioning step has exactly one of `shell`, `script` or `file`, not {}",
                    kinds.join(" and ")
                )
            };
            self.error(path, v.span(), msg);
            return None;
        }
        let kind = match kinds[0] {
            "shell" => {
                // Inline shell reaches the guest unchanged: `${HOME}` there is the guest's.
                let p = join(path, "shell");
                self.raw_str(&p, get(t, "shell")?).map(StepKind::Shell)
            }
            "script" => {
                let p = join(path, "script");
                let script = self.host_path(&p, get(t, "script")?, true);
                let args = match get(t, "args") {
                    Some(a) => self
                        .str_list(&join(path, "args"), a)
                        .map(|l| l.into_iter().map(|(s, _)| s).collect()),
                    None => Some(Vec::new()),
                };
                match (script, args) {
                    (Some(path), Some(args)) => Some(StepKind::Script { path, args }),
                    _ => None,
                }
            }
            _ => {
                let p = join(path, "file");
                let fv = get(t, "file")?;
                let ft = self.table(&p, fv)?;
                self.check_keys(&p, ft, FILE_KEYS);
                let source = match get(ft, "source") {
                    Some(s) => self.host_path(&join(&p, "source"), s, false),
                    None => {
                        self.error(&p, fv.span(), "a `file` step needs a `source`");
                        None
                    }
                };
                let destination = match get(ft, "destination") {
                    Some(d) => self.guest_path(&join(&p, "destination"), d),
                    None => {
                        self.error(&p, fv.span(), "a `file` step needs a `destination`");
                        None
                    }
                };
                match (source, destination) {
                    (Some(source), Some(destination)) => Some(StepKind::File {
                        source,
                        destination,
                    }),
                    _ => None,
                }
            }
        };
        if let Some(a) = get(t, "args")
            && kinds[0] != "script"
        {
            self.error(
                &join(path, "args"),
                a.span(),
                "`args` applies only to `script` steps",
            );
        }
        let name = get(t, "name").and_then(|n| self.non_empty_str(&join(path, "name"), n));
        let run = match get(t, "run") {
            Some(r) => match self
                .one_of(&join(path, "run"), r, &["once", "always", "never"])
                .as_deref()
            {
                Some("always") => RunPolicy::Always,
                Some("never") => RunPolicy::Never,
                _ => RunPolicy::Once,
            },
            None => RunPolicy::Once,
        };
        let user = match get(t, "user") {
            Some(u) => {
                let p = join(path, "user");
                self.str(&p, u).and_then(|s| {
                    let r = values::check_user(&s);
                    self.with(&p, u, r).map(|_| s)
                })
            }
            None => None,
        };
        let env = match get(t, "env") {
            Some(e) => self.env_map(&join(path, "env"), e).unwrap_or_default(),
            None => BTreeMap::new(),
        };
        if self.diags.len() != errors_before {
            return None;
        }
        Some(Step {
            index,
            name,
            kind: kind?,
            run,
            user,
            env,
        })
    }

    fn synced(&mut self, path: &str, v: &V<'_>) -> Option<Vec<Synced>> {
        let items = self.array(path, v)?;
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let p = format!("{path}[{i}]");
            let Some(t) = self.table(&p, item) else {
                ok = false;
                continue;
            };
            self.check_keys(&p, t, SYNCED_KEYS);
            let host = match get(t, "host") {
                Some(h) => self.host_path(&join(&p, "host"), h, false).and_then(|x| {
                    if x.contains(':') {
                        self.error(
                            &join(&p, "host"),
                            h.span(),
                            format!("`{x}` must not contain `:`"),
                        );
                        None
                    } else {
                        Some(x)
                    }
                }),
                None => {
                    self.error(&p, item.span(), "a synced folder needs `host`");
                    None
                }
            };
            let guest = match get(t, "guest") {
                Some(g) => self.guest_path(&join(&p, "guest"), g),
                None => {
                    self.error(&p, item.span(), "a synced folder needs `guest`");
                    None
                }
            };
            let read_only = match get(t, "mode") {
                Some(m) => self
                    .one_of(&join(&p, "mode"), m, &["rw", "ro"])
                    .map(|m| m == "ro"),
                None => Some(false),
            };
            match (host, guest, read_only) {
                (Some(host), Some(guest), Some(read_only)) => out.push(Synced {
                    host: self.dir.join(host),
                    guest,
                    read_only,
                }),
                _ => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn machine_raw(&mut self, path: &str, t: &DeTable<'_>) -> MachineRaw {
        self.check_keys(path, t, MACHINE_KEYS);
        let mut m = MachineRaw::default();
        for (k, v) in t.iter() {
            let key = k.get_ref().as_ref();
            let p = join(path, key);
            let at = KeySpan {
                path: p.clone(),
                span: v.span(),
            };
            macro_rules! set {
                ($field:ident, $value:expr) => {
                    if let Some(value) = $value {
                        m.$field = Some(Field { value, at });
                    }
                };
            }
            match key {
                "box" => set!(box_name, self.non_empty_str(&p, v)),
                "provider" => set!(provider, self.one_of(&p, v, KNOWN_PROVIDERS)),
                "cpus" => set!(cpus, self.int(&p, v, 1, 256).map(|n| n as u32)),
                "memory" => {
                    let parsed = self.str(&p, v).and_then(|s| {
                        let r = values::parse_size(&s).and_then(|b| {
                            if b < 6 << 20 {
                                Err(format!("`{s}` is too little memory: at least 6MiB"))
                            } else {
                                Ok(b)
                            }
                        });
                        self.with(&p, v, r)
                    });
                    set!(memory, parsed)
                }
                "hostname" => {
                    let parsed = self.str(&p, v).and_then(|s| {
                        let r = values::check_hostname(&s).map(|_| s);
                        self.with(&p, v, r)
                    });
                    set!(hostname, parsed)
                }
                "ports" => {
                    let parsed = self.str_list(&p, v).and_then(|items| {
                        let mut out = Vec::new();
                        let mut ok = true;
                        for (i, (s, span)) in items.into_iter().enumerate() {
                            match values::parse_port(&s) {
                                Ok(port) => out.push(port),
                                Err(msg) => {
                                    self.error(&format!("{p}[{i}]"), span, msg);
                                    ok = false;
                                }
                            }
                        }
                        ok.then_some(out)
                    });
                    set!(ports, parsed)
                }
                "synced" => set!(synced, self.synced(&p, v)),
                "env" => set!(env, self.env_map(&p, v)),
                "depends_on" => {
                    let parsed = self.str_list(&p, v).and_then(|items| {
                        let mut out = Vec::new();
                        let mut ok = true;
                        for (i, (s, span)) in items.into_iter().enumerate() {
                            match Name::parse(&s) {
                                Ok(n) => out.push((n, span)),
                                Err(msg) => {
                                    self.error(&format!("{p}[{i}]"), span, msg);
                                    ok = false;
                                }
                            }
                        }
                        ok.then_some(out)
                    });
                    set!(depends_on, parsed)
                }
                "ttl" => {
                    let parsed = self.str(&p, v).and_then(|s| {
                        let r = values::parse_duration(&s);
                        self.with(&p, v, r)
                    });
                    set!(ttl, parsed)
                }
                "command" => {
                    let parsed = match v.get_ref() {
                        DeValue::String(_) => {
                            self.error_help(
                                &p,
                                v.span(),
                                "expected an array of strings, found a string",
                                "write the command as its arguments, like [\"sleep\", \"infinity\"]",
                            );
                            None
                        }
                        _ => self.str_list(&p, v).and_then(|l| {
                            if l.is_empty() {
                                self.error(&p, v.span(), "must not be empty");
                                None
                            } else {
                                Some(l.into_iter().map(|(s, _)| s).collect())
                            }
                        }),
                    };
                    set!(command, parsed)
                }
                "drift_ignore" => set!(
                    drift_ignore,
                    self.str_list(&p, v)
                        .map(|l| l.into_iter().map(|(s, _)| s).collect())
                ),
                "ready" => set!(ready, self.ready(&p, v)),
                "provision" => set!(provision, self.steps(&p, v)),
                "docker" => set!(docker, self.options(&p, v, "docker")),
                "libvirt" => set!(libvirt, self.options(&p, v, "libvirt")),
                _ => {}
            }
        }
        m
    }
}

fn merge(defaults: &MachineRaw, own: MachineRaw) -> MachineRaw {
    let env = match (&defaults.env, own.env) {
        (Some(d), Some(mut o)) => {
            let mut merged = d.value.clone();
            merged.append(&mut o.value);
            o.value = merged;
            Some(o)
        }
        (d, o) => o.or_else(|| d.clone()),
    };
    MachineRaw {
        box_name: own.box_name.or_else(|| defaults.box_name.clone()),
        provider: own.provider.or_else(|| defaults.provider.clone()),
        cpus: own.cpus.or_else(|| defaults.cpus.clone()),
        memory: own.memory.or_else(|| defaults.memory.clone()),
        hostname: own.hostname.or_else(|| defaults.hostname.clone()),
        ports: own.ports.or_else(|| defaults.ports.clone()),
        synced: own.synced.or_else(|| defaults.synced.clone()),
        env,
        depends_on: own.depends_on.or_else(|| defaults.depends_on.clone()),
        ttl: own.ttl.or_else(|| defaults.ttl.clone()),
        command: own.command.or_else(|| defaults.command.clone()),
        drift_ignore: own.drift_ignore.or_else(|| defaults.drift_ignore.clone()),
        ready: own.ready.or_else(|| defaults.ready.clone()),
        provision: own.provision.or_else(|| defaults.provision.clone()),
        docker: own.docker.or_else(|| defaults.docker.clone()),
        libvirt: own.libvirt.or_else(|| defaults.libvirt.clone()),
    }
}

pub(super) fn parse_document(
    source: &str,
    path: &Path,
    dir: &Path,
    opts: &LoadOptions<'_>,
) -> (Option<Envfile>, Vec<Diagnostic>) {
    let (root, syntax) = DeTable::parse_recoverable(source);
    if !syntax.is_empty() {
        let diags = syntax
            .into_iter()
            .map(|e| {
                let span = e.span().unwrap_or(0..0);
                Diagnostic::error("", span, format!("invalid TOML: {}", e.message()))
            })
            .collect();
        return (None, diags);
    }
    let mut p = Parser {
        dir,
        opts,
        diags: Vec::new(),
    };
    let root = root.get_ref();
    p.check_keys("", root, TOP_KEYS);

    // [project]
    let mut project = Project {
        name: Name::from_folder(
            &dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ),
        name_from_folder: true,
        provider: None,
        immutable: false,
        keep: 2,
        bake: true,
    };
    if let Some(v) = get(root, "project")
        && let Some(t) = p.table("project", v)
    {
        p.check_keys("project", t, PROJECT_KEYS);
        if let Some(n) = get(t, "name")
            && let Some(s) = p.str("project.name", n)
        {
            let r = Name::parse(&s);
            if let Some(name) = p.with("project.name", n, r) {
                project.name = name;
                project.name_from_folder = false;
            }
        }
        if let Some(v) = get(t, "provider") {
            project.provider = p.one_of("project.provider", v, KNOWN_PROVIDERS);
        }
        if let Some(v) = get(t, "immutable") {
            project.immutable = p.bool("project.immutable", v).unwrap_or(false);
        }
        if let Some(v) = get(t, "keep") {
            project.keep = p.int("project.keep", v, 1, 100).unwrap_or(2) as u32;
        }
        if let Some(v) = get(t, "bake") {
            project.bake = p.bool("project.bake", v).unwrap_or(true);
        }
    }

    // [network]
    let mut network = Network::default();
    if let Some(v) = get(root, "network")
        && let Some(t) = p.table("network", v)
    {
        p.check_keys("network", t, NETWORK_KEYS);
        if let Some(s) = get(t, "subnet")
            && let Some(text) = p.str("network.subnet", s)
        {
            let r = values::parse_subnet(&text);
            network.subnet = p.with("network.subnet", s, r);
        }
    }

    // [boxes.NAME]
    let mut boxes = Vec::new();
    if let Some(v) = get(root, "boxes")
        && let Some(t) = p.table("boxes", v)
    {
        for (k, bv) in t.iter() {
            let name = k.get_ref().to_string();
            let bp = join("boxes", &name);
            let valid = !name.is_empty()
                && name.len() <= 63
                && name
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric())
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
            if !valid {
                p.error(
                    &bp,
                    k.span(),
                    format!("`{name}` is not a valid box name: use a-z, 0-9, `.`, `_` and `-`"),
                );
                continue;
            }
            let Some(bt) = p.table(&bp, bv) else { continue };
            p.check_keys(&bp, bt, KNOWN_PROVIDERS);
            let mut refs = BTreeMap::new();
            for provider in KNOWN_PROVIDERS {
                let Some(r) = get(bt, provider) else { continue };
                let rp = join(&bp, provider);
                let Some(s) = p.non_empty_str(&rp, r) else {
                    continue;
                };
                if *provider == "docker" {
                    // Reported here; the reference is kept so machines using the box do
                    // not report a second, misleading "no reference" error.
                    let c = values::check_image_ref(&s);
                    p.with(&rp, r, c);
                }
                refs.insert(provider.to_string(), s);
            }
            if bt.is_empty() {
                p.error_help(
                    &bp,
                    bv.span(),
                    "a box needs a reference for at least one provider",
                    "add `docker = \"IMAGE\"` or `libvirt = \"BOX\"`",
                );
            }
            boxes.push((BoxDef { name, refs }, bv.span()));
        }
    }

    // [defaults]
    let defaults = match get(root, "defaults") {
        Some(v) => match p.table("defaults", v) {
            Some(t) => p.machine_raw("defaults", t),
            None => MachineRaw::default(),
        },
        None => MachineRaw::default(),
    };

    // [machines.NAME]
    let mut raws = Vec::new();
    match get(root, "machines") {
        Some(v) => {
            if let Some(t) = p.table("machines", v) {
                for (k, mv) in t.iter() {
                    let key = k.get_ref().as_ref();
                    let mp = join("machines", key);
                    let name = match Name::parse(key) {
                        Ok(n) => Some(n),
                        Err(msg) => {
                            p.error(&mp, k.span(), msg);
                            None
                        }
                    };
                    let Some(mt) = p.table(&mp, mv) else { continue };
                    let raw = p.machine_raw(&mp, mt);
                    if let Some(name) = name {
                        raws.push((name, k.span(), merge(&defaults, raw)));
                    }
                }
                if t.is_empty() {
                    p.error_help(
                        "machines",
                        v.span(),
                        "no machines are declared",
                        "add a `[machines.NAME]` table with a `box`",
                    );
                }
            }
        }
        None => p.error_help(
            "machines",
            0..0,
            "the Envfile declares no machines",
            "add a `[machines.NAME]` table with a `box`; `envrig init` writes an example",
        ),
    }

    // Resolve each machine: box, provider, capabilities, dependencies.
    let names: BTreeSet<Name> = raws.iter().map(|(n, _, _)| n.clone()).collect();
    let mut machines = Vec::new();
    let mut seen_ports: BTreeMap<(String, u16, &'static str), String> = BTreeMap::new();
    for (name, span, raw) in raws {
        let mp = join("machines", name.as_str());
        let provider = match &raw.provider {
            Some(f) => f.value.clone(),
            None => opts
                .provider_override
                .map(str::to_string)
                .or_else(|| project.provider.clone())
                .unwrap_or_else(|| DEFAULT_PROVIDER.to_string()),
        };
        let caps = (opts.capabilities)(&provider);
        if caps.is_none() {
            let at = raw
                .provider
                .as_ref()
                .map(|f| f.at.clone())
                .unwrap_or(KeySpan {
                    path: mp.clone(),
                    span: span.clone(),
                });
            p.diags.push(
                Diagnostic::warning(at.path, at.span, format!("machine `{name}` uses the `{provider}` provider, which this build of envrig does not have yet"))
                    .with_help("`envrig up` refuses this machine; pick `provider = \"docker\"` to run it now"),
            );
        }
        let mut base = String::new();
        match &raw.box_name {
            None => p.error_help(&mp, span.clone(), format!("machine `{name}` has no `box`"), format!("set `{mp}.box` or `defaults.box` to one of the `[boxes]`")),
            Some(f) => match boxes.iter().find(|(b, _)| b.name == f.value) {
                None => {
                    let help = match did_you_mean(&f.value, boxes.iter().map(|(b, _)| b.name.as_str())) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => format!("declare it: [boxes.{}] with `docker = \"IMAGE\"`", f.value),
                    };
                    p.error_help(&f.at.path, f.at.span.clone(), format!("unknown box `{}`", f.value), help);
                }
                Some((b, _)) => match b.refs.get(&provider) {
                    Some(r) => base = r.clone(),
                    None => p.error_help(
                        &f.at.path,
                        f.at.span.clone(),
                        format!("box `{}` has no `{provider}` reference, but machine `{name}` uses the {provider} provider", b.name),
                        format!("add `{provider} = \"...\"` to [boxes.{}]", b.name),
                    ),
                },
            },
        }
        if let Some(caps) = caps
            && let (Some(cmd), false) = (&raw.command, caps.custom_command)
        {
            p.error_help(
                &cmd.at.path,
                cmd.at.span.clone(),
                format!("the {provider} provider cannot set a machine's main process"),
                "`command` applies to docker machines only; remove it",
            );
        }
        for (own, f) in [("docker", &raw.docker), ("libvirt", &raw.libvirt)] {
            if let Some(f) = f
                && own != provider
                && raw.provider.is_some()
            {
                p.diags.push(Diagnostic::warning(&f.at.path, f.at.span.clone(), format!("machine `{name}` uses the {provider} provider, so its `{own}` settings have no effect")));
            }
        }
        let mut depends_on = Vec::new();
        if let Some(f) = &raw.depends_on {
            for (i, (d, dspan)) in f.value.iter().enumerate() {
                let dp = format!("{}[{i}]", f.at.path);
                if *d == name {
                    p.error(
                        &dp,
                        dspan.clone(),
                        format!("machine `{name}` cannot depend on itself"),
                    );
                } else if !names.contains(d) {
                    let help = match did_you_mean(d.as_str(), names.iter().map(Name::as_str)) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => "name a machine declared in this Envfile".to_string(),
                    };
                    p.error_help(&dp, dspan.clone(), format!("unknown machine `{d}`"), help);
                } else if !depends_on.contains(d) {
                    depends_on.push(d.clone());
                }
            }
        }
        if let Some(f) = &raw.ports {
            for (i, port) in f.value.iter().enumerate() {
                let key = (port.host_ip.clone(), port.host_port, port.protocol.as_str());
                if let Some(other) = seen_ports.insert(key, name.to_string()) {
                    p.error(
                        &format!("{}[{i}]", f.at.path),
                        f.at.span.clone(),
                        format!(
                            "host port {}:{} is already published by machine `{other}`",
                            port.host_ip, port.host_port
                        ),
                    );
                }
            }
        }
        let mut origins = BTreeMap::new();
        macro_rules! origin {
            ($($key:literal => $field:ident),*) => {
                $(if let Some(f) = &raw.$field { origins.insert($key, f.at.clone()); })*
            };
        }
        origin!("box" => box_name, "provider" => provider, "cpus" => cpus, "memory" => memory,
            "hostname" => hostname, "ports" => ports, "synced" => synced, "env" => env,
            "depends_on" => depends_on, "ttl" => ttl, "command" => command, "ready" => ready,
            "provision" => provision);
        let mut provider_options = BTreeMap::new();
        if let Some(f) = &raw.docker {
            provider_options.insert("docker".to_string(), f.value.clone());
        }
        if let Some(f) = &raw.libvirt {
            provider_options.insert("libvirt".to_string(), f.value.clone());
        }
        machines.push(Machine {
            hostname: raw
                .hostname
                .map(|f| f.value)
                .unwrap_or_else(|| name.to_string()),
            name,
            provider,
            box_name: raw.box_name.map(|f| f.value).unwrap_or_default(),
            base,
            cpus: raw.cpus.map(|f| f.value),
            memory: raw.memory.map(|f| f.value),
            ports: raw.ports.map(|f| f.value).unwrap_or_default(),
            synced: raw.synced.map(|f| f.value).unwrap_or_default(),
            env: raw.env.map(|f| f.value).unwrap_or_default(),
            depends_on,
            ttl: raw.ttl.map(|f| f.value),
            command: raw.command.map(|f| f.value),
            drift_ignore: raw.drift_ignore.map(|f| f.value).unwrap_or_default(),
            ready: raw.ready.map(|f| f.value),
            provision: raw.provision.map(|f| f.value).unwrap_or_default(),
            provider_options,
            origins,
            span,
        });
    }
    check_cycles(&machines, &mut p.diags);

    let envfile = Envfile {
        path: path.to_path_buf(),
        dir: dir.to_path_buf(),
        project,
        network,
        boxes: boxes.into_iter().map(|(b, _)| b).collect(),
        machines,
    };
    (Some(envfile), p.diags)
}

/// Reports each dependency cycle once, naming it (`a -> b -> a`).
fn check_cycles(machines: &[Machine], diags: &mut Vec<Diagnostic>) {
    let index: BTreeMap<&Name, usize> = machines
        .iter()
        .enumerate()
        .map(|(i, m)| (&m.name, i))
        .collect();
    // 0 = unvisited, 1 = on the stack, 2 = done.
    let mut color = vec![0u8; machines.len()];
    let mut reported = BTreeSet::new();
    fn visit(
        i: usize,
        machines: &[Machine],
        index: &BTreeMap<&Name, usize>,
        color: &mut [u8],
        stack: &mut Vec<usize>,
        reported: &mut BTreeSet<Vec<usize>>,
        diags: &mut Vec<Diagnostic>,
    ) {
        color[i] = 1;
        stack.push(i);
        for d in &machines[i].depends_on {
            let Some(&j) = index.get(d) else { continue };
            if color[j] == 1 {
                let start = stack.iter().position(|&s| s == j).unwrap_or(0);
                let mut cycle: Vec<usize> = stack[start..].to_vec();
                let mut key = cycle.clone();
                key.sort();
                if reported.insert(key) {
                    cycle.push(j);
                    let names: Vec<&str> =
                        cycle.iter().map(|&c| machines[c].name.as_str()).collect();
                    let m = &machines[j];
                    let at = m.origins.get("depends_on").cloned().unwrap_or(KeySpan {
                        path: join("machines", m.name.as_str()),
                        span: m.span.clone(),
                    });
                    diags.push(
                        Diagnostic::error(
                            at.path,
                            at.span,
                            format!("dependency cycle: {}", names.join(" -> ")),
                        )
                        .with_help("remove one of these `depends_on` entries"),
                    );
                }
            } else if color[j] == 0 {
                visit(j, machines, index, color, stack, reported, diags);
            }
        }
        stack.pop();
        color[i] = 2;
    }
    for i in 0..machines.len() {
        if color[i] == 0 {
            let mut stack = Vec::new();
            visit(
                i,
                machines,
                &index,
                &mut color,
                &mut stack,
                &mut reported,
                diags,
            );
        }
    }
}
