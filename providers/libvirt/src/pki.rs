//! A TLS endpoint's client certificate folder, as libvirt wants it (`pkipath`).

use std::path::Path;

use envrig_provider_api::{ProviderError, Result};

use crate::{error, remote};

/// `uri` with libvirt's `pkipath` set to a folder holding the client certificate of a TLS
/// endpoint, under libvirt's names (`cacert.pem`, `clientcert.pem`, `clientkey.pem`): `certs`
/// itself when it uses them, else a folder of links to its Docker-style `ca.pem`, `cert.pem`
/// and `key.pem` (kept in envrig's data folder). A certificate folder for a URI that is not
/// TLS is refused: it would be ignored.
pub(crate) fn with_pki(uri: &str, certs: &Path) -> Result<String> {
    let scheme = uri.split_once("://").map(|(s, _)| s).unwrap_or_default();
    let tls = scheme == "qemu+tls" || (scheme == "qemu" && remote::remote_host(uri).is_some());
    if !tls {
        return Err(ProviderError::Conflict {
            message: format!(
                "a certificate folder ({}) is given for {uri}, which does not use TLS: use a qemu+tls:// URI, or no certificate folder",
                certs.display()
            ),
        });
    }
    const LIBVIRT: [&str; 3] = ["cacert.pem", "clientcert.pem", "clientkey.pem"];
    const DOCKER: [&str; 3] = ["ca.pem", "cert.pem", "key.pem"];
    let missing = |names: &[&str]| names.iter().any(|n| !certs.join(n).is_file());
    let dir = if !missing(&LIBVIRT) {
        certs.to_path_buf()
    } else if !missing(&DOCKER) {
        let certs = std::fs::canonicalize(certs)
            .map_err(|e| error::io("read the certificate folder", e))?;
        let key = envrig_provider_api::hash::sha256_hex(certs.as_os_str().as_encoded_bytes());
        let dir = envrig_provider_api::home::home_dir()
            .join("libvirt-pki")
            .join(&key[..16]);
        std::fs::create_dir_all(&dir).map_err(|e| error::io("make a certificate folder", e))?;
        for (from, to) in DOCKER.iter().zip(LIBVIRT) {
            let link = dir.join(to);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(certs.join(from), &link)
                .map_err(|e| error::io("link the certificates", e))?;
        }
        dir
    } else {
        return Err(ProviderError::Conflict {
            message: format!(
                "the certificate folder {} holds neither ca.pem, cert.pem and key.pem nor libvirt's cacert.pem, clientcert.pem and clientkey.pem",
                certs.display()
            ),
        });
    };
    // The folder goes into the URI's query, its bytes escaped as a URI wants them.
    let escaped: String = dir
        .to_string_lossy()
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    let sep = if uri.contains('?') { '&' } else { '?' };
    Ok(format!("{uri}{sep}pkipath={escaped}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_folder_becomes_libvirts_pkipath() {
        let d = tempfile::tempdir().unwrap();
        for f in ["cacert.pem", "clientcert.pem", "clientkey.pem"] {
            std::fs::write(d.path().join(f), b"x").unwrap();
        }
        let uri = with_pki("qemu+tls://h/system", d.path()).unwrap();
        assert!(uri.starts_with("qemu+tls://h/system?pkipath=/"), "{uri}");
        let e = with_pki("qemu+tcp://h/system", d.path()).unwrap_err();
        assert!(e.to_string().contains("does not use TLS"), "{e}");
        let empty = tempfile::tempdir().unwrap();
        let e = with_pki("qemu+tls://h/system?x=1", empty.path()).unwrap_err();
        assert!(e.to_string().contains("holds neither"), "{e}");
    }
}
