//! fast_rsync signatures and deltas, for bases only the receiver holds.

use fast_rsync::{Signature, SignatureOptions};

use super::DeltaError;

/// Bytes of (truncated MD4) strong hash per block. Eight is plenty: a false match is caught by the
/// BLAKE3 check of the result, and every byte of signature crosses the link.
const STRONG_HASH_BYTES: u32 = 8;

/// Block size for a base of `len` bytes: about √len, as rsync does, so signature and delta costs
/// balance; at least 512 and at most 64 KiB.
pub fn block_size_for(len: u64) -> u32 {
    let root = (len as f64).sqrt() as u32;
    (root.next_multiple_of(64)).clamp(512, 64 * 1024)
}

/// The signature of `base`, serialized.
pub fn signature(base: &[u8]) -> Vec<u8> {
    Signature::calculate(
        base,
        SignatureOptions {
            block_size: block_size_for(base.len() as u64),
            crypto_hash_size: STRONG_HASH_BYTES,
        },
    )
    .into_serialized()
}

/// The signature of `base` with blocks of `block_size` bytes. Signatures the node keeps (of
/// versions it sent) never cross the link, so they use small blocks for finer deltas.
pub fn signature_with(base: &[u8], block_size: u32) -> Vec<u8> {
    Signature::calculate(
        base,
        SignatureOptions {
            block_size,
            crypto_hash_size: STRONG_HASH_BYTES,
        },
    )
    .into_serialized()
}

/// Length of a serialized signature's header (magic, block size, hash size); the blocks follow.
const SIGNATURE_HEADER: usize = 12;

/// A signature built as the base's bytes pass (in any slices), holding at most about 1 MiB of
/// them: the same bytes as [`signature_with`] over the whole base, since each block's hashes
/// depend on that block alone.
pub struct SignatureBuilder {
    block_size: u32,
    pending: Vec<u8>,
    out: Vec<u8>,
}

impl SignatureBuilder {
    pub fn new(block_size: u32) -> Self {
        Self {
            block_size,
            pending: Vec::new(),
            out: signature_with(&[], block_size),
        }
    }

    /// Whole blocks hashed at a time.
    fn step(&self) -> usize {
        self.block_size as usize * (1usize << 20).div_ceil(self.block_size as usize)
    }

    pub fn feed(&mut self, mut data: &[u8]) {
        let step = self.step();
        while !data.is_empty() {
            let take = (step - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() == step {
                self.flush();
            }
        }
    }

    fn flush(&mut self) {
        let sig = signature_with(&self.pending, self.block_size);
        self.out.extend_from_slice(&sig[SIGNATURE_HEADER..]);
        self.pending.clear();
    }

    pub fn finish(mut self) -> Vec<u8> {
        if !self.pending.is_empty() {
            self.flush();
        }
        self.out
    }
}

/// The signature of the first `len` bytes of `base`, with blocks of `block_size` bytes, read in
/// stretches (see [`SignatureBuilder`]). Also returns the BLAKE3 of what was read, so the
/// caller can check the base is the content it signs.
pub fn signature_stream(
    base: &(impl super::ReadAt + ?Sized),
    len: u64,
    block_size: u32,
) -> std::io::Result<(Vec<u8>, crate::id::ContentId)> {
    let mut builder = SignatureBuilder::new(block_size);
    let mut buf = vec![0u8; builder.step().min(len as usize)];
    let mut hasher = blake3::Hasher::new();
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(buf.len() as u64) as usize;
        base.read_exact_at(&mut buf[..n], at)?;
        hasher.update(&buf[..n]);
        builder.feed(&buf[..n]);
        at += n as u64;
    }
    Ok((
        builder.finish(),
        crate::id::ContentId(*hasher.finalize().as_bytes()),
    ))
}

/// The delta that turns the signature's base into `target`.
pub fn diff(signature: &[u8], target: &[u8]) -> Result<Vec<u8>, DeltaError> {
    let sig = Signature::deserialize(signature.to_vec()).map_err(|_| DeltaError::BadSignature)?;
    let mut out = Vec::new();
    fast_rsync::diff(&sig.index(), target, &mut out)
        .map_err(|e| DeltaError::Diff(e.to_string()))?;
    Ok(out)
}

/// A stretch of the target an rsync delta copies from the base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    /// Where it lands in the target.
    pub target: u64,
    /// Where it comes from in the base.
    pub base: u64,
    pub len: u64,
}

/// The copies of a delta this engine made, in target order. The sender reads its own deltas
/// with this (to know which of the receiver's base bytes it also holds); a delta from the link
/// is only ever applied, never read here.
pub fn copies(delta: &[u8]) -> Result<Vec<Copied>, DeltaError> {
    const MAGIC: u32 = 0x7273_0236;
    let bad = || DeltaError::Diff("malformed delta".into());
    let mut rest = delta;
    let mut take = |n: usize| -> Result<u64, DeltaError> {
        if rest.len() < n {
            return Err(bad());
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head.iter().fold(0u64, |v, &b| (v << 8) | b as u64))
    };
    if take(4)? != MAGIC as u64 {
        return Err(bad());
    }
    let mut out: Vec<Copied> = Vec::new();
    let mut at = 0u64;
    loop {
        match take(1)? as u8 {
            0 => break,
            cmd @ 0x01..=0x40 => {
                let n = cmd as u64;
                take(n as usize)?;
                at += n;
            }
            cmd @ 0x41..=0x44 => {
                let n = take(1 << (cmd - 0x41))?;
                take(usize::try_from(n).map_err(|_| bad())?)?;
                at += n;
            }
            cmd @ 0x45..=0x54 => {
                let mode = cmd - 0x45;
                let base = take(1 << (mode / 4))?;
                let len = take(1 << (mode % 4))?;
                match out.last_mut() {
                    // fast_rsync emits one copy per block run; adjacent ones join.
                    Some(c) if c.target + c.len == at && c.base + c.len == base => c.len += len,
                    _ => out.push(Copied {
                        target: at,
                        base,
                        len,
                    }),
                }
                at += len;
            }
            _ => return Err(bad()),
        }
    }
    Ok(out)
}

/// Applies `delta` to `base`, in memory.
///
/// # Security
/// The delta comes from the link: the output is capped at `expected_len`, the size declared for
/// the result, and a result of another size is an error.
pub fn apply(base: &[u8], delta: &[u8], expected_len: u64) -> Result<Vec<u8>, DeltaError> {
    let mut out = Vec::new();
    apply_stream(
        base,
        base.len() as u64,
        &mut &delta[..],
        expected_len,
        &mut out,
    )?;
    Ok(out)
}

/// Buffer through which literal and copied bytes pass when a delta is applied.
const APPLY_BUF: usize = 64 * 1024;

/// Applies the delta read from `delta` to a base of `base_len` bytes read in stretches, writing
/// the result to `out`: memory is a fixed buffer whatever the sizes. Reads the delta exactly to
/// its end command, so the caller can check nothing follows it.
///
/// # Security
/// The delta comes from the link: every copy must lie inside the base, the output is capped at
/// `expected_len` (checked before a byte of a command is written), and a result of another size
/// is an error.
pub fn apply_stream(
    base: &(impl super::ReadAt + ?Sized),
    base_len: u64,
    delta: &mut dyn std::io::Read,
    expected_len: u64,
    out: &mut dyn std::io::Write,
) -> Result<(), DeltaError> {
    const MAGIC: u64 = 0x7273_0236;
    if read_uint(delta, 4)? != MAGIC {
        return Err(bad("not an rsync delta"));
    }
    let mut buf = vec![0u8; APPLY_BUF];
    let mut written = 0u64;
    loop {
        let cmd = read_uint(delta, 1)? as u8;
        let (from, n) = match cmd {
            0 => break,
            0x01..=0x40 => (None, u64::from(cmd)),
            0x41..=0x44 => (None, read_uint(delta, 1 << (cmd - 0x41))?),
            0x45..=0x54 => {
                let mode = cmd - 0x45;
                let from = read_uint(delta, 1 << (mode / 4))?;
                let n = read_uint(delta, 1 << (mode % 4))?;
                if from.checked_add(n).is_none_or(|end| end > base_len) {
                    return Err(bad("copy outside the base"));
                }
                (Some(from), n)
            }
            _ => return Err(bad("unknown command")),
        };
        if written.checked_add(n).is_none_or(|end| end > expected_len) {
            return Err(bad("output past the declared size"));
        }
        let mut done = 0u64;
        while done < n {
            let step = (n - done).min(APPLY_BUF as u64) as usize;
            match from {
                Some(at) => base
                    .read_exact_at(&mut buf[..step], at + done)
                    .map_err(DeltaError::Base)?,
                None => delta.read_exact(&mut buf[..step]).map_err(early)?,
            }
            out.write_all(&buf[..step]).map_err(DeltaError::Output)?;
            done += step as u64;
        }
        written += n;
    }
    if written != expected_len {
        return Err(DeltaError::SizeMismatch {
            expected: expected_len,
            actual: written,
        });
    }
    Ok(())
}

fn bad(what: &str) -> DeltaError {
    DeltaError::Apply(what.to_string())
}

/// A delta that ends before its end command is malformed; any other read error (a frame that
/// does not decode) is passed on as it is.
fn early(e: std::io::Error) -> DeltaError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        bad("delta ends early")
    } else {
        DeltaError::Zstd(e)
    }
}

/// A big-endian unsigned integer of `n` (at most 8) bytes from the delta.
fn read_uint(delta: &mut dyn std::io::Read, n: usize) -> Result<u64, DeltaError> {
    let mut b = [0u8; 8];
    delta.read_exact(&mut b[..n]).map_err(early)?;
    Ok(b[..n].iter().fold(0u64, |v, &x| (v << 8) | x as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_round_trips_and_is_small() {
        let base: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let mut target = base.clone();
        target.splice(100_000..100_000, b"inserted".iter().copied());
        let sig = signature(&base);
        let delta = diff(&sig, &target).unwrap();
        assert!(delta.len() < 3_000, "delta {} bytes", delta.len());
        assert_eq!(apply(&base, &delta, target.len() as u64).unwrap(), target);
    }

    #[test]
    fn copies_name_the_unchanged_stretches() {
        // 250 whole blocks of 1 KiB (fast_rsync leaves a short last block unmatched).
        let base: Vec<u8> = (0..64_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let mut target = base.clone();
        target[100_000..100_010].copy_from_slice(b"0123456789");
        let delta = diff(&signature_with(&base, 1024), &target).unwrap();
        let copies = copies(&delta).unwrap();
        // Everything but the 1 KiB block holding the edit is copied, in two stretches.
        assert_eq!(copies.len(), 2, "{copies:?}");
        let copied: u64 = copies.iter().map(|c| c.len).sum();
        assert_eq!(copied, target.len() as u64 - 1024);
        for c in &copies {
            let (t, b, n) = (c.target as usize, c.base as usize, c.len as usize);
            assert_eq!(target[t..t + n], base[b..b + n]);
        }
        assert!(super::copies(&delta[..delta.len() - 1]).is_err());
    }

    #[test]
    fn a_signature_read_in_stretches_is_the_signature_of_the_whole() {
        let base: Vec<u8> = (0..700_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for block in [512, 4096, 46_400] {
            let (sig, id) = signature_stream(&base[..], base.len() as u64, block).unwrap();
            assert_eq!(sig, signature_with(&base, block), "block {block}");
            assert_eq!(id, crate::id::ContentId::of(&base));
        }
    }

    #[test]
    fn a_delta_applies_in_stretches_as_it_does_whole() {
        let base: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let mut target = base.clone();
        target.splice(500_000..500_000, b"new".iter().copied());
        target.truncate(1_000_000);
        let delta = diff(&signature_with(&base, 1024), &target).unwrap();
        let mut out = Vec::new();
        apply_stream(
            &base[..],
            base.len() as u64,
            &mut &delta[..],
            target.len() as u64,
            &mut out,
        )
        .unwrap();
        assert_eq!(out, target);
        // A copy past the end of the base is refused, not read.
        let r = apply_stream(
            &base[..10],
            10,
            &mut &delta[..],
            target.len() as u64,
            &mut Vec::new(),
        );
        assert!(matches!(r, Err(DeltaError::Apply(_))), "{r:?}");
    }

    #[test]
    fn output_past_the_declared_size_is_refused() {
        let base = vec![7u8; 10_000];
        let target = vec![7u8; 20_000];
        let delta = diff(&signature(&base), &target).unwrap();
        assert!(apply(&base, &delta, 5_000).is_err());
        assert!(matches!(
            apply(&base, &delta, 30_000),
            Err(DeltaError::SizeMismatch { .. })
        ));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(matches!(
            diff(b"nonsense", b"x"),
            Err(DeltaError::BadSignature)
        ));
        assert!(apply(b"base", b"\x72\x73\x02\x36garbage", 10).is_err());
    }
}
