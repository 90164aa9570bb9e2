//! Packs against a small fixed base volume, decoded with tight limits: never a panic, never more
//! memory than the limits allow (run with `-malloc_limit_mb`), never a hang.
//!
//! Input: one mode byte, then
//! - mode even: the pack's bytes as they come off the link;
//! - mode odd: a postcard `HeaderBody` followed by the segments' decompressed payloads. The target
//!   compresses each segment (against the prefix it names, when that is valid) and the header
//!   (against the base manifest when bit 1 is set), fills in frame lengths and, unless bit 2 is
//!   set, window logs, so the fuzzer reaches validation, rsync patching, the sink and the target
//!   root check instead of stopping at zstd. A pack refused only for its target root is then
//!   rebuilt with the root the decoder computed, and must decode.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use sync_core::delta::zstd_ref::window_log_for;
use sync_core::id::ContentId;
use sync_core::manifest::ManifestError;
use sync_core::pack::format::{FIXED_LEN, FixedHeader, HeaderBody};
use sync_core::pack::{DecodedPack, Encoding, PackError, PrefixPart, decode_pack, read_header};
use sync_core::testing::Blobs;
use sync_core_fuzz::{FIXTURE, Sink, compress_with_prefix, limits, receiver_blobs};

static RECEIVER: LazyLock<Blobs> = LazyLock::new(|| receiver_blobs(&FIXTURE));

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        let _ = decode(rest);
    } else {
        structured(mode, rest);
    }
});

fn decode(pack: &[u8]) -> Result<(DecodedPack, Sink), PackError> {
    let fx = &*FIXTURE;
    let limits = limits();
    if let Ok(h) = read_header(&mut &pack[..], &fx.base, &limits) {
        assert_eq!(h.base_root, fx.base.root());
    }
    let mut sink = Sink::new(limits.clone());
    let d = decode_pack(&mut &pack[..], &fx.base, &*RECEIVER, &mut sink, &limits)?;
    assert_eq!(d.target.root(), d.header.target_root);
    assert_eq!(
        sink.objects.len(),
        d.objects.len(),
        "an object never reached the sink"
    );
    for (i, (id, size)) in d.objects.iter().enumerate() {
        let body = &sink.objects[&(i as u32)];
        assert_eq!(
            ContentId::of(body),
            *id,
            "object #{i} id is not its bytes' hash"
        );
        assert_eq!(body.len() as u64, *size);
    }
    Ok((d, sink))
}

fn structured(mode: u8, rest: &[u8]) {
    let fx = &*FIXTURE;
    let limits = limits();
    let max_wl = u32::from(limits.max_window_log);
    let Ok((mut body, mut payloads)) = postcard::take_from_bytes::<HeaderBody>(rest) else {
        return;
    };
    let objects = &body.objects;
    let mut frames = Vec::with_capacity(body.segments.len());
    for seg in &mut body.segments {
        let need = seg
            .items
            .iter()
            .map(|it| match it.encoding {
                Encoding::Literal => objects.get(it.object as usize).copied().unwrap_or(0),
                Encoding::Rsync { delta_len, .. } => delta_len,
                Encoding::Append { keep, .. } => objects
                    .get(it.object as usize)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(keep),
            })
            .fold(0u64, u64::saturating_add);
        let (content, tail) = payloads.split_at(need.min(payloads.len() as u64) as usize);
        payloads = tail;
        // The prefix the segment names, if it is a valid one; else none (the decode then fails on
        // the structure or on the content, both fine).
        let mut prefix = Vec::new();
        for part in &seg.prefix {
            let held = fx
                .base
                .entries()
                .get(part.base() as usize)
                .and_then(|e| e.file_id())
                .map(|id| &RECEIVER.0[&id][..]);
            let bytes = match (held, *part) {
                (Some(all), PrefixPart::Entry(_)) => Some(all),
                (Some(all), PrefixPart::Range { from, len, .. }) => usize::try_from(from)
                    .ok()
                    .zip(usize::try_from(len).ok())
                    .and_then(|(from, len)| all.get(from..from.checked_add(len)?)),
                (None, _) => None,
            };
            match bytes {
                Some(bytes) if prefix.len() as u64 <= limits.max_prefix_bytes => {
                    prefix.extend_from_slice(bytes);
                }
                _ => {
                    prefix.clear();
                    break;
                }
            }
        }
        let wl = window_log_for(prefix.len() as u64, content.len() as u64).min(max_wl);
        let frame = compress_with_prefix(&prefix, content, wl);
        seg.frame_len = frame.len() as u64;
        if mode & 4 == 0 {
            seg.window_log = wl as u8;
        }
        frames.push(frame);
    }
    let dict = mode & 2 != 0;
    if let Err(PackError::Manifest(ManifestError::RootMismatch { actual, .. })) =
        decode(&assemble(&body, &frames, dict))
    {
        body.target_root = actual;
        if let Err(e) = decode(&assemble(&body, &frames, dict)) {
            panic!("a pack refused only for its root is refused with the right root: {e}");
        }
    }
}

fn assemble(body: &HeaderBody, frames: &[Vec<u8>], dict: bool) -> Vec<u8> {
    let fx = &*FIXTURE;
    let raw = postcard::to_stdvec(body).expect("header serializes");
    let prefix = if dict { fx.base.encode() } else { Vec::new() };
    let wl = window_log_for(prefix.len() as u64, raw.len() as u64).min(21);
    let packed = compress_with_prefix(&prefix, &raw, wl);
    let fixed = FixedHeader {
        base_root: fx.base.root(),
        dictionary: dict,
        header_len: packed.len() as u32,
    };
    let mut out = Vec::with_capacity(FIXED_LEN + packed.len());
    out.extend_from_slice(&fixed.encode());
    out.extend_from_slice(&packed);
    for f in frames {
        out.extend_from_slice(f);
    }
    out
}
