//! The document walk: reads the spanned TOML tree key by key (`[project]`, `[network]`,
//! `[boxes]`, `[defaults]`, `[machines]`), then resolves each machine (its provider, box,
//! capabilities, dependencies and host ports) into the model. Every problem is collected
//! rather than stopping at the first.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use toml::de::DeTable;

use super::cycles::check_cycles;
use super::diag::{Diagnostic, did_you_mean};
use super::machine::{MachineRaw, merge};
use super::provider_schema::BoxRefAt;
use super::read::{Parser, get, join};
use super::values::{self, Name};
use super::{BoxDef, DEFAULT_KEEP, Envfile, KeySpan, LoadOptions, Machine, Network, Project};

pub(super) const TOP_KEYS: &[&str] = &["project", "network", "boxes", "defaults", "machines"];
pub(super) const PROJECT_KEYS: &[&str] = &[
    "name",
    "provider",
    "immutable",
    "keep",
    "bake",
    "warm",
    "placement",
    "cache",
    "cache_push",
];
pub(super) const NETWORK_KEYS: &[&str] = &["subnet"];

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
        keep: DEFAULT_KEEP,
        bake: true,
        warm: false,
        spread: false,
        cache: None,
        cache_push: false,
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
            project.provider = p.provider("project.provider", v);
        }
        if let Some(v) = get(t, "immutable") {
            project.immutable = p.bool("project.immutable", v).unwrap_or(false);
        }
        if let Some(v) = get(t, "keep") {
            project.keep = p
                .int("project.keep", v, 1, 100)
                .map_or(DEFAULT_KEEP, |k| k as u32);
        }
        if let Some(v) = get(t, "bake") {
            project.bake = p.bool("project.bake", v).unwrap_or(true);
        }
        if let Some(v) = get(t, "warm") {
            project.warm = p.bool("project.warm", v).unwrap_or(false);
        }
        if let Some(v) = get(t, "cache")
            && let Some(text) = p.str("project.cache", v)
        {
            let r = values::parse_cache(&text);
            project.cache = p.with("project.cache", v, r);
        }
        if let Some(v) = get(t, "cache_push") {
            project.cache_push = p.bool("project.cache_push", v).unwrap_or(false);
        }
        if let Some(v) = get(t, "placement") {
            project.spread = p
                .one_of("project.placement", v, &["pack", "spread"])
                .is_some_and(|s| s == "spread");
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

    // [boxes.NAME]: references are checked once the providers in use are known (a
    // reference for a provider no machine uses starts no plugin), and reported here.
    let provider_names = opts.providers.names();
    let mut boxes = Vec::new();
    let mut box_refs = Vec::new();
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
            let elsewhere: Vec<&str> = bt
                .iter()
                .map(|(k, _)| k.get_ref().as_ref())
                .filter(|k| !provider_names.contains(k) && p.names_provider(k, &provider_names))
                .collect();
            p.check_keys_except(&bp, bt, &provider_names, &elsewhere);
            let mut refs = BTreeMap::new();
            for (k, r) in bt.iter() {
                let provider = k.get_ref().as_ref();
                if !provider_names.contains(&provider) && !elsewhere.contains(&provider) {
                    continue;
                }
                let rp = join(&bp, provider);
                let Some(s) = p.non_empty_str(&rp, r) else {
                    continue;
                };
                box_refs.push(BoxRefAt {
                    provider: provider.to_string(),
                    path: rp,
                    span: r.span(),
                    reference: s.clone(),
                });
                refs.insert(provider.to_string(), s);
            }
            if bt.is_empty() {
                let help = format!("add {}", p.box_ref_examples(&provider_names).join(" or "));
                p.error_help(
                    &bp,
                    bv.span(),
                    "a box needs a reference for at least one provider",
                    help,
                );
            }
            boxes.push((BoxDef { name, refs }, bv.span()));
        }
    }
    let box_diags_at = p.diags.len();

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
                .unwrap_or_else(|| p.default_provider()),
        };
        let caps = opts.providers.schema(&provider).map(|s| s.capabilities);
        if caps.is_none() {
            let at = raw
                .provider
                .as_ref()
                .map(|f| f.at.clone())
                .unwrap_or(KeySpan {
                    path: mp.clone(),
                    span: span.clone(),
                });
            let why = if provider_names.contains(&provider.as_str()) {
                "whose plugin does not start".to_string()
            } else {
                format!(
                    "which this envrig does not have (no `envrig-provider-{provider}` plugin found)"
                )
            };
            let default = p.default_provider();
            p.diags.push(
                Diagnostic::warning(at.path, at.span, format!("machine `{name}` uses the `{provider}` provider, {why}"))
                    .with_help(format!("`envrig up` refuses this machine; pick `provider = \"{default}\"` to run it now")),
            );
        }
        let mut base = String::new();
        match &raw.box_name {
            None => p.error_help(&mp, span.clone(), format!("machine `{name}` has no `box`"), format!("set `{mp}.box` or `defaults.box` to one of the `[boxes]`")),
            Some(f) => match boxes.iter().find(|(b, _)| b.name == f.value) {
                None => {
                    let help = match did_you_mean(&f.value, boxes.iter().map(|(b, _)| b.name.as_str())) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => format!("declare it: [boxes.{}] with {}", f.value, p.box_ref_examples(&[provider.as_str()])[0]),
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
            let can: Vec<&str> = provider_names
                .iter()
                .copied()
                .filter(|n| {
                    opts.providers
                        .schema(n)
                        .is_some_and(|s| s.capabilities.custom_command)
                })
                .collect();
            p.error_help(
                &cmd.at.path,
                cmd.at.span.clone(),
                format!("the {provider} provider cannot set a machine's main process"),
                match can.is_empty() {
                    true => "no provider here can; remove it".to_string(),
                    false => format!(
                        "`command` applies to {} machines only; remove it",
                        can.join(" and ")
                    ),
                },
            );
        }
        if let Some(caps) = caps
            && let Some(w) = &raw.warm
            && w.value
            && !caps.warm_start
        {
            let can: Vec<&str> = provider_names
                .iter()
                .copied()
                .filter(|n| {
                    opts.providers
                        .schema(n)
                        .is_some_and(|s| s.capabilities.warm_start)
                })
                .collect();
            p.error_help(
                &w.at.path,
                w.at.span.clone(),
                format!("the {provider} provider cannot start a machine warm from saved memory"),
                match can.is_empty() {
                    true => "no provider here can; remove it".to_string(),
                    false => format!(
                        "`warm` applies to {} machines only (a container starts in about a second anyway); remove it",
                        can.join(" and ")
                    ),
                },
            );
        }
        if let Some(caps) = caps
            && (names.len() > 1 || network.subnet.is_some())
            && !caps.private_network
        {
            p.error_help(
                &mp,
                span.clone(),
                match names.len() {
                    1 => format!("the {provider} provider cannot put machine `{name}` on a private network here, and `[network]` asks for one"),
                    n => format!("the {provider} provider cannot put machine `{name}` on a private network here, and the {n} machines of this Envfile reach each other by name on one"),
                },
                format!("its engine here says so (an unprivileged daemon cannot make bridges); keep one machine in this Envfile, or point the {provider} provider at an engine that can"),
            );
        }
        for (own, f) in &raw.options {
            if *own != provider && raw.provider.is_some() {
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
            "provision" => provision, "engine" => engine, "engine_labels" => engine_labels,
            "warm" => warm);
        let provider_options = raw
            .options
            .iter()
            .map(|(k, f)| (k.clone(), f.value.clone()))
            .collect();
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
            engine: raw.engine.map(|f| f.value),
            engine_labels: raw.engine_labels.map(|f| f.value).unwrap_or_default(),
            warm: raw.warm.map(|f| f.value),
            provider_options,
            origins,
            span,
        });
    }
    // Box references for the providers in use, reported where the boxes are.
    let after = std::mem::take(&mut p.diags);
    let (before, after) = after.split_at(box_diags_at);
    p.diags = before.to_vec();
    for r in &box_refs {
        if machines.iter().any(|m| m.provider == r.provider) {
            p.check_box_ref(r);
        }
    }
    p.diags.extend_from_slice(after);
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
