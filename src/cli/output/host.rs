//! What the commands on the whole host print: `ls`, `gc` and `box`.

use super::{
    Printer, SCHEMA_BOXES, SCHEMA_ENGINES, SCHEMA_GC, SCHEMA_LS, header, json_line, out, table,
};
use crate::ops::{self, EngineRow, EnvRow, GcItem, GcReport};

impl Printer {
    /// `engine ls` / `engine check`.
    pub fn engines(&self, rows: &[EngineRow]) {
        if self.as_json(serde_json::json!({"schema": SCHEMA_ENGINES, "engines": rows})) {
            return;
        }
        let mut t = header(&[
            "NAME", "PROVIDER", "URI", "STATE", "VERSION", "CPUS", "MEMORY", "MACHINES", "LABELS",
        ]);
        for r in rows {
            let info = r.info.as_ref();
            t.push(vec![
                r.name.clone(),
                r.provider.clone(),
                r.uri.clone(),
                match &r.reason {
                    None => "reachable".into(),
                    Some(why) => format!("unreachable: {why}"),
                },
                info.map_or("-".into(), |i| i.version.clone()),
                info.map_or("-".into(), |i| i.cpus.to_string()),
                info.map_or("-".into(), |i| {
                    format!("{:.1}GiB", i.memory as f64 / (1u64 << 30) as f64)
                }),
                match (r.machines, r.max_machines) {
                    (Some(n), Some(m)) => format!("{n}/{m}"),
                    (Some(n), None) => n.to_string(),
                    _ => "-".into(),
                },
                r.labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
            ]);
        }
        table(&t);
    }

    pub fn ls(&self, rows: &[EnvRow]) {
        if self.as_json(serde_json::json!({"schema": SCHEMA_LS, "environments": rows})) {
            return;
        }
        let mut t = header(&[
            "PROJECT",
            "ID",
            "FOLDER",
            "MACHINES",
            "PROVIDERS",
            "ENGINES",
            "AGE",
            "EXPIRES",
        ]);
        for r in rows {
            let machines: Vec<String> =
                r.machines.iter().map(|(m, s)| format!("{m}={s}")).collect();
            t.push(vec![
                r.project.clone(),
                match &r.instance {
                    Some(i) => i.clone(),
                    None => r.env_id.chars().take(8).collect(),
                },
                if r.envfile_exists {
                    r.folder.clone()
                } else {
                    format!("{} (gone)", r.folder)
                },
                machines.join(","),
                r.providers.join(","),
                r.engines.join(","),
                r.created
                    .as_deref()
                    .and_then(ops::age)
                    .unwrap_or_else(|| "-".into()),
                r.expires
                    .as_deref()
                    .map(ops::until)
                    .unwrap_or_else(|| "-".into()),
            ]);
        }
        if rows.is_empty() {
            self.done("no environments on this host");
        } else {
            table(&t);
        }
    }

    pub fn gc(&self, r: &GcReport) {
        if self.json {
            out(&json_line(
                &serde_json::json!({"schema": SCHEMA_GC, "dry_run": r.dry_run, "removed": r.removed, "busy": r.busy, "failed": r.failed, "skipped": r.skipped}),
            ));
            return;
        }
        let verb = if r.dry_run { "would remove" } else { "removed" };
        // Baked layers belong to no environment: no project or folder to name.
        let whose = |i: &GcItem| {
            if i.project.is_empty() && i.folder.is_empty() {
                String::new()
            } else {
                format!(" of `{}` ({})", i.project, i.folder)
            }
        };
        for i in &r.removed {
            out(&format!("{verb} {}{}: {}", i.resource, whose(i), i.reason));
        }
        for f in &r.failed {
            eprintln!(
                "{} cannot remove {}{}: {}",
                self.paint("1;33", "warning:"),
                f.resource,
                whose(f),
                f.reason
            );
        }
        for k in &r.skipped {
            eprintln!(
                "{} skipped `{}` ({}): {}; it is left alone",
                self.paint("1;33", "warning:"),
                k.project,
                k.folder,
                k.reason
            );
        }
        for b in &r.busy {
            self.done(&format!(
                "skipped environment {b}: another envrig is working on it"
            ));
        }
        if r.removed.is_empty() && r.failed.is_empty() {
            self.done("nothing to collect");
        }
    }

    pub fn boxes(&self, rows: &[ops::BoxRow]) {
        let doc = serde_json::json!({"schema": SCHEMA_BOXES, "boxes": rows});
        if self.listed_already(
            doc,
            rows.len(),
            "no boxes; `envrig box add NAME FILE` adds one",
        ) {
            return;
        }
        let mut t = header(&[
            "NAME", "VERSION", "PROVIDER", "SIZE", "SHA256", "KERNEL", "SOURCE",
        ]);
        for r in rows {
            t.push(vec![
                r.stored.name.clone(),
                r.stored.version.clone().unwrap_or_else(|| "-".into()),
                r.provider.clone(),
                crate::envfile::values::format_size(r.stored.size),
                r.stored.sha256.chars().take(12).collect(),
                if r.stored.kernel { "yes" } else { "no" }.into(),
                r.stored.source.clone(),
            ]);
        }
        table(&t);
    }

    pub fn boxes_outdated(&self, rows: &[ops::OutdatedRow]) {
        let doc = serde_json::json!({"schema": "envrig.box-outdated/1", "boxes": rows});
        if self.listed_already(doc, rows.len(), "no box was added from a catalog") {
            return;
        }
        let mut t = header(&["NAME", "CURRENT", "LATEST", "CATALOG"]);
        for r in rows {
            t.push(vec![
                r.name.clone(),
                r.current.clone(),
                if r.outdated {
                    format!("{} (`envrig box update {}`)", r.latest, r.name)
                } else {
                    format!("{} (up to date)", r.latest)
                },
                r.catalog.clone(),
            ]);
        }
        table(&t);
    }

    pub fn boxes_pruned(&self, r: &ops::PruneReport) {
        let kept: Vec<serde_json::Value> = r
            .kept
            .iter()
            .map(|(b, why)| serde_json::json!({"box": b, "why": why}))
            .collect();
        let doc =
            serde_json::json!({"schema": "envrig.box-prune/1", "removed": r.removed, "kept": kept});
        if self.as_json(doc) {
            return;
        }
        for b in &r.removed {
            self.done(&format!("removed box {b}"));
        }
        for (b, why) in &r.kept {
            self.done(&format!("kept box {b}: {why}"));
        }
        if r.removed.is_empty() && r.kept.is_empty() {
            self.done("no older box version to remove");
        }
    }

    pub fn boxes_added(&self, row: &ops::BoxRow) {
        if self.json {
            out(&json_line(
                &serde_json::json!({"schema": SCHEMA_BOXES, "boxes": [row]}),
            ));
        } else {
            let version = row
                .stored
                .version
                .as_deref()
                .map(|v| format!(" version {v}"))
                .unwrap_or_default();
            self.done(&format!(
                "added box `{}`{version} ({}, sha256 {})",
                row.stored.name,
                crate::envfile::values::format_size(row.stored.size),
                &row.stored.sha256[..12.min(row.stored.sha256.len())]
            ));
        }
    }
}
