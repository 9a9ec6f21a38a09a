//! The Envfile parser: any text either loads or is a report of diagnostics, and either way
//! everything envrig then does with it without an engine (render the report, place each
//! diagnostic, fingerprint each machine, order the machines) never panics.

#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use envrig::envfile::{self, LoadError, LoadOptions, Report};
use envrig_provider_api::{BaseIdentity, Schema};
use libfuzzer_sys::fuzz_target;

/// The providers' own schemas, as their registry gives them (libvirt's from its crate: the
/// plugin's hello says the same).
fn providers() -> &'static Vec<Schema> {
    static P: OnceLock<Vec<Schema>> = OnceLock::new();
    P.get_or_init(|| {
        vec![
            envrig_provider_docker::schema(),
            envrig_provider_libvirt::schema(),
        ]
    })
}

/// What envrig shows of a report: both renderings, and each diagnostic's line and column.
fn show(report: &Report) {
    let _ = report.render(false);
    let _ = report.render(true);
    for d in &report.diagnostics {
        let _ = envfile::line_col(&report.source, d.span.start);
        let _ = envfile::line_col(&report.source, d.span.end);
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    // `${VAR}` finds short names set, long ones unset.
    let env = |name: &str| (name.len() <= 4).then(|| format!("v{name}"));
    // The folder does not exist: nothing is read beside the Envfile.
    let path = Path::new("/nonexistent/envrig-fuzz/Envfile");
    for provider_override in [None, Some("libvirt")] {
        let opts = LoadOptions {
            env: &env,
            provider_override,
            providers: providers(),
            check_paths: true,
        };
        match envfile::parse(source, path, "Envfile", &opts) {
            Ok((env, report)) => {
                show(&report);
                let base = BaseIdentity {
                    id: format!("sha256:{}", "0".repeat(64)),
                    digest: None,
                    size: None,
                };
                for m in &env.machines {
                    let fp = envrig::lock::fingerprint(m, &base, &[], &env.dir);
                    assert_eq!(fp.len(), 64);
                    let _ = envrig::lock::inputs(m, &base, &[], &env.dir);
                }
                let all: Vec<_> = env.machines.iter().collect();
                let waves = envrig::ops::waves(&all);
                assert_eq!(
                    waves.iter().map(Vec::len).sum::<usize>(),
                    all.len(),
                    "every machine starts in exactly one wave"
                );
            }
            Err(LoadError::Invalid(report)) => {
                assert!(report.has_errors(), "an invalid Envfile has an error");
                show(&report);
            }
            Err(LoadError::Io { .. }) => {}
        }
    }
});
