//! Finding, for a piece of a large target, the stretches of its base that match it, without
//! holding either whole: content-defined chunks (a gear hash picks boundaries from the bytes
//! themselves, so the same content gets the same boundaries at any offset) are indexed by hash
//! over the base once, then each piece of the target is chunked and looked up. The matches say
//! where in the base the piece's content lies, even after an insertion shifted everything, and
//! those stretches (with a margin around them) become the zstd prefix of the piece's segment.
//!
//! The index is small (16 bytes and a hash-map slot per chunk of about 8 KiB: about 6 MiB for a
//! 2 GiB base), and the base is read through a fixed buffer.

use std::collections::HashMap;

use crate::delta::ReadAt;

/// Boundaries where the low bits of the gear hash are zero: chunks of about 8 KiB.
const MASK: u64 = (1 << 13) - 1;
const MIN_CHUNK: usize = 2 * 1024;
const MAX_CHUNK: usize = 64 * 1024;
/// The base is read through a buffer of this size.
const READ_BUF: usize = 1 << 20;

/// A gear table: 256 fixed pseudo-random words (SplitMix64), the same on every machine.
const GEAR: [u64; 256] = gear();

const fn gear() -> [u64; 256] {
    let mut t = [0u64; 256];
    let mut s = 0x6a09_e667_f3bc_c908u64;
    let mut i = 0;
    while i < 256 {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        t[i] = z ^ (z >> 31);
        i += 1;
    }
    t
}

/// Cuts a stream into content-defined chunks; fed in any slices, it gives the same chunks.
#[derive(Default)]
struct Chunker {
    gear: u64,
    len: usize,
    hasher: Option<blake3::Hasher>,
}

impl Chunker {
    /// Feeds `data`; calls `done(len, hash)` for every chunk that ends inside it.
    fn feed(&mut self, mut data: &[u8], done: &mut dyn FnMut(usize, u64)) {
        while !data.is_empty() {
            let mut cut = None;
            for (i, &b) in data.iter().enumerate() {
                self.gear = (self.gear << 1).wrapping_add(GEAR[b as usize]);
                let len = self.len + i + 1;
                if (len >= MIN_CHUNK && self.gear & MASK == 0) || len >= MAX_CHUNK {
                    cut = Some(i + 1);
                    break;
                }
            }
            let take = cut.unwrap_or(data.len());
            self.hasher
                .get_or_insert_with(blake3::Hasher::new)
                .update(&data[..take]);
            self.len += take;
            data = &data[take..];
            if cut.is_some() {
                self.emit(done);
            }
        }
    }

    /// Ends the last chunk, if any bytes are in it.
    fn finish(&mut self, done: &mut dyn FnMut(usize, u64)) {
        if self.len > 0 {
            self.emit(done);
        }
    }

    fn emit(&mut self, done: &mut dyn FnMut(usize, u64)) {
        let hash = self.hasher.take().expect("bytes were fed").finalize();
        let word = u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"));
        done(self.len, word);
        self.len = 0;
        self.gear = 0;
    }
}

/// Where each chunk of a base starts, by the chunk's hash (the first occurrence of a repeated
/// chunk).
pub struct BaseIndex {
    chunks: HashMap<u64, u64>,
    len: u64,
}

impl BaseIndex {
    /// Indexes the first `len` bytes of `base`, read through a fixed buffer.
    pub fn build(base: &(impl ReadAt + ?Sized), len: u64) -> std::io::Result<BaseIndex> {
        let mut chunks = HashMap::new();
        let mut chunker = Chunker::default();
        let mut buf = vec![0u8; READ_BUF.min(len as usize).max(1)];
        let (mut at, mut start) = (0u64, 0u64);
        let mut record = |n: usize, hash: u64| {
            chunks.entry(hash).or_insert(start);
            start += n as u64;
        };
        while at < len {
            let n = (len - at).min(buf.len() as u64) as usize;
            base.read_exact_at(&mut buf[..n], at)?;
            chunker.feed(&buf[..n], &mut record);
            at += n as u64;
        }
        chunker.finish(&mut record);
        Ok(BaseIndex { chunks, len })
    }

    /// The stretches of the base that `piece` matches, each widened by `margin` on both sides,
    /// joined where they touch, at most `budget` bytes in all (the ones covering the most
    /// matched bytes first), in base order: `(from, len)`.
    pub fn ranges_for(&self, piece: &[u8], margin: u64, budget: u64) -> Vec<(u64, u64)> {
        let mut matched: Vec<(u64, u64)> = Vec::new();
        let mut chunker = Chunker::default();
        let mut record = |n: usize, hash: u64| {
            if let Some(&from) = self.chunks.get(&hash) {
                matched.push((from, n as u64));
            }
        };
        chunker.feed(piece, &mut record);
        chunker.finish(&mut record);
        // Widened and joined, with the matched bytes each stretch covers.
        let mut widened: Vec<(u64, u64, u64)> = matched
            .iter()
            .map(|&(from, n)| {
                let start = from.saturating_sub(margin);
                let end = (from + n + margin).min(self.len);
                (start, end, n)
            })
            .collect();
        widened.sort_unstable();
        let mut joined: Vec<(u64, u64, u64)> = Vec::new();
        for (start, end, n) in widened {
            match joined.last_mut() {
                Some(last) if start <= last.1 => {
                    last.1 = last.1.max(end);
                    last.2 += n;
                }
                _ => joined.push((start, end, n)),
            }
        }
        // Most matched bytes first, within the budget; then back in base order.
        joined.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
        let mut kept = Vec::new();
        let mut total = 0u64;
        for (start, end, _) in joined {
            let len = (end - start).min(budget - total);
            if len == 0 {
                break;
            }
            kept.push((start, len));
            total += len;
        }
        kept.sort_unstable();
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::random_bytes;

    fn chunk_lens(data: &[u8], step: usize) -> Vec<usize> {
        let mut lens = Vec::new();
        let mut c = Chunker::default();
        for part in data.chunks(step) {
            c.feed(part, &mut |n, _| lens.push(n));
        }
        c.finish(&mut |n, _| lens.push(n));
        lens
    }

    #[test]
    fn chunks_do_not_depend_on_how_the_bytes_are_fed() {
        let data = random_bytes(1 << 20, 3);
        let whole = chunk_lens(&data, data.len());
        assert_eq!(chunk_lens(&data, 1000), whole);
        assert_eq!(chunk_lens(&data, 1), whole[..].to_vec());
        assert_eq!(whole.iter().sum::<usize>(), data.len());
        assert!(whole.iter().all(|&n| n <= MAX_CHUNK));
        // About 8 KiB on average, after the 2 KiB minimum.
        let avg = data.len() / whole.len();
        assert!((6_000..16_000).contains(&avg), "average chunk {avg}");
    }

    /// After 1 MiB inserted at the start, the target's second half is found 1 MiB earlier in
    /// the base.
    #[test]
    fn a_shifted_piece_is_found_where_it_came_from() {
        let base = random_bytes(8 << 20, 1);
        let mut target = random_bytes(1 << 20, 2);
        target.extend_from_slice(&base);
        let index = BaseIndex::build(&base[..], base.len() as u64).unwrap();
        let piece = &target[5 << 20..6 << 20]; // base bytes 4 MiB..5 MiB
        let ranges = index.ranges_for(piece, 64 * 1024, 8 << 20);
        assert_eq!(ranges.len(), 1, "{ranges:?}");
        let (from, len) = ranges[0];
        assert!(from <= 4 << 20 && from + len >= 5 << 20, "{ranges:?}");
        assert!(len <= (1 << 20) + 2 * 64 * 1024 + 2 * MAX_CHUNK as u64);
        // Nothing matches new bytes.
        assert!(index.ranges_for(&target[..1 << 20], 0, 8 << 20).len() <= 1);
    }

    #[test]
    fn the_budget_keeps_the_best_matched_stretches() {
        let base = random_bytes(4 << 20, 5);
        let index = BaseIndex::build(&base[..], base.len() as u64).unwrap();
        // A piece made of two far-apart stretches of the base: 512 KiB and 64 KiB.
        let mut piece = base[100_000..100_000 + (512 << 10)].to_vec();
        piece.extend_from_slice(&base[3_000_000..3_000_000 + (64 << 10)]);
        let all = index.ranges_for(&piece, 0, u64::MAX);
        assert_eq!(all.len(), 2, "{all:?}");
        let kept = index.ranges_for(&piece, 0, 600 << 10);
        let total: u64 = kept.iter().map(|r| r.1).sum();
        assert!(total <= 600 << 10);
        assert!(
            kept[0].0 < 1_000_000,
            "the larger stretch is kept first: {kept:?}"
        );
    }
}
