//! `engine add`, `engine ls`, `engine rm`, `engine check`: the engine endpoints beyond the
//! local ones, kept in the user's config folder (or the file `ENVRIG_ENGINES` names).

use std::collections::BTreeMap;
use std::path::PathBuf;

use envrig_provider_api::{EngineInfo, Selector, labels};
use serde::Serialize;

use super::context::{Context, provider_at};
use super::error::OpError;
use crate::engines::{self, Endpoint, Engines, LOCAL};

/// One row of `engine ls`.
#[derive(Debug, Clone, Serialize)]
pub struct EngineRow {
    pub name: String,
    pub provider: String,
    pub uri: String,
    pub labels: BTreeMap<String, String>,
    pub max_machines: Option<u32>,
    pub reachable: bool,
    /// Why it is not reachable.
    pub reason: Option<String>,
    pub info: Option<EngineInfo>,
    /// envrig's machines on it, of every project.
    pub machines: Option<usize>,
}

/// What `engine add` is given.
pub struct AddEngine {
    pub name: String,
    pub uri: String,
    pub labels: Vec<String>,
    pub max_machines: Option<u32>,
    pub cert_path: Option<PathBuf>,
    pub force: bool,
    /// The provider asked for (`--provider`): needed where several serve the URI's scheme
    /// (`unix://` is Docker's and Podman's); else the first that serves it.
    pub provider: Option<String>,
}

/// The provider whose engines `uri` addresses (its scheme among the provider's): `asked`
/// when given (and it serves the scheme), else the first that serves it.
fn provider_of(ctx: &Context, uri: &str, asked: Option<&str>) -> Result<String, OpError> {
    let scheme = engines::scheme(uri).ok_or_else(|| {
        OpError::Usage(format!(
            "`{uri}` is no engine URI: it needs a scheme (`tcp://HOST:2375`, `ssh://USER@HOST`, `qemu+tcp://HOST/system`)"
        ))
    })?;
    if let Some(name) = asked {
        let serves = ctx
            .registry
            .schema(name)
            .is_some_and(|s| s.engine_schemes.iter().any(|x| x == scheme));
        return match serves {
            true => Ok(name.to_string()),
            false => Err(OpError::Usage(format!(
                "the {name} provider serves no `{scheme}://` engines"
            ))),
        };
    }
    let mut known = Vec::new();
    for name in ctx.registry.names() {
        if let Some(s) = ctx.registry.schema(name) {
            if s.engine_schemes.iter().any(|x| x == scheme) {
                return Ok(name.to_string());
            }
            known.extend(s.engine_schemes.iter().map(|x| format!("{x}://")));
        }
    }
    Err(OpError::Usage(format!(
        "no provider here serves `{scheme}://` engines (schemes known: {})",
        known.join(", ")
    )))
}

/// `engine add NAME URI`: writes the endpoint (replacing one of that name with `force`).
pub fn add(ctx: &Context, a: AddEngine) -> Result<Endpoint, OpError> {
    engines::check_name(&a.name).map_err(OpError::Usage)?;
    let provider = provider_of(ctx, &a.uri, a.provider.as_deref())?;
    let mut labels = BTreeMap::new();
    for l in &a.labels {
        let (k, v) = l
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| OpError::Usage(format!("`--label {l}`: write it KEY=VALUE")))?;
        labels.insert(k.to_string(), v.to_string());
    }
    if let Some(dir) = &a.cert_path {
        for f in ["ca.pem", "cert.pem", "key.pem"] {
            if !dir.join(f).is_file() {
                return Err(OpError::Usage(format!(
                    "`--cert-path {}` has no {f}",
                    dir.display()
                )));
            }
        }
    }
    let path = engines::file();
    let mut all = load(&path)?;
    if all.engines.contains_key(&a.name) && !a.force {
        return Err(OpError::Usage(format!(
            "an engine named `{}` exists; `--force` replaces it",
            a.name
        )));
    }
    let e = Endpoint {
        provider,
        uri: a.uri,
        cert_path: a.cert_path,
        labels,
        max_machines: a.max_machines,
    };
    all.engines.insert(a.name, e.clone());
    save(&all, &path)?;
    Ok(e)
}

/// `engine rm NAME`: refused while envrig machines are on it and it answers (they would be
/// lost from sight), unless `force`; an engine that does not answer can always go.
pub async fn rm(ctx: &Context, name: &str, force: bool) -> Result<(), OpError> {
    let path = engines::file();
    let mut all = load(&path)?;
    let Some(e) = all.engines.get(name).cloned() else {
        return Err(OpError::Usage(format!(
            "no engine named `{name}` (`envrig engine ls` lists them)"
        )));
    };
    if !force && let Ok(p) = provider_at(ctx, &e.provider, name).await {
        let n = p
            .list(&Selector::all_envrig())
            .await
            .map(|v| {
                v.iter()
                    .filter(|i| i.labels.contains_key(labels::MACHINE))
                    .count()
            })
            .unwrap_or(0);
        if n > 0 {
            return Err(OpError::Usage(format!(
                "engine `{name}` holds {n} envrig machine(s): destroy them first, or `--force` to stop using it anyway"
            )));
        }
    }
    all.engines.remove(name);
    save(&all, &path)
}

/// `engine ls` / `engine check`: every endpoint (or those named), asked at once. With no
/// endpoint configured, the local engines of the providers here.
pub async fn ls(ctx: &Context, names: &[String]) -> Result<Vec<EngineRow>, OpError> {
    let mut wanted: Vec<(String, Endpoint)> = ctx
        .engines
        .engines
        .iter()
        .map(|(n, e)| (n.clone(), e.clone()))
        .collect();
    for p in ctx.registry.names() {
        if ctx.engines.of(p).is_none() && ctx.registry.schema(p).is_some() {
            wanted.push((
                LOCAL.to_string(),
                Endpoint {
                    provider: p.to_string(),
                    uri: String::new(),
                    cert_path: None,
                    labels: BTreeMap::new(),
                    max_machines: None,
                },
            ));
        }
    }
    if let Some(n) = names.iter().find(|n| !wanted.iter().any(|(w, _)| w == *n)) {
        return Err(OpError::Usage(format!(
            "no engine named `{n}` (`envrig engine ls` lists them)"
        )));
    }
    wanted.retain(|(n, _)| names.is_empty() || names.contains(n));
    let rows = wanted.into_iter().map(|(name, e)| async move {
        let mut row = EngineRow {
            name: name.clone(),
            provider: e.provider.clone(),
            uri: if e.uri.is_empty() {
                "(local)".into()
            } else {
                e.uri.clone()
            },
            labels: e.labels.clone(),
            max_machines: e.max_machines,
            reachable: false,
            reason: None,
            info: None,
            machines: None,
        };
        let asked = async {
            let p = provider_at(ctx, &e.provider, &name).await?;
            let all = Selector::all_envrig();
            let (info, list) = tokio::join!(p.engine_info(), p.list(&all));
            let list = list.map_err(|err| OpError::provider("cannot list its machines", err))?;
            let n = list
                .iter()
                .filter(|i| i.labels.contains_key(labels::MACHINE))
                .count();
            Ok::<_, OpError>((info.ok(), n))
        };
        match asked.await {
            Ok((info, n)) => {
                row.reachable = true;
                row.info = info;
                row.machines = Some(n);
            }
            Err(err) => row.reason = Some(err.to_string()),
        }
        row
    });
    Ok(futures_util::future::join_all(rows).await)
}

fn load(path: &std::path::Path) -> Result<Engines, OpError> {
    Engines::load(path).map_err(|e| OpError::Usage(e.to_string()))
}

fn save(all: &Engines, path: &std::path::Path) -> Result<(), OpError> {
    all.save(path).map_err(|e| OpError::Io {
        context: "cannot save the engine endpoints".into(),
        source: std::io::Error::other(e.to_string()),
    })
}
