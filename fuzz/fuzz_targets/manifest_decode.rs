//! Arbitrary bytes as a manifest's canonical encoding. A manifest that decodes must re-encode to
//! bytes that decode to the same manifest and the same root.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sync_core::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Manifest::decode(data) else {
        return;
    };
    let bytes = m.encode();
    let again = Manifest::decode(&bytes).expect("a canonical encoding decodes");
    assert_eq!(again.root(), m.root(), "root changed in a round trip");
    assert_eq!(again, m);
    assert_eq!(
        again.encode(),
        bytes,
        "the canonical encoding is not a fixed point"
    );
});
