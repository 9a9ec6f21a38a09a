//! The header of a qcow2 disk image, read only to refuse an imported disk that reaches
//! beyond itself: a backing file name or an external data file makes QEMU open a host file
//! that the archive's author chose (any disk, `/etc/shadow`), so such a disk is never
//! loaded. Parsing takes any bytes and never panics.
//!
//! Layout (big-endian; QEMU's `docs/interop/qcow2.txt`): magic `QFI\xfb` at 0, version
//! (u32) at 4, backing_file_offset (u64) at 8, backing_file_size (u32) at 16; version 3
//! adds incompatible_features (u64) at 72, whose bit 2 says an external data file is used.

use std::io::Read;
use std::path::Path;

const MAGIC: &[u8; 4] = b"QFI\xfb";
/// Bytes read: the version 3 header up to and including its length field.
pub const HEADER_LEN: usize = 104;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes(s.try_into().ok()?))
}

fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    Some(u64::from_be_bytes(s.try_into().ok()?))
}

/// Why a disk image is refused, or `Ok` for a self-contained qcow2 (version 2 or 3).
pub fn check_header(b: &[u8]) -> Result<(), String> {
    if b.get(..4) != Some(MAGIC.as_slice()) {
        return Err("it is not a qcow2 image".into());
    }
    let version = be_u32(b, 4).ok_or("its qcow2 header is cut short")?;
    if !(2..=3).contains(&version) {
        return Err(format!(
            "it is a qcow2 image of version {version}, not 2 or 3"
        ));
    }
    let backing_offset = be_u64(b, 8).ok_or("its qcow2 header is cut short")?;
    let backing_size = be_u32(b, 16).ok_or("its qcow2 header is cut short")?;
    if backing_offset != 0 || backing_size != 0 {
        return Err(
            "it names a backing file: QEMU would read a file of this host that the archive chose"
                .into(),
        );
    }
    if version == 3 {
        let incompatible = be_u64(b, 72).ok_or("its qcow2 header is cut short")?;
        if incompatible & INCOMPAT_DATA_FILE != 0 {
            return Err(
                "it uses an external data file: QEMU would open a file of this host that the archive chose"
                    .into(),
            );
        }
    }
    Ok(())
}

/// The size of the disk a qcow2 header's image gives a guest (its `size`, a u64 at 24).
pub fn virtual_size(b: &[u8]) -> Option<u64> {
    be_u64(b, 24)
}

/// Reads at most [`HEADER_LEN`] bytes from `r`.
fn header_of(r: impl Read) -> std::io::Result<Vec<u8>> {
    let mut b = Vec::with_capacity(HEADER_LEN);
    r.take(HEADER_LEN as u64).read_to_end(&mut b)?;
    Ok(b)
}

/// Checks the disk image at `path`: `Ok(Err(why))` when it is refused.
pub fn check_file(path: &Path) -> std::io::Result<Result<(), String>> {
    Ok(check_header(&header_of(std::fs::File::open(path)?)?))
}

/// Checks the `disk.qcow2` inside a disk export (the tar `snapshot_export` writes), without
/// unpacking it: `Ok(Err(why))` when it is refused.
pub fn check_export_tar(path: &Path) -> std::io::Result<Result<(), String>> {
    let mut archive = tar::Archive::new(std::fs::File::open(path)?);
    for entry in archive.entries()? {
        let entry = entry?;
        if entry.path()?.to_string_lossy() != "disk.qcow2" {
            continue;
        }
        if !matches!(
            entry.header().entry_type(),
            tar::EntryType::Regular | tar::EntryType::GNUSparse
        ) {
            return Ok(Err("its disk.qcow2 is a link or special file".into()));
        }
        return Ok(check_header(&header_of(entry)?));
    }
    Ok(Err("it holds no disk.qcow2".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version 3 header with `backing` as (offset, size) and `incompatible` features.
    fn header(version: u32, backing: (u64, u32), incompatible: u64) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN];
        b[..4].copy_from_slice(MAGIC);
        b[4..8].copy_from_slice(&version.to_be_bytes());
        b[8..16].copy_from_slice(&backing.0.to_be_bytes());
        b[16..20].copy_from_slice(&backing.1.to_be_bytes());
        b[72..80].copy_from_slice(&incompatible.to_be_bytes());
        b
    }

    #[test]
    fn a_self_contained_qcow2_is_accepted() {
        assert_eq!(check_header(&header(3, (0, 0), 0)), Ok(()));
        assert_eq!(check_header(&header(2, (0, 0), 0)), Ok(()));
        // Compression type (bit 3) and extended L2 (bit 4) reach no host file.
        assert_eq!(check_header(&header(3, (0, 0), 0b11000)), Ok(()));
    }

    #[test]
    fn a_backing_file_or_external_data_file_is_refused() {
        let e = check_header(&header(3, (104, 11), 0)).unwrap_err();
        assert!(e.contains("backing file"), "{e}");
        assert!(check_header(&header(2, (0, 3), 0)).is_err());
        assert!(check_header(&header(2, (512, 0), 0)).is_err());
        let e = check_header(&header(3, (0, 0), INCOMPAT_DATA_FILE)).unwrap_err();
        assert!(e.contains("data file"), "{e}");
    }

    #[test]
    fn any_bytes_are_judged_without_panicking() {
        assert!(check_header(b"").is_err());
        assert!(check_header(b"QFI").is_err());
        assert!(check_header(b"QFI\xfb\0\0\0\x03").is_err());
        assert!(check_header(&header(3, (0, 0), 0)[..40]).is_err());
        assert!(check_header(&header(7, (0, 0), 0)).is_err());
        assert!(check_header(&[0xffu8; 4096]).is_err());
        for n in 0..HEADER_LEN {
            let _ = check_header(&header(3, (1, 1), 4)[..n]);
        }
    }

    #[test]
    fn the_disk_inside_an_export_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, disk: &[u8]| {
            let path = dir.path().join(name);
            let mut t = tar::Builder::new(std::fs::File::create(&path).unwrap());
            let mut h = tar::Header::new_gnu();
            h.set_size(disk.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            t.append_data(&mut h, "disk.qcow2", disk).unwrap();
            t.finish().unwrap();
            path
        };
        let good = write("good.tar", &header(3, (0, 0), 0));
        assert_eq!(check_export_tar(&good).unwrap(), Ok(()));
        let bad = write("bad.tar", &header(3, (104, 10), 0));
        assert!(check_export_tar(&bad).unwrap().is_err());
        let empty = dir.path().join("empty.tar");
        tar::Builder::new(std::fs::File::create(&empty).unwrap())
            .finish()
            .unwrap();
        assert!(check_export_tar(&empty).unwrap().is_err());
    }
}
