//! The archive verifier (`import`'s first step): any file is refused with a reason or
//! staged whole, never a panic. An input that does not start with zstd's magic number is
//! compressed first, so the fuzzer explores the tar and manifest checks rather than zstd.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// One scratch folder per process (under `TMPDIR`; `bench/fuzz.sh` removes it).
fn scratch() -> &'static PathBuf {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        tempfile::Builder::new()
            .prefix("envrig-fuzz-archive-")
            .tempdir()
            .expect("a scratch folder")
            .keep()
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = scratch();
    let file = dir.join("in.tar.zst");
    let staging = dir.join("staging");
    let bytes = if data.starts_with(&ZSTD_MAGIC) {
        data.to_vec()
    } else {
        match zstd::encode_all(data, 1) {
            Ok(b) => b,
            Err(_) => return,
        }
    };
    std::fs::write(&file, bytes).expect("write the input");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir(&staging).expect("a staging folder");
    if let Ok(manifest) = envrig::ops::verify_archive(&file, &staging) {
        // Every member is staged: its file and, beside it, its path.
        let staged = std::fs::read_dir(&staging).map_or(0, |d| d.count());
        assert_eq!(
            staged,
            2 * manifest.members.len(),
            "each member staged once"
        );
    }
});
