//! Why an operation failed ([`OpError`]), and what the user can do next.

use std::path::PathBuf;

use envrig_provider_api::ProviderError;

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("no machine named `{name}` in {}", envfile.display())]
    UnknownMachine {
        name: String,
        envfile: PathBuf,
        suggestion: Option<String>,
    },
    #[error("machine `{machine}` is {state}")]
    NotRunning { machine: String, state: String },
    #[error("{context}: {source}")]
    Provider {
        context: String,
        #[source]
        source: ProviderError,
    },
    #[error("{}", machines_failed(failures, *total))]
    Machines {
        failures: Vec<(String, String)>,
        total: usize,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
    #[error("{}", ports_busy(.0))]
    PortsBusy(Vec<String>),
    #[error("interrupted: {done}")]
    Interrupted { done: String, hint: String },
    #[error("the {} engine `{}` is unreachable: {}", .0.provider, .0.engine, .0.reason)]
    Unreachable(Unreachable),
}

/// An engine that did not answer, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Unreachable {
    pub provider: String,
    pub engine: String,
    pub reason: String,
}

fn ports_busy(ports: &[String]) -> String {
    let mut s = "host ports are already in use; nothing was created:".to_string();
    for p in ports {
        s.push_str(&format!("\n  {p}"));
    }
    s
}

fn machines_failed(failures: &[(String, String)], total: usize) -> String {
    let mut s = if failures.len() == 1 {
        let (m, e) = &failures[0];
        return format!("machine `{m}`: {e}");
    } else {
        format!("{} of {total} failed:", failures.len())
    };
    for (m, e) in failures {
        s.push_str(&format!("\n  `{m}`: {e}"));
    }
    s
}

impl OpError {
    pub fn provider(context: impl Into<String>, source: ProviderError) -> OpError {
        OpError::Provider {
            context: context.into(),
            source,
        }
    }

    /// Whether the user asked for something impossible (exit 2) rather than an operation failing (exit 1).
    pub fn is_usage(&self) -> bool {
        matches!(self, OpError::UnknownMachine { .. } | OpError::Usage(_))
    }

    /// A next step for the user, when there is one.
    pub fn hint(&self) -> Option<String> {
        match self {
            OpError::UnknownMachine {
                suggestion: Some(s),
                ..
            } => Some(format!("did you mean `{s}`?")),
            OpError::UnknownMachine { .. } => {
                Some("`envrig status` lists the machines".to_string())
            }
            OpError::NotRunning { machine, state } if state == "suspended" => Some(format!(
                "bring it back with `envrig resume {machine}` (or `up`)"
            )),
            OpError::NotRunning { machine, .. } => {
                Some(format!("start it with `envrig up {machine}`"))
            }
            OpError::Provider { source, .. } => source.hint().map(str::to_string),
            OpError::Interrupted { hint, .. } => Some(hint.clone()),
            OpError::PortsBusy(_) => {
                Some("free them, or change `ports` in the Envfile".to_string())
            }
            OpError::Unreachable(u) => Some(format!(
                "start that engine again, or check it with `envrig engine check`; \
                 `envrig engine rm {}` stops using it",
                u.engine
            )),
            _ => None,
        }
    }
}
