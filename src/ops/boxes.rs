//! `box list|add|remove`: the stores of bases kept by providers that have one (libvirt's
//! boxes); Docker's images are managed by Docker.

use std::path::Path;

use envrig_provider_api::StoredBox;
use envrig_provider_api::hash::sha256_file;
use serde::Serialize;

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

pub async fn box_add(
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
    let name_p = store_providers(ctx)
        .into_iter()
        .next()
        .ok_or_else(|| OpError::Usage("no provider of this build keeps boxes".into()))?;
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
    Err(OpError::Usage(format!(
        "no box named `{name}`; `envrig box list` lists them"
    )))
}
