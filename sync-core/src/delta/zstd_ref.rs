//! zstd with a reference prefix, as `zstd --patch-from` does.
//!
//! Parameters: level 19 with long-distance matching and a window that covers prefix and content.
//! Known trap: above level 15, long-distance matching with a reference prefix compresses badly in
//! zstd's single-thread mode, so the encoder runs in multithread mode with one worker (same output
//! format; the worker is one background thread).

use std::io::{Read, Write};

use zstd::stream::raw::CParameter;

use super::DeltaError;

/// The level the engine compresses packs with: the link is the bottleneck, never the CPU.
pub const LEVEL: i32 = 19;
/// Smallest window worth asking for; zstd's own minimum is 10.
const MIN_WINDOW_LOG: u32 = 20;
/// Largest window the engine ever uses (1 GiB); receivers may allow less.
pub const MAX_WINDOW_LOG: u32 = 30;

/// The window log that lets content reach back to the start of a prefix.
pub fn window_log_for(prefix_len: u64, content_len: u64) -> u32 {
    let span = (prefix_len + content_len).max(1);
    let log = 64 - (span - 1).leading_zeros();
    log.clamp(MIN_WINDOW_LOG, MAX_WINDOW_LOG)
}

/// Compresses `content` (read to its end, `content_len` bytes) into `out` as one zstd frame that
/// may refer to `prefix`. Returns the window log the decoder must allow.
pub fn compress(
    prefix: &[u8],
    content: &mut dyn Read,
    content_len: u64,
    out: &mut dyn Write,
) -> Result<u32, DeltaError> {
    let tuning = Tuning {
        level: LEVEL,
        workers: 1,
        table_log: None,
    };
    compress_with(prefix, content, content_len, MAX_WINDOW_LOG, tuning, out)
}

/// How zstd works on a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    pub level: i32,
    /// zstd worker threads (0: the calling thread only).
    pub workers: u32,
    /// log2 of the entries of the match finder's hash table, its chain table twice that (4
    /// bytes an entry); `None`: the level's own. Level 19 with its own takes about 100 MiB
    /// for an 8 MiB frame (measured: a 113 MiB peak compressing 8 MiB against a 4 MiB
    /// prefix, window 2^24, 13 MiB of it the data), which a node whose pods share its memory cannot spare; a smaller table finds
    /// fewer of the far matches.
    pub table_log: Option<u32>,
}

/// [`compress`] with the window held to at most `max_window_log` (the receiver's limit; content
/// beyond the window's reach is still compressed, just without the far matches), tuned by
/// `tuning`.
/// Long-distance matching is on from level 16 up, and at every level against a prefix: it finds
/// the far matches a prefix offers.
pub fn compress_with(
    prefix: &[u8],
    content: &mut dyn Read,
    content_len: u64,
    max_window_log: u32,
    tuning: Tuning,
    out: &mut dyn Write,
) -> Result<u32, DeltaError> {
    let Tuning {
        level,
        workers,
        table_log,
    } = tuning;
    let window_log = window_log_for(prefix.len() as u64, content_len).min(max_window_log.max(10));
    let mut enc = zstd::stream::write::Encoder::with_ref_prefix(out, level, prefix)?;
    if workers > 0 {
        enc.set_parameter(CParameter::NbWorkers(workers))?;
    }
    // With a prefix, long-distance matching finds its stretches at any level: a 64 MiB file with
    // 1% changed against its old version is 655,672 bytes at level 1 in 0.3 s and 655,240 at
    // level 19 in 82 s (`zstd --patch-from`, which turns it on by itself); without it, a fast
    // level's small tables miss most of a large prefix (ten times the bytes).
    enc.set_parameter(CParameter::EnableLongDistanceMatching(
        level >= 16 || !prefix.is_empty(),
    ))?;
    enc.set_parameter(CParameter::WindowLog(window_log))?;
    if let Some(t) = table_log {
        // Never above the window's: zstd would shrink them to it anyway.
        let t = t.clamp(16, window_log);
        enc.set_parameter(CParameter::HashLog(t))?;
        enc.set_parameter(CParameter::ChainLog(t + 1))?;
    }
    enc.set_parameter(CParameter::ChecksumFlag(false))?;
    enc.set_parameter(CParameter::ContentSizeFlag(true))?;
    enc.set_pledged_src_size(Some(content_len))?;
    let copied = std::io::copy(content, &mut enc)?;
    if copied != content_len {
        return Err(DeltaError::SizeMismatch {
            expected: content_len,
            actual: copied,
        });
    }
    enc.finish()?;
    Ok(window_log)
}

/// A streaming decoder of one frame made by [`compress`]. The caller bounds how much it reads;
/// `window_log` is checked against the receiver's limit before any memory is committed.
pub fn decoder<'a, R: std::io::BufRead + 'a>(
    frame: R,
    prefix: &'a [u8],
    window_log: u32,
) -> Result<impl Read + 'a, DeltaError> {
    let mut dec = zstd::stream::read::Decoder::with_ref_prefix(frame, prefix)?;
    dec.window_log_max(window_log)?;
    Ok(dec.single_frame())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::noise;

    #[test]
    fn a_small_edit_costs_little_and_round_trips() {
        let base = noise(1 << 20, 7);
        let mut target = base.clone();
        target[500_000..500_010].copy_from_slice(b"0123456789");
        target.extend_from_slice(b"appended tail");
        let mut frame = Vec::new();
        let wl = compress(&base, &mut &target[..], target.len() as u64, &mut frame).unwrap();
        assert!(frame.len() < 200, "patch of {} bytes", frame.len());
        let mut out = Vec::new();
        decoder(&frame[..], &base, wl)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, target);
    }

    #[test]
    fn wrong_prefix_does_not_give_the_target() {
        let base = noise(100_000, 1);
        let target = base.clone();
        let mut frame = Vec::new();
        let wl = compress(&base, &mut &target[..], target.len() as u64, &mut frame).unwrap();
        // Seed 2: `noise` gives seeds that differ only in their lowest bit the same bytes, so 0
        // would be `base` again.
        let other = noise(100_000, 2);
        assert_ne!(other, base);
        let mut out = Vec::new();
        let r = decoder(&frame[..], &other, wl)
            .unwrap()
            .read_to_end(&mut out);
        assert!(r.is_err() || out != target);
    }

    #[test]
    fn window_over_the_limit_is_refused() {
        let data = noise(1 << 21, 3);
        let mut frame = Vec::new();
        let wl = compress(&[], &mut &data[..], data.len() as u64, &mut frame).unwrap();
        assert_eq!(wl, 21);
        let mut out = Vec::new();
        let r = decoder(&frame[..], &[], 20).unwrap().read_to_end(&mut out);
        assert!(r.is_err());
    }

    #[test]
    fn window_log_covers_prefix_and_content() {
        assert_eq!(window_log_for(0, 0), 20);
        assert_eq!(window_log_for(1 << 20, 1 << 20), 21);
        assert_eq!(window_log_for(30_000_000, 31_000_000), 26);
        assert_eq!(window_log_for(u64::MAX / 2, 1), 30);
    }
}
