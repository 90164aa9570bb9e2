//! Arbitrary bytes, split arbitrarily, through the record framing: every record taken out must be
//! exactly the next length-prefixed slice of the stream, and whatever is left pending must be an
//! incomplete record. Input: one byte choosing the split, then the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sync_core::wire::RecordDecoder;
use sync_core_fuzz::chunks;

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let mut dec = RecordDecoder::default();
    let mut consumed = 0usize;
    let mut pushed = 0usize;
    for chunk in chunks(seed, stream) {
        dec.push(chunk);
        pushed += chunk.len();
        while let Some(rec) = dec.next_record() {
            let len = u16::from_be_bytes([stream[consumed], stream[consumed + 1]]) as usize;
            assert_eq!(rec.len(), len, "record length differs from its prefix");
            assert_eq!(rec, &stream[consumed + 2..consumed + 2 + len]);
            consumed += 2 + len;
        }
        assert_eq!(dec.pending(), pushed - consumed, "bytes lost or invented");
        let rest = &stream[consumed..pushed];
        if rest.len() >= 2 {
            let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
            assert!(rest.len() < 2 + len, "a whole record was left pending");
        }
    }
});
