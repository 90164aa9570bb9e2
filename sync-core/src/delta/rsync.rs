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

/// Applies `delta` to `base`.
///
/// # Security
/// The delta comes from the link: the output is capped at `expected_len`, the size declared for
/// the result, and a result of another size is an error.
pub fn apply(base: &[u8], delta: &[u8], expected_len: u64) -> Result<Vec<u8>, DeltaError> {
    let mut out = Vec::new();
    let limit = usize::try_from(expected_len).map_err(|_| DeltaError::SizeMismatch {
        expected: expected_len,
        actual: 0,
    })?;
    fast_rsync::apply_limited(base, delta, &mut out, limit)
        .map_err(|e| DeltaError::Apply(e.to_string()))?;
    if out.len() as u64 != expected_len {
        return Err(DeltaError::SizeMismatch {
            expected: expected_len,
            actual: out.len() as u64,
        });
    }
    Ok(out)
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
