//! Deltas as pure functions over byte slices.
//!
//! - [`zstd_ref`]: the sender holds the base. The bases of a whole group of files, concatenated,
//!   become zstd's reference prefix ("patch-from") and the targets are compressed as one stream,
//!   so matches may come from any base and small files share one frame's overhead.
//! - [`rsync`]: only the receiver holds the base. It sends a fast_rsync signature; the sender
//!   answers with copy/literal operations. fast_rsync hashes with MD4, so nothing it produces is
//!   trusted until the result's BLAKE3 matches.

pub mod rsync;
pub mod zstd_ref;

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
    /// the result is not the size the sender declared
    #[error("patched result has {actual} bytes, {expected} were declared")]
    SizeMismatch { expected: u64, actual: u64 },
}
