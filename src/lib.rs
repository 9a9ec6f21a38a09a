//! envrig: identical, disposable dev and test environments from one committed Envfile.
//!
//! The library holds everything but the process edge: the Envfile model ([`envfile`]), the
//! environment's identity ([`identity`]), the local state cache ([`state`]), the pure planner
//! ([`plan`]), the registry of providers ([`providers`]) and the operations behind each
//! command ([`ops`]). The binary (`src/main.rs`) is the CLI ([`cli`]).

pub mod cli;
pub mod engines;
pub mod envfile;
pub mod identity;
pub mod lock;
pub mod ops;
pub mod placement;
pub mod plan;
pub mod providers;
pub mod provision;
pub mod state;

/// This build's version, as written on every resource.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Words that name a provider, or an engine library one uses.
    const PROVIDER_WORDS: &[&str] = &[
        "docker",
        "libvirt",
        "bollard",
        "virt::",
        "envrig_provider_docker",
        "envrig_provider_libvirt",
    ];

    /// What may name a provider: the line of `src/providers.rs` that brings in the built-in
    /// provider (the default), and lines marked `// names-provider: WHY` (user-facing text
    /// giving a provider as an example or an explanation).
    const ALLOWED: &[(&str, &str)] = &[("src/providers.rs", "use envrig_provider_docker::")];
    const MARKER: &str = "// names-provider:";

    /// The core names no provider (ARCHITECTURE.md's invariant): every `src/**/*.rs`
    /// is read and [`PROVIDER_WORDS`] are refused, in any case, outside [`ALLOWED`]. What
    /// is not the core's code is left out, so the rule is simple and cannot be fooled by
    /// what runs: comments (`//` to the end of the line, outside a string; they do not
    /// run) and test code (files named `tests.rs`, and a file from its `#[cfg(test)]` line
    /// on: test fixtures are Envfiles, which name providers as users do). String literals
    /// are NOT left out: a `"docker"` in code is a match on a provider's name.
    #[test]
    fn the_core_names_no_provider() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut found = Vec::new();
        let mut files = Vec::new();
        rust_files(&root.join("src"), &mut files);
        assert!(files.len() > 20, "read {} files", files.len());
        for file in files {
            let rel = file
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if file.file_name().is_some_and(|n| n == "tests.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            for (i, line) in text.lines().enumerate() {
                if line.trim() == "#[cfg(test)]" {
                    break;
                }
                if line.contains(MARKER)
                    || ALLOWED
                        .iter()
                        .any(|(f, start)| *f == rel && line.trim_start().starts_with(start))
                {
                    continue;
                }
                let code = code_of(line).to_lowercase();
                if let Some(w) = PROVIDER_WORDS.iter().find(|w| code.contains(*w)) {
                    found.push(format!("{rel}:{}: `{w}` in: {}", i + 1, line.trim()));
                }
            }
        }
        assert!(
            found.is_empty(),
            "the core names a provider (ask the registry instead):\n{}",
            found.join("\n")
        );
    }

    /// `line` without its `//` comment (one that starts outside a string literal; the
    /// char literal `'"'` opens none).
    fn code_of(line: &str) -> &str {
        let bytes = line.as_bytes();
        let (mut in_str, mut i) = (false, 0);
        while i < bytes.len() {
            match bytes[i] {
                b'\\' if in_str => i += 1,
                b'\'' if !in_str && line[i..].starts_with("'\"'") => i += 2,
                b'"' => in_str = !in_str,
                b'/' if !in_str && bytes.get(i + 1) == Some(&b'/') => return &line[..i],
                _ => {}
            }
            i += 1;
        }
        line
    }

    fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                rust_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    #[test]
    fn comments_end_outside_strings() {
        assert_eq!(code_of("let a = 1; // docker"), "let a = 1; ");
        assert_eq!(
            code_of(r#"f("unix://docker.sock") // x"#),
            r#"f("unix://docker.sock") "#
        );
        assert_eq!(code_of(r#"f("a\"//") // x"#), r#"f("a\"//") "#);
        assert_eq!(code_of(r#"c == '"' // "x"#), r#"c == '"' "#);
    }
}
