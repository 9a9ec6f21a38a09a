//! Providers as plugins: a provider in a process of its own, spoken to over its stdin and
//! stdout (`docs/plugins.md` is the protocol's reference).
//!
//! An executable named `envrig-provider-NAME`, beside `envrig` or on `PATH`, is the provider
//! `NAME`. envrig starts it when a command needs that provider (once per command), reads
//! its [`Hello`] (protocol version, and the provider's [`crate::Schema`]: name,
//! [`crate::Capabilities`], Envfile keys), and then makes calls,
//! one JSON line each, many in flight at once; the plugin answers each with events
//! (an exec's output, a pull's progress) and one result or [`crate::ProviderError`]. The
//! plugin exits when its stdin closes.
//!
//! A plugin written in Rust implements [`crate::Provider`] and calls [`serve`] from its
//! `main`; [`Plugin`] and [`PluginProvider`] are envrig's side.

mod client;
mod provider;
mod serve;
pub mod wire;

pub use client::{Plugin, PluginProvider};
pub use serve::serve;
pub use wire::{Hello, PROTOCOL};
