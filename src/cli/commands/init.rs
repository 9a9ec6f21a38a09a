//! `init` (an Envfile from a template) and `validate` (the Envfile checked, every warning
//! shown).

use std::path::Path;

use super::{display_path, fail};
use crate::cli::output::{self, Printer, json_line};
use crate::ops::{self, Project};

pub(super) fn init(printer: &Printer, cwd: &Path, template: &str, force: bool) -> i32 {
    if template == "list" {
        for t in ops::TEMPLATES {
            println!("{:<8}  {}", t.name, t.summary);
        }
        return 0;
    }
    match ops::init(cwd, template, force) {
        Ok(path) => {
            printer.done(&format!(
                "wrote {} from the `{template}` template",
                display_path(cwd, &path)
            ));
            printer
                .hint("`envrig up` builds it; add `.envrig/` to .gitignore (envrig's local cache)");
            0
        }
        Err(e) => fail(printer, e),
    }
}

pub(super) fn validate(project: &Project, json: bool) -> i32 {
    if json {
        println!(
            "{}",
            json_line(
                &serde_json::json!({"schema": output::SCHEMA_VALIDATE, "ok": true, "diagnostics": project.warnings.diagnostics.iter().map(|d| output::diagnostic_json(&project.warnings, d)).collect::<Vec<_>>()})
            )
        );
    } else {
        println!("ok");
    }
    0
}
