//! `envrig-provider-libvirt`: the libvirt provider as a plugin process.
//!
//! envrig starts it when a command needs a libvirt machine and speaks the plugin protocol
//! with it over stdin and stdout (`docs/plugins.md`); libvirt's shared libraries are loaded
//! by this process only, so `envrig` itself starts on a host that lacks them.

use std::sync::Arc;

use envrig_provider_api::Provider;
use envrig_provider_libvirt::{LibvirtProvider, schema};

#[tokio::main]
async fn main() {
    // envrig passes its own verbosity; RUST_LOG, when set, wins as it does for envrig.
    let level = std::env::var("ENVRIG_PLUGIN_LOG").unwrap_or_else(|_| "warn".into());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    envrig_provider_api::plugin::serve(schema(), |engine| async move {
        let p = LibvirtProvider::connect_with(engine).await?;
        Ok(Arc::new(p) as Arc<dyn Provider>)
    })
    .await
}
