//! `init`: writes an Envfile from one of the templates embedded in the binary.

use std::path::{Path, PathBuf};

use super::error::OpError;

/// An embedded `templates/*.toml`.
#[derive(Debug, Clone, Copy)]
pub struct Template {
    pub name: &'static str,
    pub summary: &'static str,
    pub text: &'static str,
}

/// Every template, the default first.
pub const TEMPLATES: &[Template] = &[
    Template {
        name: "basic",
        summary: "one Debian container for development (the default)",
        text: include_str!("../../templates/basic.toml"),
    },
    Template {
        name: "web-db",
        summary: "a web machine that depends on a database machine",
        text: include_str!("../../templates/web-db.toml"),
    },
    Template {
        name: "vm",
        summary: "one libvirt/QEMU virtual machine", // names-provider: the template's subject
        text: include_str!("../../templates/vm.toml"),
    },
];

/// Writes `template` as `dir/Envfile`; refuses to replace one unless `force`.
pub fn init(dir: &Path, template: &str, force: bool) -> Result<PathBuf, OpError> {
    let t = TEMPLATES
        .iter()
        .find(|t| t.name == template)
        .ok_or_else(|| {
            let names: Vec<&str> = TEMPLATES.iter().map(|t| t.name).collect();
            let hint = crate::envfile::did_you_mean(template, names.iter().copied())
                .map(|s| format!("did you mean `{s}`? "))
                .unwrap_or_default();
            OpError::Usage(format!(
                "no template named `{template}`; {hint}templates: {}",
                names.join(", ")
            ))
        })?;
    let path = dir.join(crate::envfile::FILE_NAME);
    if path.exists() && !force {
        return Err(OpError::Usage(format!(
            "{} already exists; `envrig init --force` replaces it",
            path.display()
        )));
    }
    std::fs::write(&path, t.text).map_err(|source| OpError::Io {
        context: format!("cannot write {}", path.display()),
        source,
    })?;
    Ok(path)
}
