//! Arbitrary bytes as a message's blob. Input: one byte choosing the decoder (a manifest, a
//! manifest delta's changes, signatures), then the blob. Decoding never yields more than the
//! cap, and what decodes re-encodes to a blob that decodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sync_core::wire::blob;

/// Small, so that a blob expanding past it is found quickly.
const CAP: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    if let Ok(raw) = blob::decompress(bytes, CAP) {
        assert!(raw.len() <= CAP, "decompressed past the cap");
    }
    match which % 3 {
        0 => {
            if let Ok(m) = blob::decode_manifest(bytes, CAP) {
                let again = blob::decode_manifest(&blob::encode_manifest(&m), CAP)
                    .expect("an encoded manifest decodes");
                assert_eq!(again, m, "manifest changed in a round trip");
            }
        }
        1 => {
            if let Ok(changes) = blob::decode_changes(bytes, CAP) {
                let again = blob::decode_changes(&blob::encode_changes(&changes), CAP)
                    .expect("encoded changes decode");
                assert_eq!(again, changes, "changes altered in a round trip");
            }
        }
        _ => {
            if let Ok(sigs) = blob::decode_signatures(bytes, CAP) {
                let again = blob::decode_signatures(&blob::encode_signatures(&sigs), CAP)
                    .expect("encoded signatures decode");
                assert_eq!(again, sigs, "signatures changed in a round trip");
            }
        }
    }
});
