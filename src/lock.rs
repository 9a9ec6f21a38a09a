//! `Envfile.lock`: the immutable identity every box resolved to, per provider, and every
//! machine's fingerprint. It holds no host path and no time, so two hosts with the same
//! Envfile and the same bases write the same file.
//!
//! A machine's fingerprint is the sha256 of its resolved base's identity, the normalised
//! settings that shape its resource (synced folders by their path relative to the Envfile,
//! never the checkout's folder) and its provisioning steps' content hashes, in order.

use std::collections::BTreeMap;
use std::path::Path;

use envrig_provider_api::{BaseIdentity, OptionValue, PortSpec};
use serde::{Deserialize, Serialize};

use crate::envfile::Machine;

/// The file's name, beside the Envfile.
pub const FILE_NAME: &str = "Envfile.lock";

const HEADER: &str = "# Envfile.lock: the bases and machines the Envfile resolved to. Written by `envrig lock`\n# (and by an `up` that finds none); commit it beside the Envfile. `up --locked` refuses to\n# go on when this host or the Envfile no longer matches it.\n\n";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    pub version: u32,
    /// Box name, then provider name.
    #[serde(default)]
    pub boxes: BTreeMap<String, BTreeMap<String, BaseIdentity>>,
    #[serde(default)]
    pub machines: BTreeMap<String, LockedMachine>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockedMachine {
    pub provider: String,
    #[serde(rename = "box")]
    pub box_name: String,
    pub fingerprint: String,
}

/// Why a lock file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a lock file envrig can read: {message}")]
    Parse { path: String, message: String },
}

/// Reads the lock file at `path`; `None` when there is none.
pub fn read(path: &Path) -> Result<Option<Lock>, LockError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(LockError::Io {
                path: path.display().to_string(),
                source,
            });
        }
    };
    parse(&text, &path.display().to_string()).map(Some)
}

/// Parses and checks the text of the lock file at `path` (named in errors): its version,
/// every fingerprint (64 hex digits) and every box identity (`sha256:` and 64 hex digits).
/// Nothing read here is trusted until it passed: a hand-edited or merged lock gives a clear
/// error, never a panic later on.
pub fn parse(text: &str, path: &str) -> Result<Lock, LockError> {
    let fail = |message: String| LockError::Parse {
        path: path.to_string(),
        message,
    };
    let lock: Lock = toml::from_str(text).map_err(|e| fail(e.to_string()))?;
    if lock.version != 1 {
        return Err(fail(format!(
            "version {} (this envrig writes version 1)",
            lock.version
        )));
    }
    let redo = "; `envrig lock` writes it anew";
    for (name, m) in &lock.machines {
        if !is_hex(&m.fingerprint, 64) {
            return Err(fail(format!(
                "machine `{}` has fingerprint `{}`, which is not 64 hex digits{redo}",
                shown(name),
                shown(&m.fingerprint)
            )));
        }
    }
    for (name, by_provider) in &lock.boxes {
        for (provider, base) in by_provider {
            let ok = base
                .id
                .strip_prefix("sha256:")
                .is_some_and(|h| is_hex(h, 64));
            if !ok {
                return Err(fail(format!(
                    "box `{}` ({}) has id `{}`, which is not `sha256:` and 64 hex digits{redo}",
                    shown(name),
                    shown(provider),
                    shown(&base.id)
                )));
            }
        }
    }
    Ok(lock)
}

/// Whether `s` is exactly `len` lower-case hex digits.
fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `s` for a message: at most 70 characters (cut on a character, never inside one),
/// control characters escaped.
fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(70).flat_map(char::escape_debug).collect();
    if s.chars().nth(70).is_some() {
        out.push('…');
    }
    out
}

/// The file's text: the header and the TOML, stable (sorted) so two hosts write the same.
pub fn render(lock: &Lock) -> String {
    format!(
        "{HEADER}{}",
        toml::to_string(lock).unwrap_or_else(|e| format!("# cannot write: {e}\n"))
    )
}

/// Writes the lock file atomically.
pub fn write(path: &Path, lock: &Lock) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, render(lock).as_bytes())?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// What shapes a machine, normalised: no host path, no name of the checkout, and not its
/// hostname (a name, like the machine's, given to it at every start): machines of one recipe
/// share a fingerprint, and so a baked layer, whatever they are called.
#[derive(Serialize)]
struct Shape<'a> {
    provider: &'a str,
    base: &'a str,
    cpus: Option<u32>,
    memory: Option<u64>,
    env: &'a BTreeMap<String, String>,
    command: &'a Option<Vec<String>>,
    ports: &'a [PortSpec],
    synced: Vec<(String, &'a str, bool)>,
    options: BTreeMap<String, OptionValue>,
    steps: &'a [String],
}

/// `m`'s synced folders as (host path relative to the Envfile's folder `dir`, guest path,
/// read-only): never the checkout's own folder, so two checkouts agree.
fn synced_relative<'a>(m: &'a Machine, dir: &Path) -> Vec<(String, &'a str, bool)> {
    m.synced
        .iter()
        .map(|s| {
            let rel = s
                .host
                .strip_prefix(dir)
                .map(|r| r.components().collect::<std::path::PathBuf>())
                .unwrap_or_else(|_| s.host.clone());
            (rel.display().to_string(), s.guest.as_str(), s.read_only)
        })
        .collect()
}

/// The fingerprint (64 hex digits) of machine `m` on base `base` with steps hashed as
/// `steps`; `dir` is the Envfile's folder (synced folders count by their path below it).
pub fn fingerprint(m: &Machine, base: &BaseIdentity, steps: &[String], dir: &Path) -> String {
    let shape = Shape {
        provider: &m.provider,
        base: &base.id,
        cpus: m.cpus,
        memory: m.memory,
        env: &m.env,
        command: &m.command,
        ports: &m.ports,
        synced: synced_relative(m, dir),
        options: m.options(),
        steps,
    };
    crate::identity::sha256_hex(&serde_json::to_vec(&shape).unwrap_or_default())
}

/// The difference between what the lock pins and what this host and Envfile give, one
/// line per thing, naming the box or machine. Empty when they agree.
pub fn differences(
    lock: &Lock,
    machines: &[(&Machine, Option<&BaseIdentity>, Option<&str>)],
) -> Vec<String> {
    let mut out = Vec::new();
    let mut boxes_said = std::collections::BTreeSet::new();
    for (m, base, fp) in machines {
        let name = m.name.as_str();
        let pinned = lock.boxes.get(&m.box_name).and_then(|b| b.get(&m.provider));
        let box_key = (m.box_name.clone(), m.provider.clone());
        let box_diff = match (pinned, base) {
            (None, _) => Some(format!(
                "box `{}` ({} `{}`) is not in {FILE_NAME}",
                m.box_name, m.provider, m.base
            )),
            (Some(p), None) => Some(format!(
                "box `{}` ({} `{}`), pinned to {}, is not on this host",
                m.box_name, m.provider, m.base, p.id
            )),
            (Some(p), Some(b)) if p.id != b.id => Some(format!(
                "box `{}` ({} `{}`) is {} on this host, but {FILE_NAME} pins {}",
                m.box_name, m.provider, m.base, b.id, p.id
            )),
            _ => None,
        };
        // Each box is said once, however many machines use it.
        if let Some(d) = box_diff
            && boxes_said.insert(box_key)
        {
            out.push(d);
        }
        match (lock.machines.get(name), fp) {
            (None, _) => out.push(format!("machine `{name}` is not in {FILE_NAME}")),
            (Some(l), _) if l.provider != m.provider || l.box_name != m.box_name => {
                out.push(format!(
                    "machine `{name}` uses box `{}` on {}, but {FILE_NAME} has box `{}` on {}",
                    m.box_name, m.provider, l.box_name, l.provider
                ))
            }
            (Some(l), Some(fp)) if l.fingerprint != *fp => out.push(format!(
                "machine `{name}` differs from {FILE_NAME}: its settings or steps changed (fingerprint {} -> {})",
                l.fingerprint.chars().take(12).collect::<String>(),
                fp.chars().take(12).collect::<String>()
            )),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock_with(fp: &str, id: &str) -> Lock {
        Lock {
            version: 1,
            boxes: BTreeMap::from([(
                "bb".to_string(),
                BTreeMap::from([(
                    "docker".to_string(),
                    BaseIdentity {
                        id: id.to_string(),
                        digest: None,
                        size: None,
                    },
                )]),
            )]),
            machines: BTreeMap::from([(
                "web".to_string(),
                LockedMachine {
                    provider: "docker".into(),
                    box_name: "bb".into(),
                    fingerprint: fp.to_string(),
                },
            )]),
        }
    }

    #[test]
    fn the_file_round_trips_and_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        assert_eq!(read(&path).unwrap(), None);
        let lock = lock_with(
            "ab".repeat(32).as_str(),
            &format!("sha256:{}", "1".repeat(64)),
        );
        write(&path, &lock).unwrap();
        assert_eq!(read(&path).unwrap(), Some(lock.clone()));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# Envfile.lock"), "{text}");
        assert_eq!(text, render(&lock));
        std::fs::write(&path, "version = 7\n").unwrap();
        assert!(read(&path).unwrap_err().to_string().contains("version 7"));
        std::fs::write(&path, "not toml [").unwrap();
        assert!(matches!(read(&path), Err(LockError::Parse { .. })));
    }

    #[test]
    fn a_fingerprint_or_box_id_that_is_not_hex_is_a_clear_error() {
        let good_id = format!("sha256:{}", "1".repeat(64));
        let good_fp = "ab".repeat(32);
        let text = |fp: &str, id: &str| render(&lock_with(fp, id));
        assert!(parse(&text(&good_fp, &good_id), "Envfile.lock").is_ok());
        // A multi-byte character where byte 12 falls inside it (once a slice, a panic).
        let multibyte = format!("{}é{}", "a".repeat(11), "b".repeat(51));
        for (fp, id, says) in [
            (multibyte.as_str(), good_id.as_str(), "fingerprint"),
            ("abc", &good_id, "fingerprint"),
            (&"AB".repeat(32), &good_id, "fingerprint"),
            (&good_fp, "sha256:1", "box `bb` (docker) has id `sha256:1`"),
            (&good_fp, &format!("sha1:{}", "1".repeat(64)), "box `bb`"),
        ] {
            let e = parse(&text(fp, id), "Envfile.lock")
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("Envfile.lock is not a lock file"), "{e}");
            assert!(e.contains(says), "{e}");
            assert!(e.contains("`envrig lock` writes it anew"), "{e}");
        }
        let long = "é".repeat(500);
        let e = parse(&text(&long, &good_id), "L").unwrap_err().to_string();
        assert!(e.len() < 400, "{e}");
    }

    fn load(dir: &Path, src: &str) -> crate::envfile::Envfile {
        let providers = crate::envfile::tests::providers();
        let opts = crate::envfile::LoadOptions {
            env: &|_| None,
            provider_override: None,
            providers: &providers,
            check_paths: true,
        };
        crate::envfile::parse(src, &dir.join("Envfile"), "Envfile", &opts)
            .map(|(e, _)| e)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn differences_name_the_box_or_the_machine() {
        let src = "[boxes.bb]\ndocker = \"x:1\"\n[machines.web]\nbox = \"bb\"\n";
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Envfile"), src).unwrap();
        let env = load(dir.path(), src);
        let m = &env.machines[0];
        let base = BaseIdentity {
            id: "sha256:1".into(),
            digest: None,
            size: None,
        };
        let fp = fingerprint(m, &base, &[], dir.path());
        let lock = lock_with(&fp, "sha256:1");
        assert!(differences(&lock, &[(m, Some(&base), Some(&fp))]).is_empty());
        // A retagged image: the box is named.
        let other = BaseIdentity {
            id: "sha256:2".into(),
            ..base.clone()
        };
        let fp2 = fingerprint(m, &other, &[], dir.path());
        let d = differences(&lock, &[(m, Some(&other), Some(&fp2))]);
        assert!(
            d[0].contains("box `bb`") && d[0].contains("sha256:2"),
            "{d:?}"
        );
        assert!(d[1].contains("machine `web`"), "{d:?}");
        // A fingerprint that is not hex (a lock built in memory, not read) is cut on a
        // character when shown, never inside one.
        let odd = lock_with(
            &format!("{}é{}", "a".repeat(11), "b".repeat(51)),
            "sha256:1",
        );
        let d = differences(&odd, &[(m, Some(&base), Some(&fp))]);
        assert!(d[0].contains("aaaaaaaaaaaé ->"), "{d:?}");
        // Missing here.
        let d = differences(&lock, &[(m, None, None)]);
        assert_eq!(d.len(), 1);
        assert!(d[0].contains("is not on this host"), "{d:?}");
        // A changed step changes the fingerprint; the folder does not.
        let fp3 = fingerprint(m, &base, &["h1".into()], dir.path());
        assert_ne!(fp, fp3);
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::write(elsewhere.path().join("Envfile"), src).unwrap();
        let env2 = load(elsewhere.path(), src);
        assert_eq!(
            fingerprint(&env2.machines[0], &base, &[], elsewhere.path()),
            fp
        );
    }
}

/// What a machine is made of, readably: the inputs of its fingerprint, each as a short
/// value (long ones hashed), keyed by what a user would call them (`box`, `memory`,
/// ``step `setup.sh` ``). Written on the resource (`dev.envrig.inputs`) so that a later
/// `up` can say what changed.
pub fn inputs(
    m: &Machine,
    base: &BaseIdentity,
    steps: &[(String, String)],
    dir: &Path,
) -> BTreeMap<String, String> {
    let short = |v: &str| crate::identity::sha256_hex(v.as_bytes())[..8].to_string();
    let json = |v: &dyn erased::Json| short(&v.json());
    let mut out = BTreeMap::new();
    out.insert("box".to_string(), base.id.chars().take(19).collect());
    out.insert("provider".to_string(), m.provider.clone());
    out.insert(
        "cpus".to_string(),
        m.cpus
            .map(|c| c.to_string())
            .unwrap_or_else(|| "default".into()),
    );
    out.insert(
        "memory".to_string(),
        m.memory
            .map(crate::envfile::values::format_size)
            .unwrap_or_else(|| "default".into()),
    );
    out.insert("hostname".to_string(), m.hostname.clone());
    out.insert("env".to_string(), json(&m.env));
    out.insert("command".to_string(), json(&m.command));
    out.insert("ports".to_string(), json(&m.ports));
    out.insert("synced".to_string(), json(&synced_relative(m, dir)));
    out.insert("options".to_string(), json(&m.options()));
    for (label, hash) in steps {
        out.insert(label.clone(), hash.chars().take(8).collect());
    }
    out
}

/// The inputs that are not steps (steps are keyed by their label).
const SETTINGS: &[&str] = &[
    "box", "provider", "cpus", "memory", "hostname", "env", "command", "ports", "synced", "options",
];

mod erased {
    /// Anything serialisable, as JSON text (for hashing).
    pub trait Json {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> String {
            serde_json::to_string(self).unwrap_or_default()
        }
    }
}

/// Why a machine made from `old` inputs is out of date with `new` ones, one phrase per
/// input: "box changed", "memory 512MiB -> 1GiB", "step `setup.sh` changed", "step `x`
/// added". Empty when nothing readable differs.
pub fn reasons(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in new {
        match old.get(k) {
            Some(o) if o == v => {}
            Some(o) => out.push(match k.as_str() {
                "cpus" | "memory" | "hostname" | "provider" => format!("{k} {o} -> {v}"),
                _ => format!("{k} changed"),
            }),
            None if !SETTINGS.contains(&k.as_str()) => out.push(format!("{k} added")),
            None => out.push(format!("{k} changed")),
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) && !SETTINGS.contains(&k.as_str()) {
            out.push(format!("{k} removed"));
        }
    }
    out
}

#[cfg(test)]
mod reason_tests {
    use super::*;

    #[test]
    fn reasons_name_each_changed_input() {
        let old = BTreeMap::from([
            ("box".to_string(), "sha256:aaa".to_string()),
            ("memory".to_string(), "512MiB".to_string()),
            ("step `setup.sh`".to_string(), "11111111".to_string()),
            ("step `old`".to_string(), "22222222".to_string()),
        ]);
        let new = BTreeMap::from([
            ("box".to_string(), "sha256:bbb".to_string()),
            ("memory".to_string(), "1GiB".to_string()),
            ("step `setup.sh`".to_string(), "33333333".to_string()),
            ("step `new`".to_string(), "44444444".to_string()),
        ]);
        assert_eq!(
            reasons(&old, &new),
            [
                "box changed",
                "memory 512MiB -> 1GiB",
                "step `new` added",
                "step `setup.sh` changed",
                "step `old` removed"
            ]
        );
        assert!(reasons(&new, &new).is_empty());
    }
}
