//! The compressed blobs that messages carry as bytes, and their one encoding. Both ends encode
//! and decode them here, so the layout of each is written once.
//!
//! | blob | carried in | holds |
//! |---|---|---|
//! | full manifest | `ManifestReply` (`ManifestBody::Full`), `PullRequest::base` | zstd of [`Manifest::encode`] |
//! | manifest delta | `ManifestReply` (`ManifestBody::Delta`) | zstd of postcard `Vec<Change>` |
//! | signatures | `Signatures::blob` | zstd of postcard `Vec<(u32, Vec<u8>)>`: entry index, serialized rsync signature |
//!
//! Every blob is zstd at level [`LEVEL`], one frame. An empty `PullRequest::base` is not a
//! blob: it says that no manifest was sent.
//!
//! # Security
//! A blob comes from the peer and zstd expands it by up to about 32,000 times. Every decoder
//! here takes a cap on the decompressed size from its caller (the receiver decides what it will
//! hold in memory) and stops reading at one byte past it: memory never follows what a blob
//! declares.

use std::io::Read;

use crate::manifest::{Change, Manifest, ManifestError};

/// zstd level of every blob: they are small and cross a scarce link, so time buys bytes.
pub const LEVEL: i32 = 19;

/// An rsync signature of a volume entry, by the entry's index in the manifest both ends know.
pub type EntrySignature = (u32, Vec<u8>);

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// not zstd, or cut short
    #[error("the blob does not decompress")]
    Corrupt,
    /// more bytes than the receiver takes
    #[error("the blob decompresses to more than {cap} bytes")]
    TooLarge { cap: usize },
    /// a manifest that does not decode or breaks a manifest rule
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// decompressed content that is not what the blob holds
    #[error("the blob does not hold {0}")]
    Malformed(&'static str),
}

/// The blob of a whole manifest (`ManifestBody::Full`, `PullRequest::base`).
pub fn encode_manifest(manifest: &Manifest) -> Vec<u8> {
    compress(&manifest.encode())
}

/// The blob of the changes from one manifest to another (`ManifestBody::Delta`).
pub fn encode_changes(changes: &[Change]) -> Vec<u8> {
    compress(&postcard::to_stdvec(changes).expect("changes always serialize"))
}

/// The blob of rsync signatures of manifest entries (`Message::Signatures`).
pub fn encode_signatures(signatures: &[EntrySignature]) -> Vec<u8> {
    compress(&postcard::to_stdvec(signatures).expect("signatures always serialize"))
}

/// A whole manifest, decompressed to at most `cap` bytes.
pub fn decode_manifest(blob: &[u8], cap: usize) -> Result<Manifest, BlobError> {
    Ok(Manifest::decode(&decompress(blob, cap)?)?)
}

/// A manifest delta's changes, decompressed to at most `cap` bytes.
pub fn decode_changes(blob: &[u8], cap: usize) -> Result<Vec<Change>, BlobError> {
    postcard::from_bytes(&decompress(blob, cap)?).map_err(|_| BlobError::Malformed("changes"))
}

/// Signatures by entry index, decompressed to at most `cap` bytes.
pub fn decode_signatures(blob: &[u8], cap: usize) -> Result<Vec<EntrySignature>, BlobError> {
    postcard::from_bytes(&decompress(blob, cap)?).map_err(|_| BlobError::Malformed("signatures"))
}

fn compress(raw: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(raw, LEVEL).expect("in-memory zstd")
}

/// The bytes of a blob, at most `cap` of them. Read as a stream: nothing is allocated ahead for
/// the cap, and the read stops at its first byte past it.
pub fn decompress(blob: &[u8], cap: usize) -> Result<Vec<u8>, BlobError> {
    let mut out = Vec::new();
    let dec = zstd::stream::read::Decoder::new(blob).map_err(|_| BlobError::Corrupt)?;
    dec.take(cap as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|_| BlobError::Corrupt)?;
    if out.len() > cap {
        return Err(BlobError::TooLarge { cap });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::tests::{dir, file};
    use proptest::prelude::*;

    fn sample() -> Manifest {
        Manifest::new(vec![
            dir("logs"),
            file("logs/a.log", b"a"),
            file("r.csv", b"1,2"),
        ])
        .unwrap()
    }

    /// The encoding crossed the link before it lived here: it must stay byte for byte what the
    /// peers of earlier builds send and expect.
    #[test]
    fn blobs_are_zstd_level_19_of_their_content() {
        let m = sample();
        assert_eq!(
            encode_manifest(&m),
            zstd::bulk::compress(&m.encode(), 19).unwrap()
        );
        let changes = crate::manifest::diff(&Manifest::default(), &m);
        assert_eq!(
            encode_changes(&changes),
            zstd::bulk::compress(&postcard::to_stdvec(&changes).unwrap(), 19).unwrap()
        );
        let sigs = vec![(3u32, vec![1u8, 2, 3])];
        assert_eq!(
            encode_signatures(&sigs),
            zstd::bulk::compress(&postcard::to_stdvec(&sigs).unwrap(), 19).unwrap()
        );
    }

    #[test]
    fn a_manifest_and_its_changes_come_back() {
        let m = sample();
        assert_eq!(decode_manifest(&encode_manifest(&m), 1 << 20).unwrap(), m);
        let changes = crate::manifest::diff(&Manifest::default(), &m);
        assert_eq!(
            decode_changes(&encode_changes(&changes), 1 << 20).unwrap(),
            changes
        );
    }

    #[test]
    fn a_blob_over_the_cap_is_refused_and_one_at_it_is_not() {
        let raw = vec![0u8; 10_000];
        let blob = compress(&raw);
        assert_eq!(decompress(&blob, 10_000).unwrap(), raw);
        assert!(matches!(
            decompress(&blob, 9_999),
            Err(BlobError::TooLarge { cap: 9_999 })
        ));
    }

    #[test]
    fn what_is_not_a_blob_is_refused() {
        assert!(matches!(
            decompress(b"not zstd at all", 1 << 20),
            Err(BlobError::Corrupt)
        ));
        let blob = compress(&[7u8; 1000]);
        assert!(matches!(
            decompress(&blob[..blob.len() - 3], 1 << 20),
            Err(BlobError::Corrupt)
        ));
        assert!(matches!(
            decode_signatures(&compress(&[0xff; 8]), 1 << 20),
            Err(BlobError::Malformed("signatures"))
        ));
    }

    proptest! {
        #[test]
        fn signatures_round_trip(sigs in proptest::collection::vec(
            (any::<u32>(), proptest::collection::vec(any::<u8>(), 0..64)), 0..16)) {
            let back = decode_signatures(&encode_signatures(&sigs), 1 << 20).unwrap();
            prop_assert_eq!(back, sigs);
        }

        #[test]
        fn any_bytes_decode_or_fail_within_the_cap(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(out) = decompress(&data, 4096) {
                prop_assert!(out.len() <= 4096);
            }
        }
    }
}
