//! Registries holding the team's layer cache: references, and credentials from where the
//! container tools keep them (never from an Envfile).
//!
//! Credentials are read, in order, from `REGISTRY_AUTH_FILE` (Podman's and skopeo's),
//! `$DOCKER_CONFIG/config.json` (else `~/.docker/config.json`, Docker's), and
//! `$XDG_RUNTIME_DIR/containers/auth.json` (Podman's default). The first file with an entry
//! for the registry wins; an entry is `{"auth": base64("USER:PASSWORD")}` or, for Docker's,
//! `{"username", "password"}` / `{"identitytoken"}`. Credential helpers (`credsStore`) are
//! not run: a registry that needs one is used without credentials and its refusal is said.

use std::path::PathBuf;

use base64::Engine;

/// A user name and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ***)", self.username)
    }
}

/// The registry (host and port) of `reference` (`REGISTRY/REPOSITORY[:TAG]`).
pub fn registry_of(reference: &str) -> &str {
    reference.split('/').next().unwrap_or(reference)
}

/// `reference` split into its repository and tag (`latest` when it has none).
pub fn split_tag(reference: &str) -> (&str, &str) {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    match last.rsplit_once(':') {
        Some((_, tag)) => (&reference[..reference.len() - tag.len() - 1], tag),
        None => (reference, "latest"),
    }
}

/// The files credentials are looked up in, in order.
fn auth_files() -> Vec<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let mut files = Vec::new();
    files.extend(var("REGISTRY_AUTH_FILE"));
    match var("DOCKER_CONFIG") {
        Some(d) => files.push(d.join("config.json")),
        None => files.extend(var("HOME").map(|h| h.join(".docker/config.json"))),
    }
    files.extend(var("XDG_RUNTIME_DIR").map(|d| d.join("containers/auth.json")));
    files
}

/// Credentials for `registry` from the usual files, if any has them.
pub fn credentials(registry: &str) -> Option<Credentials> {
    auth_files()
        .into_iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .find_map(|text| from_auth_file(&text, registry))
}

/// The entry of `registry` in one auth file's text (Docker's and Podman's format alike).
fn from_auth_file(text: &str, registry: &str) -> Option<Credentials> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let auths = v.get("auths")?.as_object()?;
    let entry = auths.iter().find_map(|(k, e)| {
        let host = k
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or(k);
        (host == registry).then_some(e)
    })?;
    if let Some(auth) = entry.get("auth").and_then(|a| a.as_str()) {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth)
            .ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (username, password) = text.split_once(':')?;
        return Some(Credentials {
            username: username.to_string(),
            password: password.to_string(),
        });
    }
    let field = |k: &str| entry.get(k).and_then(|x| x.as_str()).map(str::to_string);
    match (field("username"), field("password"), field("identitytoken")) {
        (Some(username), Some(password), _) => Some(Credentials { username, password }),
        (_, _, Some(token)) => Some(Credentials {
            username: "<token>".into(),
            password: token,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_registry_repository_and_tag() {
        assert_eq!(
            registry_of("127.0.0.1:5000/team/cache:docker-ab"),
            "127.0.0.1:5000"
        );
        assert_eq!(
            split_tag("127.0.0.1:5000/team/cache:docker-ab"),
            ("127.0.0.1:5000/team/cache", "docker-ab")
        );
        assert_eq!(
            split_tag("127.0.0.1:5000/team/cache"),
            ("127.0.0.1:5000/team/cache", "latest")
        );
    }

    #[test]
    fn credentials_are_read_in_both_formats_for_the_named_registry_only() {
        let auth = base64::engine::general_purpose::STANDARD.encode("ann:s3:cret");
        let text = format!(
            r#"{{"auths": {{"https://reg.example:5000/v1/": {{"auth": "{auth}"}},
                "other:1": {{"username": "bo", "password": "pw"}}}}}}"#
        );
        let c = from_auth_file(&text, "reg.example:5000").unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("ann", "s3:cret")
        );
        let c = from_auth_file(&text, "other:1").unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("bo", "pw"));
        assert!(from_auth_file(&text, "reg.example").is_none());
        assert!(from_auth_file("not json", "other:1").is_none());
        assert!(!format!("{c:?}").contains("pw"));
    }
}
