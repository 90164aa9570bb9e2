//! Packs against a small fixed base volume, decoded with tight limits: never a panic, never more
//! memory than the limits allow (run with `-malloc_limit_mb`), never a hang, and the sink sees
//! one object at a time, each within its declared size (see `sync_core_fuzz::Sink`).
//!
//! Input: one mode byte, then
//! - mode even: the pack's bytes as they come off the link;
//! - mode odd: a postcard `(HeaderBody, Vec<SegmentHead>)` followed by the segments' decompressed
//!   payloads back to back. The target takes for each head the bytes its items take from a frame,
//!   compresses them (against the prefix the head names, when that is valid), fills in the
//!   head's frame length and, unless bit 2 is set, its window log, compresses the header
//!   (against the base manifest when bit 1 is set), and puts the version 3 pack together
//!   (`sync_core_fuzz::Structured`), so the fuzzer reaches the segment checks, copies, rsync
//!   patching, the sink and the target root check instead of stopping at zstd. A pack refused
//!   only for its target root is then rebuilt with the root the decoder computed, and must
//!   decode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sync_core::manifest::ManifestError;
use sync_core::pack::PackError;
use sync_core_fuzz::{Structured, decode};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        let _ = decode(rest);
        return;
    }
    let Some(mut pack) = Structured::build(mode, rest) else {
        return;
    };
    if let Err(PackError::Manifest(ManifestError::RootMismatch { actual, .. })) =
        decode(&pack.pack())
    {
        pack.body.target_root = actual;
        if let Err(e) = decode(&pack.pack()) {
            panic!("a pack refused only for its root is refused with the right root: {e}");
        }
    }
});
