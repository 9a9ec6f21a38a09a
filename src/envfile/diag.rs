//! Envfile diagnostics: every problem carries a span, a key path and what was expected, and
//! all of them are reported at once, rendered like compiler errors (file:line:col and a caret).

use annotate_snippets::{AnnotationKind, Group, Level, Renderer, Snippet};

/// A byte range in the Envfile's text.
pub type Span = std::ops::Range<usize>;

/// How serious a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem in an Envfile.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Where in the document: `machines.web.ports[1]`; empty for syntax errors.
    pub key_path: String,
    /// Byte range in the source.
    #[serde(skip)]
    pub span: Span,
    pub message: String,
    /// What was expected, or a "did you mean".
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(key_path: impl Into<String>, span: Span, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            key_path: key_path.into(),
            span,
            message: message.into(),
            help: None,
        }
    }

    pub fn warning(key_path: impl Into<String>, span: Span, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(key_path, span, message)
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// The diagnostics of one Envfile, with the source they point into.
#[derive(Debug, Clone)]
pub struct Report {
    /// The path as the user should see it (relative when it can be).
    pub display_path: String,
    pub source: String,
    pub diagnostics: Vec<Diagnostic>,
}

/// A 1-based line and column for a byte offset (one inside a character counts as that
/// character's start).
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(source.len());
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

impl Report {
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
    }

    /// Renders every diagnostic, in source order, followed by a one-line summary.
    pub fn render(&self, color: bool) -> String {
        let renderer = if color {
            Renderer::styled()
        } else {
            Renderer::plain()
        };
        let mut out = String::new();
        let mut sorted: Vec<&Diagnostic> = self.diagnostics.iter().collect();
        sorted.sort_by_key(|d| (d.span.start, d.span.end));
        for d in &sorted {
            let level = match d.severity {
                Severity::Error => Level::ERROR,
                Severity::Warning => Level::WARNING,
            };
            let title = if d.key_path.is_empty() {
                d.message.clone()
            } else {
                format!("`{}`: {}", d.key_path, d.message)
            };
            let span = clamp_span(&self.source, d.span.clone());
            let mut group = Group::with_title(level.primary_title(title)).element(
                Snippet::source(self.source.as_str())
                    .path(self.display_path.as_str())
                    .annotation(AnnotationKind::Primary.span(span)),
            );
            if let Some(help) = &d.help {
                group = group.element(Level::HELP.message(help.as_str()));
            }
            out.push_str(&renderer.render(&[group]));
            out.push_str("\n\n");
        }
        let errors = self.errors().count();
        let warnings = self.diagnostics.len() - errors;
        if errors > 0 {
            out.push_str(&format!(
                "error: {} has {errors} error{}{}\n",
                self.display_path,
                if errors == 1 { "" } else { "s" },
                if warnings > 0 {
                    format!(
                        " and {warnings} warning{}",
                        if warnings == 1 { "" } else { "s" }
                    )
                } else {
                    String::new()
                }
            ));
        }
        out
    }
}

/// Keeps a span inside the source and on character boundaries, so rendering never panics.
fn clamp_span(source: &str, span: Span) -> Span {
    let mut start = span.start.min(source.len());
    let mut end = span.end.clamp(start, source.len());
    while !source.is_char_boundary(start) {
        start -= 1;
    }
    while !source.is_char_boundary(end) {
        end += 1;
    }
    start..end
}

/// The closest candidate to `word`, if one is close enough to be a typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        let src = "a = 1\nbé = 2\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        assert_eq!(line_col(src, 9), (2, 3));
        // Inside `é` (bytes 7..9): its start, never a panic.
        assert_eq!(line_col(src, 8), (2, 2));
        assert_eq!(line_col(src, 99), (3, 1));
    }

    #[test]
    fn did_you_mean_finds_typos_only() {
        let keys = ["ports", "provider", "provision"];
        assert_eq!(did_you_mean("prots", keys), Some("ports"));
        assert_eq!(did_you_mean("provison", keys), Some("provision"));
        assert_eq!(did_you_mean("banana", keys), None);
    }
}
