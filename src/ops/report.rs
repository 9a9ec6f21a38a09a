//! How an operation reports while it works: the [`Phase`]s of its events and the
//! [`Reporter`] they go to (the CLI supplies one).

use envrig_provider_api::PullProgress;

/// What an operation reports while it works.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Pull,
    Create,
    Start,
    Stop,
    Remove,
    Provision,
    Ready,
    Warning,
    Done,
    Failed,
}

/// Where progress goes: a terminal, plain lines, or JSON lines.
pub trait Reporter: Send + Sync {
    fn event(&self, machine: Option<&str>, phase: Phase, message: &str);
    fn pull(&self, machine: &str, progress: &PullProgress);
    /// One line a provisioning step printed.
    fn output(&self, machine: &str, stream: envrig_provider_api::OutputStream, line: &str);
    /// The operation is over: settle any live display.
    fn finish(&self) {}
    /// Another process holds the lock; we wait.
    fn waiting_for_lock(&self, holder: &str) {
        self.event(
            None,
            Phase::Warning,
            &format!("waiting for another envrig working on this environment ({holder})"),
        );
    }
}
