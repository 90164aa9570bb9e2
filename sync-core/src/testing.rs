//! What tests, benches and fuzz targets share (the `testing` feature; always in this crate's own
//! unit tests): both ends of a pack in memory ([`Blobs`] as sender and receiver, [`Collect`] as
//! the receiver's sink), deterministic content ([`text`], [`noise`], [`random_bytes`]), and a
//! ground client of a service on the simulated link ([`sim_client`]).
//!
//! The generators make the inputs of the golden fixtures (`tests/golden/`) and of the fuzz
//! seeds: the bytes they give for a length and seed must never change.

use std::collections::HashMap;
use std::io::Read;

use crate::id::ContentId;
use crate::manifest::{Entry, Manifest};
use crate::pack::{BaseReader, ContentProvider, ObjectSink, PackError, PrefixPart};
use crate::path::VolumePath;

/// Content by id, on either end of a pack: what the sender encodes from and the receiver's bases.
#[derive(Debug, Default, Clone)]
pub struct Blobs(pub HashMap<ContentId, Vec<u8>>);

impl Blobs {
    /// Blobs holding each of `bodies`.
    pub fn of(bodies: &[&[u8]]) -> Self {
        let mut blobs = Self::default();
        for body in bodies {
            blobs.add(body);
        }
        blobs
    }

    /// Holds `body` and returns its id.
    pub fn add(&mut self, body: &[u8]) -> ContentId {
        let id = ContentId::of(body);
        self.0.insert(id, body.to_vec());
        id
    }

    /// The reference prefix a segment names (`parts` of `base`), from the bases held here,
    /// unchecked: to look inside a pack the test made. Panics on a part outside `base`.
    pub fn prefix(&self, base: &Manifest, parts: &[PrefixPart]) -> Vec<u8> {
        let mut prefix = Vec::new();
        for part in parts {
            let entry = &base.entries()[part.base() as usize];
            let bytes = self.read_base(entry).expect("held in memory");
            match *part {
                PrefixPart::Entry(_) => prefix.extend_from_slice(&bytes),
                PrefixPart::Range { from, len, .. } => {
                    prefix.extend_from_slice(&bytes[from as usize..(from + len) as usize])
                }
            }
        }
        prefix
    }
}

impl ContentProvider for Blobs {
    fn target(&self, path: &VolumePath, id: &ContentId) -> Result<Vec<u8>, PackError> {
        self.0.get(id).cloned().ok_or(PackError::SourceChanged {
            path: path.to_string(),
        })
    }

    fn base(&self, id: &ContentId) -> Result<Option<Vec<u8>>, PackError> {
        Ok(self.0.get(id).cloned())
    }
}

impl BaseReader for Blobs {
    fn read_base(&self, entry: &Entry) -> Result<Vec<u8>, PackError> {
        // A base it does not hold reads as nothing: the decoder's own BLAKE3 check must catch
        // it, as it would a base changed on disk.
        Ok(entry
            .file_id()
            .and_then(|id| self.0.get(&id).cloned())
            .unwrap_or_default())
    }
}

/// A receiver's sink that keeps every decoded object in memory, by index.
#[derive(Debug, Default)]
pub struct Collect(pub HashMap<u32, Vec<u8>>);

impl ObjectSink for Collect {
    fn put(&mut self, index: u32, data: &mut dyn Read) -> Result<(), PackError> {
        let mut v = Vec::new();
        data.read_to_end(&mut v)?;
        self.0.insert(index, v);
        Ok(())
    }
}

/// Deterministic text of `lines` lines, about 25 bytes each, different for each `seed`: it
/// compresses, and two seeds share most of their words.
pub fn text(lines: usize, seed: u32) -> Vec<u8> {
    (0..lines)
        .map(|i| format!("line {} of file {seed}\n", i * 7 + seed as usize))
        .collect::<String>()
        .into_bytes()
}

/// `len` deterministic bytes that do not compress (xorshift64, one byte a step); seeds that
/// differ only in their lowest bit give the same bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `len` deterministic bytes that do not compress (SplitMix64, eight bytes a step): for
/// megabytes of file content, where [`noise`] would be slow.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A ground client of `svc` over a new connection on the simulated link `net`, with the node's
/// end served as the daemon serves one (`onboard_idle` its idle timeout) and the ground's idle
/// timeout `ground_idle`.
pub async fn sim_client(
    net: &crate::link::sim::SimNet,
    svc: std::sync::Arc<crate::onboard::OnboardService>,
    key: &crate::wire::LinkKey,
    onboard_idle: std::time::Duration,
    ground_idle: std::time::Duration,
) -> Result<crate::ground::Client<crate::link::sim::SimStream>, crate::ground::GroundError> {
    let (ground_end, onboard_end) = net.connect();
    let node_key = key.clone();
    tokio::spawn(async move {
        let opts = crate::link::ServeOptions {
            idle_timeout: onboard_idle,
            ..crate::link::ServeOptions::default()
        };
        let _ = crate::link::serve_connection(onboard_end, svc, &node_key, &opts).await;
    });
    let link = crate::link::Link::connect(ground_end, key, ground_idle).await?;
    crate::ground::Client::start(link).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generators' first bytes, pinned: golden fixtures and fuzz seeds are made from them.
    #[test]
    fn generators_give_the_same_bytes_as_ever() {
        assert_eq!(text(2, 3), b"line 3 of file 3\nline 10 of file 3\n");
        assert_eq!(
            noise(12, 7),
            [199, 196, 31, 227, 130, 69, 209, 164, 43, 69, 245, 18]
        );
        assert_eq!(noise(12, 6), noise(12, 7));
        assert_eq!(
            random_bytes(12, 9),
            [100, 96, 112, 190, 254, 82, 175, 174, 98, 234, 175, 135]
        );
        assert_eq!(random_bytes(5, 9), random_bytes(12, 9)[..5]);
    }
}
