//! What tests, benches and fuzz targets share (the `testing` feature; always in this crate's own
//! unit tests): both ends of a pack in memory ([`Blobs`] as sender and receiver, [`Collect`] as
//! the receiver's sink), deterministic content ([`text`], [`noise`], [`random_bytes`]), and a
//! ground client of a service on the simulated link ([`sim_client`]).
//!
//! The generators make the inputs of the golden fixtures (`tests/golden/`) and of the fuzz
//! seeds: the bytes they give for a length and seed must never change.

use std::collections::HashMap;
use std::io::Read;

use crate::delta::ReadAt;
use crate::id::ContentId;
use crate::manifest::{Entry, Manifest};
use crate::pack::format::{read_varint, write_varint};
use crate::pack::{
    BaseReader, ContentProvider, Item, Limits, ObjectSink, PackError, PackHeader, PrefixPart,
    SegmentHead, TargetReader, read_header,
};
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
            let bytes = self.bytes_of(entry);
            match *part {
                PrefixPart::Entry(_) => prefix.extend_from_slice(&bytes),
                PrefixPart::Range { from, len, .. } => {
                    prefix.extend_from_slice(&bytes[from as usize..(from + len) as usize])
                }
            }
        }
        prefix
    }

    /// The bytes held for a base entry; nothing when not held.
    pub fn bytes_of(&self, entry: &Entry) -> Vec<u8> {
        entry
            .file_id()
            .and_then(|id| self.0.get(&id).cloned())
            .unwrap_or_default()
    }
}

impl ContentProvider for Blobs {
    fn open_target(
        &self,
        path: &VolumePath,
        id: &ContentId,
        _size: u64,
    ) -> Result<Box<dyn TargetReader + '_>, PackError> {
        let bytes = self.0.get(id).ok_or(PackError::SourceChanged {
            path: path.to_string(),
        })?;
        Ok(Box::new(&bytes[..]))
    }

    fn open_base(
        &self,
        id: &ContentId,
        _size: u64,
    ) -> Result<Option<Box<dyn ReadAt + '_>>, PackError> {
        Ok(self
            .0
            .get(id)
            .map(|b| Box::new(b.as_slice()) as Box<dyn ReadAt + '_>))
    }
}

impl BaseReader for Blobs {
    fn open_base(&self, entry: &Entry) -> Result<Box<dyn ReadAt + '_>, PackError> {
        // A base it does not hold reads as nothing: the decoder's own BLAKE3 check must catch
        // it, as it would a base changed on disk.
        Ok(Box::new(self.bytes_of(entry)))
    }
}

/// A pack taken apart: its fixed part and header as they are, and each segment's head and
/// frame, to look inside a pack a test made or to forge one from it.
#[derive(Debug, Clone)]
pub struct PackParts {
    pub start: Vec<u8>,
    pub header: PackHeader,
    pub segments: Vec<(SegmentHead, Vec<u8>)>,
}

impl PackParts {
    /// Splits `pack` (made against `base`). Panics on a pack that does not split.
    pub fn of(pack: &[u8], base: &Manifest) -> PackParts {
        let mut r = pack;
        let header = read_header(&mut r, base, &Limits::default()).expect("a header");
        let start = pack[..pack.len() - r.len()].to_vec();
        let mut segments = Vec::new();
        loop {
            let len = read_varint(&mut r)
                .expect("a segment length")
                .expect("no end");
            if len == 0 {
                break;
            }
            let (raw, rest) = r.split_at(len as usize);
            let head = SegmentHead::decode(raw).expect("a segment head");
            let (frame, rest) = rest.split_at(head.frame_len as usize);
            segments.push((head, frame.to_vec()));
            r = rest;
        }
        assert!(r.is_empty(), "bytes after the end");
        PackParts {
            start,
            header,
            segments,
        }
    }

    /// The pack again, with whatever the test changed in the heads and frames (a head's
    /// `frame_len` is written as it is, so a test can make it lie).
    pub fn join(&self) -> Vec<u8> {
        let mut out = self.start.clone();
        for (head, frame) in &self.segments {
            let raw = head.encode().expect("encodes");
            write_varint(raw.len() as u64, &mut out);
            out.extend_from_slice(&raw);
            out.extend_from_slice(frame);
        }
        out.push(0);
        out
    }

    /// Every head's items, in pack order.
    pub fn items(&self) -> Vec<Item> {
        self.segments
            .iter()
            .flat_map(|(h, _)| h.items.iter().copied())
            .collect()
    }

    /// Every head's prefix parts, in pack order.
    pub fn parts(&self) -> Vec<PrefixPart> {
        self.segments
            .iter()
            .flat_map(|(h, _)| h.prefix.iter().copied())
            .collect()
    }
}

/// Reads target `id` (`size` bytes) through `provider` as the encoder does: its bytes, or
/// [`PackError::SourceChanged`] when they are not `id`.
pub fn read_target(
    provider: &dyn ContentProvider,
    path: &VolumePath,
    id: &ContentId,
    size: u64,
) -> Result<Vec<u8>, PackError> {
    let mut bytes = Vec::new();
    provider
        .open_target(path, id, size)?
        .take(size)
        .read_to_end(&mut bytes)?;
    if ContentId::of(&bytes) != *id {
        return Err(PackError::SourceChanged {
            path: path.to_string(),
        });
    }
    Ok(bytes)
}

/// The bytes of base `id` (`size` bytes) through `provider`, when it holds them.
pub fn read_base(
    provider: &dyn ContentProvider,
    id: &ContentId,
    size: u64,
) -> Result<Option<Vec<u8>>, PackError> {
    let Some(base) = provider.open_base(id, size)? else {
        return Ok(None);
    };
    let mut bytes = vec![0u8; size as usize];
    base.read_exact_at(&mut bytes, 0)?;
    Ok(Some(bytes))
}

/// A receiver's sink that keeps every decoded object in memory, by index.
#[derive(Debug, Default)]
pub struct Collect {
    pub objects: HashMap<u32, Vec<u8>>,
    /// Bytes that came as zeros (where a file sink makes holes), by object index.
    pub zeros: HashMap<u32, u64>,
    open: Option<(u32, Vec<u8>)>,
}

impl Collect {
    /// Object `index` as decoded.
    pub fn get(&self, index: u32) -> Option<&Vec<u8>> {
        self.objects.get(&index)
    }
}

impl ObjectSink for Collect {
    fn begin(&mut self, index: u32, size: u64) -> Result<(), PackError> {
        assert!(self.open.is_none(), "object #{index} begins inside another");
        self.open = Some((index, Vec::with_capacity(size.min(1 << 20) as usize)));
        Ok(())
    }
    fn write(&mut self, bytes: &[u8]) -> Result<(), PackError> {
        self.open
            .as_mut()
            .expect("begun")
            .1
            .extend_from_slice(bytes);
        Ok(())
    }
    fn zeros(&mut self, len: u64) -> Result<(), PackError> {
        let (index, bytes) = self.open.as_mut().expect("begun");
        *self.zeros.entry(*index).or_default() += len;
        bytes.resize(bytes.len() + len as usize, 0);
        Ok(())
    }
    fn end(&mut self) -> Result<(), PackError> {
        let (index, bytes) = self.open.take().expect("begun");
        self.objects.insert(index, bytes);
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
