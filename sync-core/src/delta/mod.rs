//! Deltas over byte slices, and over bases read in stretches ([`ReadAt`]) so that no side
//! holds a whole base.
//!
//! - [`zstd_ref`]: the sender holds the base. The bases of a whole group of files, concatenated,
//!   become zstd's reference prefix ("patch-from") and the targets are compressed as one stream,
//!   so matches may come from any base and small files share one frame's overhead.
//! - [`rsync`]: only the receiver holds the base. It sends a fast_rsync signature; the sender
//!   answers with copy/literal operations. fast_rsync hashes with MD4, so nothing it produces is
//!   trusted until the result's BLAKE3 matches.

pub mod rsync;
pub mod zstd_ref;

/// Random access to a base's bytes: a file, read in stretches (`pread`), or bytes in memory.
/// Lets both ends reach any stretch of a base of any size without holding it.
pub trait ReadAt {
    /// Reads into `buf` from `offset`; fewer bytes only at the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize>;

    /// Fills `buf` from `offset`, or fails with `UnexpectedEof`.
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, offset) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl ReadAt for std::fs::File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        (**self).read_at(buf, offset)
    }
}

impl ReadAt for Vec<u8> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        self.as_slice().read_at(buf, offset)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    /// zstd failed (or the data was not a zstd frame)
    #[error("zstd: {0}")]
    Zstd(#[from] std::io::Error),
    /// a signature that does not parse
    #[error("rsync signature is malformed")]
    BadSignature,
    /// fast_rsync could not diff
    #[error("rsync diff: {0}")]
    Diff(String),
    /// a delta that does not apply to its base, or would grow past its declared size
    #[error("rsync patch: {0}")]
    Apply(String),
    /// a base could not be read while a delta was applied
    #[error("reading the base: {0}")]
    Base(std::io::Error),
    /// the applied result could not be written
    #[error("writing the result: {0}")]
    Output(std::io::Error),
    /// the result is not the size the sender declared
    #[error("patched result has {actual} bytes, {expected} were declared")]
    SizeMismatch { expected: u64, actual: u64 },
}
