//! Arbitrary bytes, split arbitrarily, through the message framing until an error or the end. Every
//! message decoded must survive `encode_message` and a fresh decoder unchanged. Input: one byte
//! choosing the split, then the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sync_core::wire::{MessageDecoder, encode_message};
use sync_core_fuzz::chunks;

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let mut dec = MessageDecoder::default();
    for chunk in chunks(seed, stream) {
        dec.push(chunk);
        loop {
            match dec.next_message() {
                Ok(Some(msg)) => {
                    let bytes = encode_message(&msg);
                    let mut again = MessageDecoder::default();
                    again.push(&bytes);
                    let back = again
                        .next_message()
                        .expect("an encoded message decodes")
                        .expect("an encoded message is complete");
                    assert_eq!(back, msg, "message changed in a round trip");
                    assert!(matches!(again.next_message(), Ok(None)), "bytes left over");
                }
                Ok(None) => break,
                // The link closes on a malformed stream; nothing after it is read.
                Err(_) => return,
            }
        }
    }
});
