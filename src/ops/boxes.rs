//! `box list|add|remove`: the stores of bases kept by providers that have one (libvirt's
//! boxes); Docker's images are managed by Docker.

use std::path::Path;

use envrig_provider_api::StoredBox;
use serde::Serialize;

use super::{Context, OpError, provider};

#[derive(Debug, Clone, Serialize)]
pub struct BoxRow {
    pub provider: String,
    #[serde(flatten)]
    pub stored: StoredBox,
}

fn store_providers(ctx: &Context) -> Vec<&'static str> {
    ctx.registry
        .names()
        .filter(|n| ctx.registry.capabilities(n).is_some_and(|c| c.box_store))
        .collect()
}

pub async fn box_list(ctx: &Context) -> Result<Vec<BoxRow>, OpError> {
    let mut rows = Vec::new();
    for name in store_providers(ctx) {
        let p = provider(ctx, name).await?;
        for stored in p
            .box_list()
            .await
            .map_err(|e| OpError::provider("cannot list the boxes", e))?
        {
            rows.push(BoxRow {
                provider: name.to_string(),
                stored,
            });
        }
    }
    Ok(rows)
}

pub async fn box_add(
    ctx: &Context,
    name: &str,
    source: &Path,
    force: bool,
) -> Result<BoxRow, OpError> {
    let lower = source.to_string_lossy().to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Err(OpError::Usage(
            "adding a box from a URL is not supported yet: download it, then `envrig box add NAME FILE`".into(),
        ));
    }
    if !source.exists() {
        return Err(OpError::Usage(format!(
            "{} does not exist",
            source.display()
        )));
    }
    let name_p = store_providers(ctx)
        .into_iter()
        .next()
        .ok_or_else(|| OpError::Usage("no provider of this build keeps boxes".into()))?;
    let p = provider(ctx, name_p).await?;
    let stored = p.box_add(name, source, force).await.map_err(|e| match e {
        envrig_provider_api::ProviderError::Conflict { message } => OpError::Usage(message),
        e => OpError::provider(format!("cannot add box `{name}`"), e),
    })?;
    Ok(BoxRow {
        provider: name_p.to_string(),
        stored,
    })
}

pub async fn box_remove(ctx: &Context, name: &str) -> Result<(), OpError> {
    for pname in store_providers(ctx) {
        let p = provider(ctx, pname).await?;
        match p.box_remove(name).await {
            Ok(()) => return Ok(()),
            Err(envrig_provider_api::ProviderError::NotFound { .. }) => continue,
            Err(envrig_provider_api::ProviderError::Conflict { message }) => {
                return Err(OpError::Usage(message));
            }
            Err(e) => return Err(OpError::provider(format!("cannot remove box `{name}`"), e)),
        }
    }
    Err(OpError::Usage(format!(
        "no box named `{name}`; `envrig box list` lists them"
    )))
}
