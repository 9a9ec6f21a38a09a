//! What the commands on one environment's machines print: `up` (and `reload`), `status`,
//! `run`, `halt`, `provision` and `destroy`.

use std::collections::BTreeMap;

use super::{
    Printer, SCHEMA_DESTROY, SCHEMA_HALT, SCHEMA_PLAN, SCHEMA_PROVISION, SCHEMA_RESUME, SCHEMA_RUN,
    SCHEMA_STATUS, SCHEMA_SUSPEND, SCHEMA_UP, header, json_line, out, table,
};
use crate::ops::{self, DestroySummary, Project, RunOutcome, StatusReport, UpOutcome};

impl Printer {
    pub fn up(&self, project: &Project, outcomes: &[UpOutcome]) {
        if self.json {
            out(&json_line(&serde_json::json!({
                "schema": SCHEMA_UP,
                "project": project.identity.project.as_str(),
                "env_id": project.identity.env_id,
                "machines": outcomes,
            })));
            return;
        }
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for o in outcomes {
            *counts.entry(o.result.as_str()).or_default() += 1;
        }
        let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
        self.done(&format!(
            "`{}` is up: {}",
            project.identity.project,
            if summary.is_empty() {
                "no machines".to_string()
            } else {
                summary.join(", ")
            }
        ));
    }

    /// `up --plan`: what `up` would do, and where.
    pub fn up_plan(&self, rows: &[ops::PlanRow]) {
        if self.as_json(serde_json::json!({"schema": SCHEMA_PLAN, "machines": rows})) {
            return;
        }
        let mut t = header(&["MACHINE", "PROVIDER", "ACTION", "ENGINE", "WHY"]);
        for r in rows {
            t.push(vec![
                r.machine.clone(),
                r.provider.clone(),
                r.action.clone(),
                r.engine.clone(),
                r.why.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        table(&t);
    }

    pub fn status(&self, report: &StatusReport) {
        if self.json {
            out(&json_line(&serde_json::json!({
                "schema": SCHEMA_STATUS,
                "project": report.project,
                "env_id": report.env_id,
                "folder": report.folder,
                "envfile": report.envfile,
                "machines": report.machines,
            })));
            return;
        }
        let mut rows = header(&["MACHINE", "PROVIDER", "ENGINE", "STATE", "PORTS", "AGE"]);
        for r in &report.machines {
            let state = match (&r.state, &r.engine_state) {
                (s, Some(e)) if (s == "stale" || s == "orphan") => format!("{s} ({e})"),
                (s, _) => s.clone(),
            };
            rows.push(vec![
                r.machine.clone(),
                r.provider.clone(),
                r.engine.clone().unwrap_or_else(|| "-".into()),
                state,
                if r.ports.is_empty() {
                    "-".into()
                } else {
                    r.ports.join(", ")
                },
                r.created
                    .as_deref()
                    .and_then(ops::age)
                    .unwrap_or_else(|| "-".into()),
            ]);
        }
        table(&rows);
        if report.machines.iter().any(|r| r.state == "stale") {
            self.hint("a stale machine was made from older settings; `envrig reload MACHINE` recreates it");
        }
        for r in report.machines.iter().filter(|r| r.state == "unreachable") {
            self.hint(&format!(
                "`{}` is on the engine `{}`, which does not answer ({}); `envrig engine check` asks it",
                r.machine,
                r.engine.as_deref().unwrap_or("?"),
                r.reason.as_deref().unwrap_or("")
            ));
        }
        if report.machines.iter().any(|r| r.state == "orphan") {
            self.hint("an orphan is no longer in the Envfile; `envrig destroy MACHINE` removes it");
        }
    }

    pub fn run(&self, o: &RunOutcome) {
        if self.json {
            out(&json_line(
                &serde_json::json!({"schema": SCHEMA_RUN, "instance": o.instance, "machine": o.machine, "exit_code": o.exit_code, "kept": o.kept}),
            ));
        }
    }

    pub fn halt(&self, stopped: &[String]) {
        if self.json {
            out(&json_line(
                &serde_json::json!({"schema": SCHEMA_HALT, "machines": stopped}),
            ));
        } else {
            self.done(&format!(
                "halted {} machine{}",
                stopped.len(),
                if stopped.len() == 1 { "" } else { "s" }
            ));
        }
    }

    /// `suspend` (`suspended`) / `resume`.
    pub fn held(&self, machines: &[String], suspended: bool) {
        let (schema, verb) = if suspended {
            (SCHEMA_SUSPEND, "suspended")
        } else {
            (SCHEMA_RESUME, "resumed")
        };
        if self.json {
            out(&json_line(
                &serde_json::json!({"schema": schema, "machines": machines}),
            ));
        } else {
            self.done(&format!(
                "{verb} {} machine{}",
                machines.len(),
                if machines.len() == 1 { "" } else { "s" }
            ));
        }
    }

    pub fn provisioned(&self, done: &[(String, usize)]) {
        if self.json {
            let machines: Vec<serde_json::Value> = done
                .iter()
                .map(|(m, n)| serde_json::json!({"machine": m, "steps_run": n}))
                .collect();
            out(&json_line(
                &serde_json::json!({"schema": SCHEMA_PROVISION, "machines": machines}),
            ));
        } else {
            let total: usize = done.iter().map(|(_, n)| n).sum();
            self.done(&format!(
                "provisioned {} machine{}: {total} step{} run",
                done.len(),
                if done.len() == 1 { "" } else { "s" },
                if total == 1 { "" } else { "s" }
            ));
        }
    }

    pub fn destroy(&self, s: &DestroySummary) {
        if self.json {
            out(&json_line(
                &serde_json::json!({"schema": SCHEMA_DESTROY, "machines": s.machines, "resources": s.resources}),
            ));
            return;
        }
        if s.machines.is_empty() && s.resources.is_empty() {
            self.done("nothing to destroy");
        } else {
            let mut what: Vec<String> = s.machines.iter().map(|m| format!("`{m}`")).collect();
            what.extend(s.resources.iter().cloned());
            self.done(&format!("destroyed {}", what.join(", ")));
        }
    }
}
