//! The reference pages are kept true by the code they describe (no engine needed):
//!
//! - `docs/envfile.md` documents every key the Envfile parser accepts (its own lists and the
//!   schemas the providers give of themselves), and nothing it refuses;
//! - `docs/cli.md` and `docs/man/*.1` are what the clap definitions generate now: when
//!   they differ, the test fails saying to run `scripts/docs.sh` (which runs this test with
//!   `UPDATE_DOCS=1`, writing them);
//! - `envrig help envfile` answers, and `envrig help COMMAND` is still clap's.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use envrig_provider_api::Schema;
use envrig_provider_api::schema::KeyKind;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The providers as the registry has them: the built-in ones (the default first), then
/// the libvirt plugin's schema (what its hello says).
fn schemas() -> Vec<Schema> {
    let mut s: Vec<Schema> = envrig_provider_docker::FLAVORS
        .into_iter()
        .map(|f| f.schema())
        .collect();
    s.push(envrig_provider_libvirt::schema());
    s
}

/// What `docs/envfile.md` documents: the full paths in backquotes on `###` headings (a key
/// each: `machines.NAME.cpus`), the tables named by `##` headings (`[boxes.NAME]` documents
/// the top-level key `boxes`), and each key heading's section text.
struct Documented {
    keys: BTreeSet<String>,
    top: BTreeSet<String>,
    sections: Vec<(String, String)>,
}

fn documented(page: &str) -> Documented {
    let mut d = Documented {
        keys: BTreeSet::new(),
        top: BTreeSet::new(),
        sections: Vec::new(),
    };
    let mut current: Vec<String> = Vec::new();
    let mut text = String::new();
    let mut in_code = false;
    let flush = |current: &mut Vec<String>, text: &mut String, d: &mut Documented| {
        for k in current.drain(..) {
            d.sections.push((k, text.clone()));
        }
        text.clear();
    };
    for line in page.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        }
        if in_code {
            text.push_str(line);
            text.push('\n');
            continue;
        }
        if let Some(h) = line.strip_prefix("### ") {
            flush(&mut current, &mut text, &mut d);
            for path in quoted(h) {
                d.keys.insert(path.clone());
                current.push(path);
            }
        } else if let Some(h) = line.strip_prefix("## ") {
            flush(&mut current, &mut text, &mut d);
            if let Some(table) = quoted(h).into_iter().find(|q| q.starts_with('[')) {
                let name = table.trim_matches(|c| c == '[' || c == ']');
                d.top
                    .insert(name.split('.').next().unwrap_or(name).to_string());
            }
        } else {
            text.push_str(line);
            text.push('\n');
        }
    }
    flush(&mut current, &mut text, &mut d);
    d
}

/// The backquoted parts of a line.
fn quoted(line: &str) -> Vec<String> {
    line.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[test]
fn the_envfile_page_documents_every_key_the_parser_accepts_and_no_other() {
    let page = std::fs::read_to_string(root().join("docs/envfile.md")).unwrap();
    let doc = documented(&page);
    let schemas = schemas();
    let known = envrig::envfile::known_keys(&schemas);
    let mut missing = Vec::new();
    let mut accepted_top = BTreeSet::new();
    let mut accepted = BTreeSet::new();
    for (table, key) in &known {
        if table.is_empty() {
            accepted_top.insert(key.clone());
            if !doc.top.contains(key) {
                missing.push(format!("the table `[{key}]` (a `## ` heading)"));
            }
        } else {
            let path = format!("{table}.{key}");
            if !doc.keys.contains(&path) {
                missing.push(format!("`{path}` (a `### ` heading)"));
            }
            accepted.insert(path);
        }
    }
    let unknown: Vec<&String> = doc.keys.difference(&accepted).collect();
    let unknown_top: Vec<&String> = doc.top.difference(&accepted_top).collect();
    assert!(
        missing.is_empty() && unknown.is_empty() && unknown_top.is_empty(),
        "docs/envfile.md is out of step with the parser:\n  not documented: {missing:#?}\n  \
         documented but not accepted: {unknown:#?} {unknown_top:#?}"
    );
    assert!(known.len() > 50, "{} keys", known.len());
}

/// A provider's key is documented with its type as its schema says it: each value of a
/// one-of key, a boolean as a boolean, a size as a size.
#[test]
fn provider_keys_are_documented_with_the_type_their_schema_gives() {
    let page = std::fs::read_to_string(root().join("docs/envfile.md")).unwrap();
    let doc = documented(&page);
    let mut wrong = Vec::new();
    for schema in schemas() {
        for key in &schema.keys {
            let path = format!("machines.NAME.{}.{}", schema.name, key.name);
            let Some((_, text)) = doc.sections.iter().find(|(k, _)| *k == path) else {
                continue; // the test above reports it
            };
            let type_line = text
                .lines()
                .find(|l| l.starts_with("- type:"))
                .unwrap_or_default();
            let needs: Vec<String> = match &key.kind {
                KeyKind::Bool => vec!["boolean".into()],
                KeyKind::Size => vec!["a size".into()],
                KeyKind::Word { .. } => vec!["a word".into()],
                KeyKind::OneOf { values } => values.iter().map(|v| format!("\"{v}\"")).collect(),
            };
            for n in needs {
                if !type_line.contains(&n) {
                    wrong.push(format!("`{path}`: its `- type:` line lacks {n}"));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "docs/envfile.md: {wrong:#?}");
}

/// Every key heading says its type, default, providers and an example.
#[test]
fn every_documented_key_has_its_type_default_providers_and_an_example() {
    let page = std::fs::read_to_string(root().join("docs/envfile.md")).unwrap();
    let doc = documented(&page);
    let mut lacking = Vec::new();
    for (key, text) in &doc.sections {
        for field in ["- type:", "- default:", "- providers:", "- example:"] {
            if !text.lines().any(|l| l.starts_with(field)) {
                lacking.push(format!("`{key}` has no `{field}` line"));
            }
        }
    }
    assert!(lacking.is_empty(), "docs/envfile.md: {lacking:#?}");
}

// --- The CLI reference, generated from the clap definitions. ---

const GENERATED: &str = "<!-- Generated from the clap definitions (src/cli/mod.rs) by \
                         scripts/docs.sh: do not edit by hand. -->\n\n";

fn cli_markdown() -> String {
    let options = clap_markdown::MarkdownOptions::new()
        .title("The envrig command line".to_string())
        .show_footer(false);
    let body = clap_markdown::help_markdown_command_custom(&envrig::cli::command(), &options);
    format!("{GENERATED}{body}")
}

/// One man page per command and subcommand (`envrig.1`, `envrig-up.1`,
/// `envrig-snapshot-save.1`), as `clap_mangen::generate_to` writes them, in memory.
fn man_pages() -> Vec<(String, Vec<u8>)> {
    fn walk(cmd: clap::Command, out: &mut Vec<(String, Vec<u8>)>) {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
            walk(sub, out);
        }
        let man = clap_mangen::Man::new(cmd)
            .source(format!("envrig {}", envrig::VERSION))
            .manual("envrig manual");
        let mut page = Vec::new();
        man.render(&mut page).unwrap();
        out.push((man.get_filename(), page));
    }
    let mut cmd = envrig::cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut out = Vec::new();
    walk(cmd, &mut out);
    out.sort();
    out
}

/// Compares `want` with the file at `path`, or writes it with `UPDATE_DOCS=1`; says what
/// differs.
fn check_or_write(path: &Path, want: &[u8], stale: &mut Vec<String>) {
    let rel = path
        .strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string();
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        if std::fs::read(path).ok().as_deref() != Some(want) {
            std::fs::write(path, want).unwrap();
            eprintln!("wrote {rel}");
        }
    } else if std::fs::read(path).ok().as_deref() != Some(want) {
        stale.push(rel);
    }
}

#[test]
fn the_cli_reference_and_man_pages_are_generated_from_the_code() {
    let mut stale = Vec::new();
    check_or_write(
        &root().join("docs/cli.md"),
        cli_markdown().as_bytes(),
        &mut stale,
    );
    let man_dir = root().join("docs/man");
    let pages = man_pages();
    assert!(pages.len() > 30, "{} man pages", pages.len());
    let names: BTreeSet<&str> = pages.iter().map(|(n, _)| n.as_str()).collect();
    for (name, page) in &pages {
        check_or_write(&man_dir.join(name), page, &mut stale);
    }
    // A page for a command that is gone.
    for entry in std::fs::read_dir(&man_dir).into_iter().flatten().flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        if file.ends_with(".1") && !names.contains(file.as_str()) {
            if std::env::var_os("UPDATE_DOCS").is_some() {
                std::fs::remove_file(entry.path()).unwrap();
                eprintln!("removed docs/man/{file}");
            } else {
                stale.push(format!("docs/man/{file} (no such command)"));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "the CLI reference differs from the clap definitions: {stale:#?}\n\
         run scripts/docs.sh to regenerate it, and commit the result"
    );
}

fn envrig(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_envrig"))
        .args(args)
        .env_remove("ENVRIG_FILE")
        .env_remove("ENVRIG_PROVIDER")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_envfile_lists_the_tables_and_their_keys_and_names_the_page() {
    let (code, out, err) = envrig(&["help", "envfile"]);
    assert_eq!(code, 0, "{out}{err}");
    for line in [
        "[project]",
        "[machines.NAME]",
        "[[machines.NAME.provision]]",
        "[machines.NAME.docker]",
        "docs/envfile.md",
    ] {
        assert!(out.contains(line), "no `{line}` in:\n{out}");
    }
    // Every table's keys on one line: the same text the library makes from the schemas.
    let lib = envrig::cli::envfile_help(&schemas());
    let row = |text: &str, table: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(&format!("{table} ")))
            .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
    };
    for table in ["[project]", "[machines.NAME]", "[machines.NAME.docker]"] {
        assert_eq!(row(&out, table), row(&lib, table), "{table}");
    }
    // With global options before it, too.
    let (code, again, _) = envrig(&["-C", "/", "-q", "help", "envfile"]);
    assert_eq!((code, again), (0, out));
}

#[test]
fn help_for_a_command_is_still_clap_s() {
    let (code, help, _) = envrig(&["help", "up"]);
    let (_, long, _) = envrig(&["up", "--help"]);
    assert_eq!(code, 0);
    assert_eq!(help, long);
    assert!(help.contains("Usage: envrig up"), "{help}");
    let (code, _, err) = envrig(&["help", "nosuch"]);
    assert_eq!(code, 2, "{err}");
    let (_, top, _) = envrig(&["--help"]);
    assert!(top.contains("envrig help envfile"), "{top}");
}

/// `init`'s templates point at the reference in the repository and at `help envfile`,
/// never at a web address.
#[test]
fn templates_point_at_the_reference_page_and_help_envfile() {
    for entry in std::fs::read_dir(root().join("templates"))
        .unwrap()
        .flatten()
    {
        let text = std::fs::read_to_string(entry.path()).unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(text.contains("docs/envfile.md"), "{name}");
        assert!(text.contains("`envrig help envfile`"), "{name}");
        assert!(
            !text.contains("http://") && !text.contains("https://"),
            "{name}"
        );
    }
}

/// The guides name only commands that exist: every `envrig WORD` (and `envrig GROUP
/// WORD` for a command with subcommands) in backquotes or console blocks is one.
#[test]
fn the_guides_name_only_commands_that_exist() {
    let cmd = envrig::cli::command();
    let mut unknown = Vec::new();
    for page in [
        "README.md",
        "docs/envfile.md",
        "docs/getting-started.md",
        "docs/vagrant.md",
        "docs/compose.md",
    ] {
        let text = std::fs::read_to_string(root().join(page)).unwrap();
        for (i, _) in text.match_indices("envrig ") {
            // Only where a command starts: after a backquote or a `$ ` prompt.
            let before = &text[..i];
            if !(before.ends_with('`') || before.ends_with("$ ")) {
                continue;
            }
            let words: Vec<&str> = text[i + 7..]
                .split(|c: char| c.is_whitespace() || c == '`')
                .filter(|w| !w.is_empty())
                .take(2)
                .collect();
            let Some(first) = words.first() else { continue };
            if first.starts_with('-') || *first == "help" {
                continue;
            }
            match cmd.find_subcommand(first) {
                None => unknown.push(format!("{page}: `envrig {first}`")),
                Some(sub) if sub.has_subcommands() => {
                    if let Some(second) = words.get(1).filter(|w| {
                        w.chars().all(|c| c.is_ascii_lowercase() || c == '-') && !w.is_empty()
                    }) && sub.find_subcommand(second).is_none()
                    {
                        unknown.push(format!("{page}: `envrig {first} {second}`"));
                    }
                }
                Some(_) => {}
            }
        }
    }
    assert!(unknown.is_empty(), "no such command: {unknown:#?}");
}
