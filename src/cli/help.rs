//! `envrig help envfile`: the Envfile's tables and their keys, one line each, read from the
//! parser's own lists and the providers' schemas ([`envfile::known_keys`]), and where the
//! whole reference is. Clap's `help` subcommand knows commands only, so this topic is
//! answered where clap reports `envfile` as an unknown subcommand: `envrig help up` and every
//! other use of `help` stay clap's.

use std::ffi::OsString;

use crate::envfile::{self, Providers};

/// The page with every key, its type, default and an example (a path in envrig's source).
pub(crate) const PAGE: &str = "docs/envfile.md";

/// Whether `args` (without the program's name) ask `envrig help envfile`: the first word
/// that is neither an option nor an option's value is `help`, the next `envfile`, and no
/// other word follows. `takes_value` says which options take a value (`-C`, `--file`).
pub(super) fn asks_for_envfile(args: &[OsString], takes_value: &dyn Fn(&str) -> bool) -> bool {
    let mut words = Vec::new();
    let mut it = args.iter().map(|a| a.to_string_lossy());
    while let Some(a) = it.next() {
        if a.starts_with('-') && a.len() > 1 {
            if !a.contains('=') && takes_value(&a) {
                it.next();
            }
        } else {
            words.push(a);
        }
    }
    words.len() == 2 && words[0] == "help" && words[1] == "envfile"
}

/// The summary `envrig help envfile` prints.
pub(crate) fn envfile_summary(providers: &dyn Providers) -> String {
    let keys = envfile::known_keys(providers);
    // Tables in the order the parser checks them, each with its keys.
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    for (table, key) in keys {
        if table.is_empty() {
            continue;
        }
        let shown = shown_table(&table);
        match rows.iter_mut().find(|(t, _)| *t == shown) {
            Some((_, ks)) => ks.push(key),
            None => rows.push((shown, vec![key])),
        }
        if table == "boxes.NAME" && !rows.iter().any(|(t, _)| t == "[defaults]") {
            let all = "any key of [machines.NAME], the machine's own value winning".to_string();
            rows.push(("[defaults]".to_string(), vec![all]));
        }
    }
    for name in providers.names() {
        if providers.schema(name).is_none() {
            let why = "(its plugin does not start here: `envrig validate` says why)";
            rows.push((format!("[machines.NAME.{name}]"), vec![why.to_string()]));
        }
    }
    let width = rows.iter().map(|(t, _)| t.len()).max().unwrap_or(0);
    let mut out = String::from(
        "The Envfile: one TOML file at the project's root (`envrig validate` checks it).\n\
         Its tables and their keys:\n\n",
    );
    for (table, keys) in rows {
        out.push_str(&format!("  {table:width$}  {}\n", keys.join(" ")));
    }
    out.push_str(&format!(
        "\nEvery key with its type, default, providers and an example, and the rules (names,\n\
         paths, ${{VAR}}, provisioning, the lock file): {PAGE} in envrig's source.\n"
    ));
    out
}

/// A table as an Envfile writes it: `[project]`, `[[machines.NAME.provision]]`, and a
/// table inside each element of an array as `[[...]] file`.
fn shown_table(table: &str) -> String {
    match table.split_once("[].") {
        Some((array, inner)) => format!("[[{array}]] {inner}"),
        None => match table.strip_suffix("[]") {
            Some(array) => format!("[[{array}]]"),
            None => format!("[{table}]"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(line: &str) -> bool {
        let args: Vec<OsString> = line.split_whitespace().map(OsString::from).collect();
        asks_for_envfile(&args, &|a| matches!(a, "-C" | "-f" | "--file"))
    }

    #[test]
    fn help_envfile_is_asked_with_options_anywhere_but_not_otherwise() {
        assert!(ask("help envfile"));
        assert!(ask("-C /tmp -f x.toml help envfile -q"));
        assert!(ask("--file=x help envfile"));
        assert!(!ask("help up"));
        assert!(!ask("-C help envfile"));
        assert!(!ask("help envfile extra"));
        assert!(!ask("envfile"));
    }

    #[test]
    fn tables_are_shown_as_toml_writes_them() {
        assert_eq!(shown_table("project"), "[project]");
        assert_eq!(
            shown_table("machines.NAME.provision[]"),
            "[[machines.NAME.provision]]"
        );
        assert_eq!(
            shown_table("machines.NAME.provision[].file"),
            "[[machines.NAME.provision]] file"
        );
    }
}
