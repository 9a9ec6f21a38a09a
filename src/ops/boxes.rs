//! `box list|add|remove|outdated|update|prune`: the stores of bases kept by providers that
//! have one (libvirt's boxes), versions from Vagrant box catalogs (`catalog.rs`); Docker's
//! images are managed by Docker.

use std::path::Path;

use envrig_provider_api::StoredBox;
use envrig_provider_api::hash::sha256_file;
use serde::Serialize;

use super::catalog;
use super::context::{Context, provider};
use super::error::OpError;

#[derive(Debug, Clone, Serialize)]
pub struct BoxRow {
    pub provider: String,
    #[serde(flatten)]
    pub stored: StoredBox,
}

fn store_providers(ctx: &Context) -> Vec<String> {
    ctx.registry
        .names()
        .filter(|n| ctx.registry.capabilities(n).is_some_and(|c| c.box_store))
        .map(str::to_string)
        .collect()
}

pub async fn box_list(ctx: &Context) -> Result<Vec<BoxRow>, OpError> {
    let mut rows = Vec::new();
    for name in store_providers(ctx) {
        let p = provider(ctx, &name).await?;
        for stored in p
            .box_list()
            .await
            .map_err(|e| OpError::provider("cannot list the boxes", e))?
        {
            rows.push(BoxRow {
                provider: name.clone(),
                stored,
            });
        }
    }
    Ok(rows)
}

/// Where a box SOURCE comes from.
pub enum BoxSource {
    File(std::path::PathBuf),
    Url(String),
}

impl BoxSource {
    /// An `http(s)://` URL, else a path relative to `cwd`.
    pub fn parse(text: &str, cwd: &Path) -> BoxSource {
        let lower = text.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            BoxSource::Url(text.to_string())
        } else {
            BoxSource::File(cwd.join(text))
        }
    }
}

/// Where downloads wait until they are whole: `$ENVRIG_HOME/downloads`, else the user's
/// cache folder.
fn downloads_dir() -> std::path::PathBuf {
    if let Some(h) = std::env::var_os("ENVRIG_HOME") {
        return std::path::PathBuf::from(h).join("downloads");
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("envrig/downloads")
}

/// `sha256:HEX` (or a bare HEX) as 64 lower-case hex digits.
fn parse_checksum(text: &str) -> Result<String, OpError> {
    let hex = text
        .strip_prefix("sha256:")
        .unwrap_or(text)
        .to_ascii_lowercase();
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex)
    } else {
        Err(OpError::Usage(format!(
            "`{text}` is not a checksum: give `sha256:` and 64 hex digits"
        )))
    }
}

/// Why a download did not give a file.
enum Download {
    Failed(String),
    Mismatch(String),
}

impl From<String> for Download {
    fn from(s: String) -> Download {
        Download::Failed(s)
    }
}

/// Downloads `url` into `dir` as `KEY.EXT.part`, resuming what an earlier try left (an
/// HTTP range request; a server that ignores it sends the whole file again), then checks
/// `sha256` when given and renames the file to `KEY.EXT`. `progress(done, total)` follows.
fn download(
    url: &str,
    dir: &Path,
    sha256: Option<&str>,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<std::path::PathBuf, Download> {
    use std::io::{Read, Write};
    let key = &crate::identity::sha256_hex(url.as_bytes())[..16];
    let last = url
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .rsplit('/')
        .next()
        .unwrap_or("");
    let ext = match last.rsplit_once('.') {
        Some((_, e)) if ["box", "qcow2", "img"].contains(&e) => e,
        _ => "qcow2",
    };
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let part = dir.join(format!("{key}.{ext}.part"));
    let done_file = dir.join(format!("{key}.{ext}"));
    let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(std::time::Duration::from_secs(30)))
        .timeout_recv_response(Some(std::time::Duration::from_secs(60)))
        .build()
        .into();
    let mut req = agent.get(url);
    if have > 0 {
        req = req.header("Range", &format!("bytes={have}-"));
    }
    let resp = req
        .call()
        .map_err(|e| format!("cannot download {url}: {e}"))?;
    let resumed = have > 0 && resp.status().as_u16() == 206;
    let length: Option<u64> = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let start = if resumed { have } else { 0 };
    let total = length.map(|l| l + start);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(&part)
        .map_err(|e| format!("cannot write {}: {e}", part.display()))?;
    let mut body = resp.into_body().into_reader();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = start;
    progress(done, total);
    loop {
        let n = body
            .read(&mut buf)
            .map_err(|e| format!("the download of {url} broke off at {done} bytes ({e}); run the same command again to resume"))?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n])
            .map_err(|e| format!("cannot write {}: {e}", part.display()))?;
        done += n as u64;
        progress(done, total);
    }
    file.sync_all()
        .map_err(|e| format!("cannot write {}: {e}", part.display()))?;
    drop(file);
    if let Some(t) = total
        && t != done
    {
        return Err(Download::Failed(format!(
            "the download of {url} ended at {done} of {t} bytes; run the same command again to resume"
        )));
    }
    if let Some(want) = sha256 {
        let (got, _) = sha256_file(&part).map_err(|e| Download::Failed(e.to_string()))?;
        if got != want {
            let _ = std::fs::remove_file(&part);
            return Err(Download::Mismatch(format!(
                "the download of {url} has sha256 {got}, not the {want} asked for; nothing was added"
            )));
        }
    }
    std::fs::rename(&part, &done_file).map_err(|e| e.to_string())?;
    Ok(done_file)
}

/// `box add NAME SOURCE`: a box file (a path or an http(s) address), or the newest version
/// for this build's box store of a Vagrant box catalog (kept as `NAME@VERSION`, the catalog
/// remembered for `box outdated` and `box update`).
pub async fn box_add(
    ctx: &Context,
    name: &str,
    source: &BoxSource,
    checksum: Option<&str>,
    force: bool,
) -> Result<BoxRow, OpError> {
    let text = match source {
        BoxSource::Url(u) => u.clone(),
        BoxSource::File(p) => p.display().to_string(),
    };
    if !catalog::is_catalog(&text) {
        return add_file(ctx, name, source, checksum, force).await;
    }
    if checksum.is_some() {
        return Err(OpError::Usage(
            "--checksum is for a box file: a catalog gives each version's own".into(),
        ));
    }
    if name.contains('@') {
        return Err(OpError::Usage(format!(
            "`{name}`: a box from a catalog is named without a version (envrig keeps each as NAME@VERSION)"
        )));
    }
    let c = catalog::fetch(&text).await?;
    let newest = c.newest(&store_provider(ctx)?, &text)?;
    let row = add_version(ctx, name, &newest, &text, force).await?;
    catalog::Catalogs::remember(name, &text)?;
    Ok(row)
}

/// The first provider of this build with a box store.
fn store_provider(ctx: &Context) -> Result<String, OpError> {
    store_providers(ctx)
        .into_iter()
        .next()
        .ok_or_else(|| OpError::Usage("no provider of this build keeps boxes".into()))
}

/// Adds a catalog's version as `NAME@VERSION`.
async fn add_version(
    ctx: &Context,
    name: &str,
    v: &catalog::Newest,
    catalog_at: &str,
    force: bool,
) -> Result<BoxRow, OpError> {
    let source = catalog::box_source(&v.url, catalog_at);
    let versioned = format!("{name}@{}", v.version);
    add_file(ctx, &versioned, &source, v.checksum.as_deref(), force).await
}

/// A box with versions from a catalog: the newest here and the catalog's newest.
#[derive(Debug, Clone, Serialize)]
pub struct OutdatedRow {
    pub name: String,
    pub current: String,
    pub latest: String,
    pub outdated: bool,
    pub catalog: String,
}

/// `box outdated`: every box added from a catalog, its newest version here against the
/// catalog's newest.
pub async fn box_outdated(ctx: &Context) -> Result<Vec<OutdatedRow>, OpError> {
    let stored = box_list(ctx).await?;
    let provider = store_provider(ctx)?;
    let mut rows = Vec::new();
    for (name, url) in catalog::Catalogs::load().0 {
        let here = stored
            .iter()
            .filter(|r| r.stored.name == name)
            .filter_map(|r| r.stored.version.as_deref());
        let Some(current) = envrig_provider_api::version::newest(here) else {
            continue;
        };
        let latest = catalog::fetch(&url).await?.newest(&provider, &url)?.version;
        rows.push(OutdatedRow {
            outdated: envrig_provider_api::version::compare(&latest, current).is_gt(),
            name,
            current: current.to_string(),
            latest,
            catalog: url,
        });
    }
    Ok(rows)
}

/// `box update NAME`: the catalog's newest version added beside those here (machines keep
/// the version they were made from); `None` when it is here already.
pub async fn box_update(ctx: &Context, name: &str) -> Result<Option<BoxRow>, OpError> {
    let Some(url) = catalog::Catalogs::load().0.get(name).cloned() else {
        return Err(OpError::Usage(format!(
            "box `{name}` was not added from a catalog; `envrig box add {name} CATALOG-URL` adds one that was"
        )));
    };
    let newest = catalog::fetch(&url)
        .await?
        .newest(&store_provider(ctx)?, &url)?;
    let here = box_list(ctx).await?.into_iter().any(|r| {
        r.stored.name == name
            && r.stored
                .version
                .as_deref()
                .is_some_and(|v| envrig_provider_api::version::compare(v, &newest.version).is_eq())
    });
    if here {
        return Ok(None);
    }
    add_version(ctx, name, &newest, &url, false).await.map(Some)
}

/// What `box prune` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    /// `NAME@VERSION` removed.
    pub removed: Vec<String>,
    /// `NAME@VERSION` kept, and why.
    pub kept: Vec<(String, String)>,
}

/// `box prune`: removes every version of a box but its newest, unless a machine (or a kept
/// generation) uses it or `pinned` (the disks a lock file pins, `sha256:HEX`) holds it.
pub async fn box_prune(ctx: &Context, pinned: &[String]) -> Result<PruneReport, OpError> {
    let rows = box_list(ctx).await?;
    let mut report = PruneReport::default();
    let mut names: Vec<&str> = rows.iter().map(|r| r.stored.name.as_str()).collect();
    names.dedup();
    for name in names {
        let versions: Vec<&BoxRow> = rows
            .iter()
            .filter(|r| r.stored.name == name && r.stored.version.is_some())
            .collect();
        let newest = envrig_provider_api::version::newest(
            versions.iter().filter_map(|r| r.stored.version.as_deref()),
        );
        for r in versions {
            let v = r.stored.version.as_deref().unwrap_or_default();
            let full = format!("{name}@{v}");
            if Some(v) == newest {
                continue;
            }
            if pinned.contains(&format!("sha256:{}", r.stored.sha256)) {
                report.kept.push((full, "pinned by Envfile.lock".into()));
                continue;
            }
            match box_remove(ctx, &full).await {
                Ok(()) => report.removed.push(full),
                // In use by a machine: the store refuses, saying by which.
                Err(OpError::Usage(why)) => report.kept.push((full, why)),
                Err(e) => return Err(e),
            }
        }
    }
    Ok(report)
}

async fn add_file(
    ctx: &Context,
    name: &str,
    source: &BoxSource,
    checksum: Option<&str>,
    force: bool,
) -> Result<BoxRow, OpError> {
    let want = checksum.map(parse_checksum).transpose()?;
    let (source, downloaded) = match source {
        BoxSource::File(p) => (p.clone(), false),
        BoxSource::Url(url) => {
            ctx.reporter.event(
                Some(name),
                super::report::Phase::Pull,
                &format!("downloading {url}"),
            );
            let (url, reporter, name2, dir, want) = (
                url.clone(),
                ctx.reporter.clone(),
                name.to_string(),
                downloads_dir(),
                want.clone(),
            );
            let file = tokio::task::spawn_blocking(move || {
                download(&url, &dir, want.as_deref(), &mut |done, total| {
                    reporter.pull(
                        &name2,
                        &envrig_provider_api::PullProgress::Bytes {
                            done,
                            total: total.unwrap_or(0),
                        },
                    )
                })
            })
            .await
            .map_err(|e| OpError::Usage(e.to_string()))?
            .map_err(|e| match e {
                // A download that differs from the checksum given is bad input; one that
                // broke off is the network's fault.
                Download::Mismatch(m) => OpError::Usage(m),
                Download::Failed(m) => OpError::Io {
                    context: m,
                    source: std::io::Error::other("the download failed"),
                },
            })?;
            (file, true)
        }
    };
    let source = source.as_path();
    if !downloaded && let Some(want) = &want {
        let (s2, w2) = (source.to_path_buf(), want.clone());
        let got = tokio::task::spawn_blocking(move || sha256_file(&s2).map(|(h, _)| h))
            .await
            .map_err(|e| OpError::Usage(e.to_string()))?
            .map_err(|e| OpError::Usage(format!("cannot read {}: {e}", source.display())))?;
        if got != w2 {
            return Err(OpError::Usage(format!(
                "{} has sha256 {got}, not the {w2} asked for; nothing was added",
                source.display()
            )));
        }
    }
    if !source.exists() {
        return Err(OpError::Usage(format!(
            "{} does not exist",
            source.display()
        )));
    }
    let name_p = store_provider(ctx)?;
    let p = provider(ctx, &name_p).await?;
    let added = p.box_add(name, source, force).await;
    if downloaded {
        // The store holds its own copy; the download is only kept to resume a broken one.
        let _ = std::fs::remove_file(source);
    }
    let stored = added.map_err(|e| match e {
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
        let p = provider(ctx, &pname).await?;
        match p.box_remove(name).await {
            Ok(()) => return Ok(()),
            Err(envrig_provider_api::ProviderError::NotFound { .. }) => continue,
            Err(envrig_provider_api::ProviderError::Conflict { message }) => {
                return Err(OpError::Usage(message));
            }
            Err(e) => return Err(OpError::provider(format!("cannot remove box `{name}`"), e)),
        }
    }
    // A box kept only in versions is removed one version at a time.
    let versions: Vec<String> = box_list(ctx)
        .await?
        .into_iter()
        .filter(|r| r.stored.name == name)
        .filter_map(|r| r.stored.version)
        .collect();
    if !versions.is_empty() {
        return Err(OpError::Usage(format!(
            "box `{name}` has versions {}: remove one as `{name}@VERSION` (`envrig box prune` \
             removes all but the newest)",
            versions.join(", ")
        )));
    }
    Err(OpError::Usage(format!(
        "no box named `{name}`; `envrig box list` lists them"
    )))
}
