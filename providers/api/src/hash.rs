//! sha256 in the one shape envrig writes it everywhere: lower-case hex, a file read in pieces
//! (boxes and archive members are gigabytes; none is read whole into memory).

use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

/// Lower-case hex of some bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The sha256 of `bytes`, in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Copies `from` into `to` in pieces of 1 MiB, hashing what passes: its sha256 in hex and its
/// length. `to` may be [`std::io::sink`] when only the hash is wanted.
pub fn sha256_copy(mut from: impl Read, mut to: impl Write) -> std::io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
        to.write_all(&buf[..n])?;
    }
    Ok((hex(&h.finalize()), size))
}

/// The sha256 of a file's bytes, in hex, and the file's length.
pub fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    sha256_copy(std::fs::File::open(path)?, std::io::sink())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn bytes_readers_and_files_hash_alike() {
        assert_eq!(sha256_hex(b""), EMPTY);
        assert_eq!(hex(&[0, 15, 255]), "000fff");
        let data = vec![7u8; (1 << 20) + 3];
        let mut copy = Vec::new();
        let (h, n) = sha256_copy(data.as_slice(), &mut copy).unwrap();
        assert_eq!(
            (h.as_str(), n),
            (sha256_hex(&data).as_str(), data.len() as u64)
        );
        assert_eq!(copy, data);
        let dir = std::env::temp_dir().join(format!("envrig-hash-{}", std::process::id()));
        std::fs::write(&dir, &data).unwrap();
        let got = sha256_file(&dir);
        let _ = std::fs::remove_file(&dir);
        assert_eq!(got.unwrap(), (sha256_hex(&data), data.len() as u64));
    }
}
