//! What the commands that keep machines' state print: `snapshot`, `export`, `import` and
//! `package`.

use super::{
    Printer, SCHEMA_EXPORT, SCHEMA_IMPORT, SCHEMA_PACKAGE, SCHEMA_SNAPSHOT, SCHEMA_SNAPSHOTS,
    header, json_line, out, table,
};
use crate::ops;

impl Printer {
    pub fn snapshot_done(&self, verb: &str, name: &str, machines: &[String]) {
        if self.json {
            out(&json_line(
                &serde_json::json!({"schema": SCHEMA_SNAPSHOT, "action": verb, "name": name, "machines": machines}),
            ));
        } else {
            let list: Vec<String> = machines.iter().map(|m| format!("`{m}`")).collect();
            self.done(&format!("{verb} snapshot `{name}` of {}", list.join(", ")));
        }
    }

    pub fn snapshots(&self, rows: &[ops::SnapshotRow]) {
        let doc = serde_json::json!({"schema": SCHEMA_SNAPSHOTS, "snapshots": rows});
        if self.listed_already(doc, rows.len(), "no snapshots") {
            return;
        }
        let mut t = header(&["NAME", "MACHINES", "AGE"]);
        for r in rows {
            t.push(vec![
                r.name.clone(),
                r.machines.join(","),
                ops::age(&r.created).unwrap_or_else(|| "-".into()),
            ]);
        }
        table(&t);
    }

    /// An archive sent to a registry (`export --to`).
    pub fn exported_to(&self, reference: &str, file: &std::path::Path, m: &ops::Manifest) {
        let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        let machines: Vec<&str> = m.machines.iter().map(|x| x.machine.as_str()).collect();
        if self.json {
            out(&json_line(
                &serde_json::json!({"schema": SCHEMA_EXPORT, "file": null, "reference": reference, "bytes": size, "snapshot": m.snapshot, "machines": machines, "members": m.members.len()}),
            ));
        } else {
            self.done(&format!(
                "sent {reference} ({:.1} MB, {} machine{})",
                size as f64 / 1e6,
                machines.len(),
                if machines.len() == 1 { "" } else { "s" }
            ));
        }
    }

    pub fn exported(&self, path: &std::path::Path, m: &ops::Manifest) {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if self.json {
            let machines: Vec<&str> = m.machines.iter().map(|x| x.machine.as_str()).collect();
            out(&json_line(
                &serde_json::json!({"schema": SCHEMA_EXPORT, "file": path, "bytes": size, "snapshot": m.snapshot, "machines": machines, "members": m.members.len()}),
            ));
        } else {
            self.done(&format!(
                "wrote {} ({:.1} MB, {} machine{})",
                path.display(),
                size as f64 / 1e6,
                m.machines.len(),
                if m.machines.len() == 1 { "" } else { "s" }
            ));
        }
    }

    pub fn imported(&self, r: &ops::ImportReport) {
        if self.json {
            out(&json_line(
                &serde_json::json!({"schema": SCHEMA_IMPORT, "folder": r.folder, "project": r.project, "machines": r.machines}),
            ));
        } else {
            self.done(&format!(
                "imported `{}` into {}: {}",
                r.project,
                r.folder,
                r.machines.join(", ")
            ));
        }
    }

    pub fn packaged(&self, machine: &str, as_box: &str, id: &str) {
        if self.json {
            out(&json_line(
                &serde_json::json!({"schema": SCHEMA_PACKAGE, "machine": machine, "box": as_box, "id": id}),
            ));
        } else {
            self.done(&format!(
                "packaged `{machine}` as `{as_box}` ({})",
                id.chars().take(19).collect::<String>()
            ));
        }
    }
}
