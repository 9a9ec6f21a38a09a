//! Bytes into and out of a volume of a remote host through libvirt's streams
//! (`virStorageVolUpload`, `virStorageVolDownload`), hashed on the way; and waiting for a
//! volume another envrig is still copying into place.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use envrig_provider_api::Result;
use virt::connect::Connect;
use virt::error::ErrorNumber;
use virt::storage_vol::StorageVol;
use virt::stream::Stream;

use super::known;
use crate::error::{engine, io};

/// A stream's piece: libvirt's remote protocol carries at most 256 KiB of data a message.
const PIECE: usize = 256 * 1024;

/// How long a box's volume that another envrig is copying into place may take to settle.
const SETTLE_LIMIT: Duration = Duration::from_secs(600);

/// Writes what it is given into a stream, a piece at a time.
struct Sending<'a>(&'a Stream);

impl Write for Sending<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(PIECE);
        let sent = self.0.send(&buf[..n]).map_err(std::io::Error::other)?;
        usize::try_from(sent).map_err(|_| std::io::Error::other("the stream took no bytes"))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads a stream until its end.
struct Receiving<'a>(&'a Stream);

impl Read for Receiving<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(PIECE);
        let got = self.0.recv(&mut buf[..n]).map_err(std::io::Error::other)?;
        usize::try_from(got).map_err(|_| std::io::Error::other("the stream would block"))
    }
}

/// Sends `len` bytes of `from` into `vol` from its start (libvirt's `virStorageVolUpload`):
/// the sha256 of what was sent and how many bytes.
pub(super) fn upload(
    c: &Connect,
    vol: &StorageVol,
    from: impl Read,
    len: u64,
) -> Result<(String, u64)> {
    let stream = Stream::new(c, 0).map_err(|e| engine("open an upload stream", e))?;
    vol.upload(&stream, 0, len, 0)
        .map_err(|e| engine("start the upload", e))?;
    match envrig_provider_api::hash::sha256_copy(from.take(len), Sending(&stream)) {
        Ok(sent) => {
            stream
                .finish()
                .map_err(|e| engine("finish the upload", e))?;
            Ok(sent)
        }
        Err(e) => {
            let _ = stream.abort();
            Err(io("upload", e))
        }
    }
}

/// The bytes of `vol` from `offset` to its end, handed to `to`: their sha256 and how many.
pub(super) fn download(
    c: &Connect,
    vol: &StorageVol,
    offset: u64,
    to: impl Write,
) -> Result<(String, u64)> {
    let stream = Stream::new(c, 0).map_err(|e| engine("open a download stream", e))?;
    vol.download(&stream, offset, 0, 0)
        .map_err(|e| engine("start the download", e))?;
    match envrig_provider_api::hash::sha256_copy(Receiving(&stream), to) {
        Ok(got) => {
            stream
                .finish()
                .map_err(|e| engine("finish the download", e))?;
            Ok(got)
        }
        Err(e) => {
            let _ = stream.abort();
            Err(io("download", e))
        }
    }
}

/// Waits until `vol` is no longer being written by libvirt (a copy another envrig started:
/// libvirt shows the volume at its full size at once, and refuses to read it until the copy
/// is done), within [`SETTLE_LIMIT`].
pub(super) fn settle(c: &Connect, vol: &StorageVol, name: &str) -> Result<()> {
    let t0 = Instant::now();
    loop {
        let stream = Stream::new(c, 0).map_err(|e| engine("open a download stream", e))?;
        match vol.download(&stream, 0, 1, 0) {
            Ok(()) => {
                let mut one = Vec::new();
                let _ = Receiving(&stream).read_to_end(&mut one);
                let _ = stream.finish();
                return Ok(());
            }
            Err(e) if known(&e, ErrorNumber::OperationInvalid) && t0.elapsed() < SETTLE_LIMIT => {
                tracing::debug!("volume {name} is still being copied into place: {e}");
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => return Err(engine(format!("read volume `{name}`"), e)),
        }
    }
}
