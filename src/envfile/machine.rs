//! The machine schema: the keys of a `[machines.NAME]` table (and of `[defaults]`), their
//! provisioning steps, readiness checks and synced folders, read into a [`MachineRaw`] as
//! written, and `[defaults]` merged under it.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use envrig_provider_api::{OptionValue, PortSpec};
use toml::de::{DeTable, DeValue};

use super::read::{Parser, V, get, join};
use super::values::{self, Name};
use super::{KeySpan, Ready, RunPolicy, Step, StepKind, Synced};

/// Dependencies as written, each with its span.
pub(super) type DepList = Vec<(Name, Range<usize>)>;

pub(super) const MACHINE_KEYS: &[&str] = &[
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
    "engine",
    "engine_labels",
    "warm",
];
pub(super) const READY_KEYS: &[&str] = &["command", "timeout", "interval"];
pub(super) const STEP_KEYS: &[&str] = &[
    "name", "shell", "script", "file", "args", "env", "run", "user",
];
pub(super) const FILE_KEYS: &[&str] = &["source", "destination"];
pub(super) const SYNCED_KEYS: &[&str] = &["host", "guest", "mode"];

/// A value together with where it was written.
#[derive(Debug, Clone)]
pub(super) struct Field<T> {
    pub(super) value: T,
    pub(super) at: KeySpan,
}

/// One machine table (or `[defaults]`) as written, before merging.
#[derive(Debug, Clone, Default)]
pub(super) struct MachineRaw {
    pub(super) box_name: Option<Field<String>>,
    pub(super) provider: Option<Field<String>>,
    pub(super) cpus: Option<Field<u32>>,
    pub(super) memory: Option<Field<u64>>,
    pub(super) hostname: Option<Field<String>>,
    pub(super) ports: Option<Field<Vec<PortSpec>>>,
    pub(super) synced: Option<Field<Vec<Synced>>>,
    pub(super) env: Option<Field<BTreeMap<String, String>>>,
    pub(super) depends_on: Option<Field<DepList>>,
    pub(super) ttl: Option<Field<Duration>>,
    pub(super) command: Option<Field<Vec<String>>>,
    pub(super) drift_ignore: Option<Field<Vec<String>>>,
    pub(super) ready: Option<Field<Ready>>,
    pub(super) provision: Option<Field<Vec<Step>>>,
    pub(super) engine: Option<Field<String>>,
    pub(super) engine_labels: Option<Field<BTreeMap<String, String>>>,
    pub(super) warm: Option<Field<bool>>,
    /// `[machines.NAME.<provider>]` tables, by provider name.
    pub(super) options: BTreeMap<String, Field<BTreeMap<String, OptionValue>>>,
}

impl Parser<'_> {
    pub(super) fn ready(&mut self, path: &str, v: &V<'_>) -> Option<Ready> {
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

    pub(super) fn steps(&mut self, path: &str, v: &V<'_>) -> Option<Vec<Step>> {
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

    pub(super) fn step(&mut self, path: &str, v: &V<'_>, index: usize) -> Option<Step> {
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

    pub(super) fn synced(&mut self, path: &str, v: &V<'_>) -> Option<Vec<Synced>> {
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

    pub(super) fn machine_raw(&mut self, path: &str, t: &DeTable<'_>) -> MachineRaw {
        // Beside its own keys, a machine has a table for any provider (see
        // `provider_schema`: one of this envrig's, or of another host).
        let opts = self.opts;
        let mut known = MACHINE_KEYS.to_vec();
        known.extend(opts.providers.names());
        let names = opts.providers.names();
        let providers: Vec<&str> = t
            .iter()
            .map(|(k, v)| {
                (
                    k.get_ref().as_ref(),
                    matches!(v.get_ref(), DeValue::Table(_)),
                )
            })
            .filter(|&(k, table)| {
                names.contains(&k)
                    || (table && !MACHINE_KEYS.contains(&k) && self.names_provider(k, &known))
            })
            .map(|(k, _)| k)
            .collect();
        self.check_keys_except(path, t, &known, &providers);
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
                "provider" => set!(provider, self.provider(&p, v)),
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
                "engine" => {
                    let parsed = self.str(&p, v).and_then(|s| {
                        let r = crate::engines::check_name(&s).map(|_| s);
                        self.with(&p, v, r)
                    });
                    set!(engine, parsed)
                }
                "engine_labels" => set!(engine_labels, self.label_map(&p, v)),
                "warm" => set!(warm, self.bool(&p, v)),
                _ if providers.contains(&key) => {
                    if let Some(value) = self.options(&p, v, key) {
                        m.options.insert(key.to_string(), Field { value, at });
                    }
                }
                _ => {}
            }
        }
        m
    }
}

pub(super) fn merge(defaults: &MachineRaw, own: MachineRaw) -> MachineRaw {
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
        engine: own.engine.or_else(|| defaults.engine.clone()),
        engine_labels: own.engine_labels.or_else(|| defaults.engine_labels.clone()),
        warm: own.warm.or_else(|| defaults.warm.clone()),
        options: {
            let mut options = defaults.options.clone();
            options.extend(own.options);
            options
        },
    }
}
