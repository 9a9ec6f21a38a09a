//! Vagrant box catalogs (the metadata JSON Vagrant Cloud and `vagrant box add URL` serve:
//! `name`, `versions[].version`, `versions[].providers[]` with `name`, `url`,
//! `checksum_type`, `checksum`): `box add NAME CATALOG` takes the newest version for a
//! provider with a box store and keeps it as `NAME@VERSION`; `box outdated`, `box update`
//! and `box prune` work from the catalogs boxes were added from, remembered in
//! `$ENVRIG_HOME/box-catalogs.json` (name to catalog address).

use std::collections::BTreeMap;
use std::path::PathBuf;

use envrig_provider_api::version;
use serde::{Deserialize, Serialize};

use super::error::OpError;

/// A catalog larger than this is refused (a box file given where a catalog was meant).
const MAX_CATALOG: u64 = 4 << 20;

#[derive(Debug, Clone, Deserialize)]
pub struct Catalog {
    pub versions: Vec<CatalogVersion>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CatalogVersion {
    pub version: String,
    #[serde(default)]
    pub providers: Vec<CatalogBox>,
}

/// One version's box for one provider.
#[derive(Debug, Clone, Deserialize)]
pub struct CatalogBox {
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub checksum_type: Option<String>,
    #[serde(default)]
    pub checksum: Option<String>,
}

/// The newest version of a catalog that has a box for `provider`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Newest {
    pub version: String,
    pub url: String,
    /// `sha256:HEX`, when the catalog gives one.
    pub checksum: Option<String>,
}

/// Whether a box source names a catalog rather than a box file: a `.json` address or file,
/// or an http(s) address whose path ends in none of a box file's extensions.
pub fn is_catalog(source: &str) -> bool {
    let path = source.split(['?', '#']).next().unwrap_or(source);
    let last = path.rsplit('/').next().unwrap_or(path).to_ascii_lowercase();
    if last.ends_with(".json") {
        return true;
    }
    let web = source.starts_with("http://") || source.starts_with("https://");
    web && ![".box", ".qcow2", ".img"].iter().any(|e| last.ends_with(e))
}

/// Where a catalog's box `url` is: an http(s) address as it is; a `file://` address or a
/// path as a file, a relative one beside the catalog (`catalog_at`, an address or a file).
pub fn box_source(url: &str, catalog_at: &str) -> super::boxes::BoxSource {
    use super::boxes::BoxSource;
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return BoxSource::Url(url.to_string());
    }
    let path = url.strip_prefix("file://").unwrap_or(url);
    if path.starts_with('/') {
        return BoxSource::File(path.into());
    }
    let web = catalog_at.starts_with("http://") || catalog_at.starts_with("https://");
    match catalog_at.rsplit_once('/') {
        Some((base, _)) if web => BoxSource::Url(format!("{base}/{path}")),
        Some((base, _)) => BoxSource::File(std::path::Path::new(base).join(path)),
        None => BoxSource::File(path.into()),
    }
}

/// Reads `text` as a catalog; `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> Result<Catalog, OpError> {
    let c: Catalog = serde_json::from_str(text).map_err(|e| {
        OpError::Usage(format!(
            "{origin} is not a Vagrant box catalog (metadata JSON with `versions`): {e}"
        ))
    })?;
    for v in &c.versions {
        if !version::valid(&v.version) {
            return Err(OpError::Usage(format!(
                "{origin}: `{}` is not a version envrig can keep (digits first; letters, \
                 digits, `.`, `-`, `+`; at most 32)",
                v.version
            )));
        }
    }
    Ok(c)
}

impl Catalog {
    /// The newest version with a box for `provider`, its checksum checked for form.
    pub fn newest(&self, provider: &str, origin: &str) -> Result<Newest, OpError> {
        let best = self
            .versions
            .iter()
            .filter_map(|v| Some((v, v.providers.iter().find(|p| p.name == provider)?)))
            .max_by(|(a, _), (b, _)| version::compare(&a.version, &b.version));
        let Some((v, b)) = best else {
            let offered: Vec<&str> = self
                .versions
                .iter()
                .flat_map(|v| v.providers.iter().map(|p| p.name.as_str()))
                .collect();
            return Err(OpError::Usage(format!(
                "{origin} has no version for {provider} (it has boxes for: {})",
                if offered.is_empty() {
                    "none".to_string()
                } else {
                    offered.join(", ")
                }
            )));
        };
        let checksum = match (b.checksum_type.as_deref(), b.checksum.as_deref()) {
            (_, None | Some("")) => None,
            (Some("sha256") | None, Some(c)) => Some(format!("sha256:{c}")),
            (Some(t), Some(_)) => {
                return Err(OpError::Usage(format!(
                    "{origin}: version {} gives a `{t}` checksum; envrig checks sha256 only",
                    v.version
                )));
            }
        };
        Ok(Newest {
            version: v.version.clone(),
            url: b.url.clone(),
            checksum,
        })
    }
}

/// Fetches the catalog at `source` (an http(s) address, or a file), at most 4 MiB.
pub async fn fetch(source: &str) -> Result<Catalog, OpError> {
    let src = source.to_string();
    let text = tokio::task::spawn_blocking(move || read_catalog(&src))
        .await
        .map_err(|e| OpError::Usage(e.to_string()))??;
    parse(&text, source)
}

fn read_catalog(source: &str) -> Result<String, OpError> {
    use std::io::Read;
    let failed = |m: String| OpError::Io {
        context: m,
        source: std::io::Error::other("the catalog could not be read"),
    };
    let mut body = Vec::new();
    if source.starts_with("http://") || source.starts_with("https://") {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_connect(Some(std::time::Duration::from_secs(30)))
            .timeout_recv_response(Some(std::time::Duration::from_secs(60)))
            .build()
            .into();
        let resp = agent
            .get(source)
            .call()
            .map_err(|e| failed(format!("cannot fetch {source}: {e}")))?;
        resp.into_body()
            .into_reader()
            .take(MAX_CATALOG + 1)
            .read_to_end(&mut body)
            .map_err(|e| failed(format!("cannot fetch {source}: {e}")))?;
    } else {
        std::fs::File::open(source)
            .and_then(|f| f.take(MAX_CATALOG + 1).read_to_end(&mut body))
            .map_err(|e| failed(format!("cannot read {source}: {e}")))?;
    }
    if body.len() as u64 > MAX_CATALOG {
        return Err(OpError::Usage(format!(
            "{source} is larger than a box catalog (4 MiB); give a .box or .qcow2 address to \
             add a box file"
        )));
    }
    String::from_utf8(body)
        .map_err(|_| OpError::Usage(format!("{source} is not a Vagrant box catalog (not text)")))
}

/// The catalogs boxes were added from, by box name.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Catalogs(pub BTreeMap<String, String>);

impl Catalogs {
    fn path() -> PathBuf {
        envrig_provider_api::home::home_dir().join("box-catalogs.json")
    }

    pub fn load() -> Catalogs {
        std::fs::read(Self::path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Remembers that box `name` comes from `catalog` (written whole, then renamed).
    pub fn remember(name: &str, catalog: &str) -> Result<(), OpError> {
        let mut all = Self::load();
        all.0.insert(name.to_string(), catalog.to_string());
        let path = Self::path();
        let io = |e| OpError::Io {
            context: format!("cannot write {}", path.display()),
            source: e,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(&all).unwrap_or_default();
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CATALOG: &str = r#"{"name":"team/debian","versions":[
        {"version":"1.9.0","providers":[{"name":"libvirt","url":"http://127.0.0.1/a.box","checksum_type":"sha256","checksum":"aa"}]},
        {"version":"1.10.0","providers":[{"name":"libvirt","url":"http://127.0.0.1/b.box","checksum_type":"sha256","checksum":"bb"},{"name":"virtualbox","url":"x"}]},
        {"version":"2.0.0","providers":[{"name":"virtualbox","url":"y"}]}]}"#;

    #[test]
    fn the_newest_version_for_the_provider_is_chosen_with_its_checksum() {
        let c = parse(CATALOG, "c.json").unwrap();
        assert_eq!(
            c.newest("libvirt", "c.json").unwrap(),
            Newest {
                version: "1.10.0".into(),
                url: "http://127.0.0.1/b.box".into(),
                checksum: Some("sha256:bb".into())
            }
        );
        let e = c.newest("docker", "c.json").unwrap_err().to_string();
        assert!(
            e.contains("no version for docker") && e.contains("libvirt"),
            "{e}"
        );
    }

    #[test]
    fn bad_catalogs_are_refused_with_what_is_wrong() {
        assert!(
            parse("{}", "c")
                .unwrap_err()
                .to_string()
                .contains("`versions`")
        );
        let bad = r#"{"versions":[{"version":"../x","providers":[]}]}"#;
        assert!(
            parse(bad, "c")
                .unwrap_err()
                .to_string()
                .contains("not a version")
        );
        let md5 = r#"{"versions":[{"version":"1","providers":[{"name":"libvirt","url":"u","checksum_type":"md5","checksum":"aa"}]}]}"#;
        let e = parse(md5, "c")
            .unwrap()
            .newest("libvirt", "c")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sha256 only"), "{e}");
    }

    #[test]
    fn a_catalogs_box_addresses_are_read_beside_it() {
        use super::super::boxes::BoxSource;
        let path = |s: BoxSource| match s {
            BoxSource::File(p) => p.display().to_string(),
            BoxSource::Url(u) => u,
        };
        assert_eq!(
            path(box_source("http://h/a.box", "/c/x.json")),
            "http://h/a.box"
        );
        assert_eq!(
            path(box_source("file:///srv/a.box", "http://h/c.json")),
            "/srv/a.box"
        );
        assert_eq!(
            path(box_source("a.box", "/srv/boxes/c.json")),
            "/srv/boxes/a.box"
        );
        assert_eq!(
            path(box_source("v/a.box", "http://h/d/c.json")),
            "http://h/d/v/a.box"
        );
    }

    #[test]
    fn catalogs_are_told_from_box_files() {
        assert!(is_catalog("http://127.0.0.1:8080/team/debian"));
        assert!(is_catalog("https://h/x/metadata.json?t=1"));
        assert!(is_catalog("./catalog.json"));
        assert!(!is_catalog("http://127.0.0.1/a.box"));
        assert!(!is_catalog("./disk.qcow2"));
        assert!(!is_catalog("./boxdir"));
    }
}
