//! The `Envfile.lock` reader: any text is a lock or a clear error, never a panic; a lock
//! that reads renders to a text that reads back the same; comparing it with a machine
//! never panics.

#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use envrig::envfile::{self, Envfile, LoadOptions};
use envrig::lock;
use envrig_provider_api::BaseIdentity;
use libfuzzer_sys::fuzz_target;

const ENVFILE: &str = "[boxes.bb]\ndocker = \"envrig-test/busybox:latest\"\n[machines.web]\nbox = \"bb\"\n[machines.db]\nbox = \"bb\"\n";

fn envfile() -> &'static Envfile {
    static E: OnceLock<Envfile> = OnceLock::new();
    E.get_or_init(|| {
        let providers = vec![envrig_provider_docker::schema()];
        let opts = LoadOptions {
            env: &|_| None,
            provider_override: None,
            providers: &providers,
            check_paths: true,
        };
        let path = Path::new("/nonexistent/envrig-fuzz/Envfile");
        match envfile::parse(ENVFILE, path, "Envfile", &opts) {
            Ok((e, _)) => e,
            Err(e) => panic!("the fuzz target's own Envfile does not load: {e}"),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(l) = lock::parse(text, "Envfile.lock") else {
        return;
    };
    let again = lock::parse(&lock::render(&l), "Envfile.lock");
    assert_eq!(
        again.ok().as_ref(),
        Some(&l),
        "a lock reads back as it was written"
    );
    let env = envfile();
    let base = BaseIdentity {
        id: format!("sha256:{}", "1".repeat(64)),
        digest: None,
        size: None,
    };
    let fp = "2".repeat(64);
    let rows: Vec<_> = env
        .machines
        .iter()
        .flat_map(|m| [(m, Some(&base), Some(fp.as_str())), (m, None, None)])
        .collect();
    let _ = lock::differences(&l, &rows);
});
