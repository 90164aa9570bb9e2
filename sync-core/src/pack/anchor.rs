//! Finding, for a piece of a large target, the stretches of its base that match it, without
//! holding either whole: content-defined chunks (a gear hash picks boundaries from the bytes
//! themselves, so the same content gets the same boundaries at any offset) are indexed by hash
//! over the base once, then each piece of the target is chunked and looked up. The matches say
//! where in the base the piece's content lies, even after an insertion shifted everything, and
//! those stretches (with a margin around them) become the zstd prefix of the piece's segment.
//!
//! The index is small (16 bytes and a hash-map slot per chunk of about 8 KiB: by that count about 6 MiB for a
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

/// Where each chunk of a base starts, by the chunk's hash; [`REPEATED`] for a chunk the base
/// holds more than once (runs of zeros, say), which says nothing about where a piece lies.
pub struct BaseIndex {
    chunks: HashMap<u64, u64>,
    len: u64,
}

/// The place of a chunk found more than once in the base.
const REPEATED: u64 = u64::MAX;

impl BaseIndex {
    /// Indexes the first `len` bytes of `base`, read through a fixed buffer.
    pub fn build(base: &(impl ReadAt + ?Sized), len: u64) -> std::io::Result<BaseIndex> {
        let mut chunks = HashMap::new();
        let mut chunker = Chunker::default();
        let mut buf = vec![0u8; READ_BUF.min(len as usize).max(1)];
        let (mut at, mut start) = (0u64, 0u64);
        let mut record = |n: usize, hash: u64| {
            chunks
                .entry(hash)
                .and_modify(|at| *at = REPEATED)
                .or_insert(start);
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

    /// The stretches of the base that `piece` (at offset `at` of the target) matches, in base
    /// order as `(from, len)`, at most `budget` bytes in all. First the stretch the piece lies
    /// on if it moved as a whole: the offset shift (base offset less target offset) most of its
    /// matched bytes agree on, across the whole piece and `margin` on both sides (an edit in
    /// place, or everything after an insertion, finds all of its old bytes there, repeated
    /// ones included); then the other matched chunks, each widened by `margin`, the ones
    /// covering the most matched bytes first. Chunks the base holds more than once say nothing
    /// about where the piece lies, and are left to zstd to find in those stretches. A piece
    /// with no chunk found once (all zeros, say) lies where the piece before it did: `shift`
    /// is that piece's shift, and is set to this one's.
    pub fn ranges_for(
        &self,
        piece: &[u8],
        at: u64,
        margin: u64,
        budget: u64,
        shift: &mut i128,
    ) -> Vec<(u64, u64)> {
        // (offset in the piece, offset in the base, length) of each chunk found once.
        let mut matched: Vec<(u64, u64, u64)> = Vec::new();
        let mut offset = 0u64;
        let mut chunker = Chunker::default();
        let mut record = |n: usize, hash: u64| {
            if let Some(&from) = self.chunks.get(&hash)
                && from != REPEATED
            {
                matched.push((offset, from, n as u64));
            }
            offset += n as u64;
        };
        chunker.feed(piece, &mut record);
        chunker.finish(&mut record);
        let mut shifts: HashMap<i128, u64> = HashMap::new();
        for &(t, b, n) in &matched {
            *shifts.entry(b as i128 - (at + t) as i128).or_default() += n;
        }
        // Widened stretches with the matched bytes each covers; the moved piece's first.
        let mut widened: Vec<(u64, u64, u64)> = Vec::new();
        let (moved, bytes) = shifts
            .iter()
            .max_by_key(|(s, b)| (**b, -**s))
            .map_or((*shift, 0), |(&s, &b)| (s, b));
        *shift = moved;
        let start = (at as i128 + moved - margin as i128).clamp(0, self.len as i128) as u64;
        let end = (at as i128 + moved + (piece.len() + margin as usize) as i128)
            .clamp(0, self.len as i128) as u64;
        if start < end {
            widened.push((start, end, u64::MAX / 2 + bytes));
        }
        for &(_, from, n) in &matched {
            let start = from.saturating_sub(margin);
            let end = (from + n + margin).min(self.len);
            widened.push((start, end, n));
        }
        widened.sort_unstable();
        let mut joined: Vec<(u64, u64, u64)> = Vec::new();
        for (start, end, n) in widened {
            match joined.last_mut() {
                Some(last) if start <= last.1 => {
                    last.1 = last.1.max(end);
                    last.2 = last.2.saturating_add(n);
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
        let ranges = index.ranges_for(piece, 5 << 20, 64 * 1024, 8 << 20, &mut 0);
        assert_eq!(ranges.len(), 1, "{ranges:?}");
        let (from, len) = ranges[0];
        assert!(from <= 4 << 20 && from + len >= 5 << 20, "{ranges:?}");
        assert!(len <= (1 << 20) + 2 * 64 * 1024 + 2 * MAX_CHUNK as u64);
        // Nothing matches new bytes.
        // New bytes match nothing: the piece is taken to lie where the one before it did.
        let mut shift = -(1 << 20);
        let new = index.ranges_for(&target[..1 << 20], 0, 0, 8 << 20, &mut shift);
        assert!(new.is_empty(), "{new:?}");
        assert_eq!(shift, -(1 << 20));
    }

    #[test]
    fn the_budget_keeps_the_best_matched_stretches() {
        let base = random_bytes(4 << 20, 5);
        let index = BaseIndex::build(&base[..], base.len() as u64).unwrap();
        // A piece made of two far-apart stretches of the base: 512 KiB and 64 KiB.
        let mut piece = base[100_000..100_000 + (512 << 10)].to_vec();
        piece.extend_from_slice(&base[3_000_000..3_000_000 + (64 << 10)]);
        let all = index.ranges_for(&piece, 100_000, 0, u64::MAX, &mut 0);
        assert_eq!(all.len(), 2, "{all:?}");
        let kept = index.ranges_for(&piece, 100_000, 0, 600 << 10, &mut 0);
        let total: u64 = kept.iter().map(|r| r.1).sum();
        assert!(total <= 600 << 10);
        assert!(
            kept[0].0 < 1_000_000,
            "the larger stretch is kept first: {kept:?}"
        );
    }

    /// A disk image: mostly zeros (chunks the base holds many times, which locate nothing),
    /// with a few random bytes per MiB. A piece edited in place still gets the stretch it lies
    /// on, zeros and all, from the few chunks found once.
    #[test]
    fn repeated_chunks_locate_nothing_and_the_piece_keeps_its_place() {
        let mut base = vec![0u8; 8 << 20];
        for mib in 0..8 {
            let at = mib << 20;
            base[at..at + 8192].copy_from_slice(&random_bytes(8192, mib as u64));
        }
        let index = BaseIndex::build(&base[..], base.len() as u64).unwrap();
        let mut piece = base[3 << 20..5 << 20].to_vec();
        piece[500_000..504_096].copy_from_slice(&random_bytes(4096, 99));
        let ranges = index.ranges_for(&piece, 3 << 20, 64 << 10, 4 << 20, &mut 0);
        let covers = |from: u64, to: u64| ranges.iter().any(|&(s, n)| s <= from && s + n >= to);
        assert!(covers(3 << 20, 5 << 20), "{ranges:?}");
    }
}
