//! libvirt's QEMU save image (what `virsh save` writes): a header, the domain's XML and a
//! cookie, then QEMU's migration stream. Read to learn what machine a memory image is of, and
//! written anew for another domain: the stream is the same, the description its own.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

/// libvirt's QEMU save image: this magic, then five little-endian words (version, the
/// length of the XML + cookie area, whether it ran, compression, the cookie's offset in
/// that area) and reserved words up to [`HEADER`] bytes.
pub(crate) const MAGIC: &[u8; 16] = b"LibvirtQemudSave";
pub(crate) const HEADER: usize = 92;
/// The most an XML + cookie area may claim (libvirt pads it to 64 KiB).
const MAX_AREA: u32 = 16 << 20;

/// What leads a save image: libvirt's header, the domain's XML and the cookie.
#[derive(Debug)]
pub(crate) struct SaveImage {
    header: [u8; HEADER],
    area: u32,
    pub(crate) xml: String,
    cookie: Vec<u8>,
}

fn invalid(why: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why.into())
}

impl SaveImage {
    /// Reads the head of the save image at `path`; refuses anything but an uncompressed
    /// version-2 image with bounded sizes.
    pub(crate) fn read(path: &Path) -> std::io::Result<SaveImage> {
        Self::read_from(std::fs::File::open(path)?)
    }

    /// [`Self::read`] from a reader at the image's start (a member of an archive).
    pub(crate) fn read_from(mut f: impl Read) -> std::io::Result<SaveImage> {
        let mut header = [0u8; HEADER];
        f.read_exact(&mut header)?;
        if &header[..16] != MAGIC {
            return Err(invalid("not a libvirt save image"));
        }
        let word = |i: usize| {
            let at = 16 + 4 * i;
            u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
        };
        let (version, area, compressed, cookie_at) = (word(0), word(1), word(3), word(4));
        if version != 2 || compressed != 0 {
            return Err(invalid(format!(
                "a save image of version {version}, compression {compressed}: only version 2, uncompressed, is read"
            )));
        }
        if area > MAX_AREA || cookie_at >= area.max(1) {
            return Err(invalid("a save image whose header is out of bounds"));
        }
        let mut data = vec![0u8; area as usize];
        f.read_exact(&mut data)?;
        let xml_end = data.iter().position(|b| *b == 0).unwrap_or(data.len());
        let xml = String::from_utf8(data[..xml_end].to_vec())
            .map_err(|_| invalid("a save image whose XML is not UTF-8"))?;
        let cookie = if cookie_at == 0 {
            Vec::new()
        } else {
            let rest = &data[cookie_at as usize..];
            let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
            let mut c = rest[..end].to_vec();
            c.push(0);
            c
        };
        Ok(SaveImage {
            header,
            area,
            xml,
            cookie,
        })
    }

    /// Writes to `dest` (mode 0600) the image `src` (whose head this is) for a domain
    /// described by `xml`, to be restored paused: the header, `xml` and the cookie, then
    /// `src`'s QEMU stream, copied by the kernel (not synced: it is read once, then removed).
    pub(crate) fn write_for(&self, src: &Path, xml: &str, dest: &Path) -> std::io::Result<()> {
        let mut area = Vec::with_capacity(self.area as usize);
        area.extend_from_slice(xml.as_bytes());
        area.push(0);
        let cookie_at = if self.cookie.is_empty() {
            0
        } else {
            area.len() as u32
        };
        area.extend_from_slice(&self.cookie);
        if area.len() > self.area as usize {
            return Err(invalid(format!(
                "the machine's description ({} bytes) does not fit the saved image's ({} bytes)",
                area.len(),
                self.area
            )));
        }
        area.resize(self.area as usize, 0);
        let mut header = self.header;
        header[24..28].copy_from_slice(&0u32.to_le_bytes()); // restored paused
        header[32..36].copy_from_slice(&cookie_at.to_le_bytes());
        use std::os::unix::fs::OpenOptionsExt;
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(dest)?;
        out.write_all(&header)?;
        out.write_all(&area)?;
        let mut from = std::fs::File::open(src)?;
        from.seek(SeekFrom::Start((HEADER + self.area as usize) as u64))?;
        // Read once by the restore, then removed: no need to reach the disk.
        std::io::copy(&mut from, &mut out).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(xml: &str, cookie: &str, area: u32, stream: &[u8]) -> Vec<u8> {
        let mut h = [0u8; HEADER];
        h[..16].copy_from_slice(MAGIC);
        let mut a = xml.as_bytes().to_vec();
        a.push(0);
        let cookie_at = a.len() as u32;
        a.extend_from_slice(cookie.as_bytes());
        a.push(0);
        a.resize(area as usize, 0);
        for (i, w) in [2u32, area, 1, 0, cookie_at].iter().enumerate() {
            h[16 + 4 * i..20 + 4 * i].copy_from_slice(&w.to_le_bytes());
        }
        [h.to_vec(), a, stream.to_vec()].concat()
    }

    #[test]
    fn a_clone_image_has_its_own_description_the_cookie_and_the_same_stream() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("a.save");
        std::fs::write(
            &src,
            image("<domain>a</domain>", "<cookie/>", 4096, b"QEVM-stream"),
        )
        .unwrap();
        let img = SaveImage::read(&src).unwrap();
        assert_eq!(img.xml, "<domain>a</domain>");
        let dest = dir.path().join("b.save");
        img.write_for(&src, "<domain>clone b</domain>", &dest)
            .unwrap();
        let b = SaveImage::read(&dest).unwrap();
        assert_eq!(b.xml, "<domain>clone b</domain>");
        assert_eq!(b.cookie, b"<cookie/>\0");
        let bytes = std::fs::read(&dest).unwrap();
        assert_eq!(bytes.len(), HEADER + 4096 + 11);
        assert!(bytes.ends_with(b"QEVM-stream"));
        // Restored paused.
        assert_eq!(&bytes[24..28], &0u32.to_le_bytes());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn bad_headers_are_refused_never_panic() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        let good = image("<d/>", "<c/>", 256, b"s");
        let cases: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"LibvirtQemudSave".to_vec(),
            {
                let mut g = good.clone();
                g[0] = b'X';
                g
            },
            {
                let mut g = good.clone();
                g[16] = 3;
                g
            },
            {
                let mut g = good.clone();
                g[28] = 1;
                g
            },
            {
                let mut g = good.clone();
                g[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
                g
            },
            {
                let mut g = good.clone();
                g[32..36].copy_from_slice(&9999u32.to_le_bytes());
                g
            },
            good[..HEADER + 10].to_vec(),
        ];
        for c in cases {
            std::fs::write(&p, &c).unwrap();
            assert!(SaveImage::read(&p).is_err());
        }
        // A description too long for the image is refused.
        std::fs::write(&p, &good).unwrap();
        let img = SaveImage::read(&p).unwrap();
        assert!(
            img.write_for(&p, &"x".repeat(300), &dir.path().join("y"))
                .is_err()
        );
    }
}
