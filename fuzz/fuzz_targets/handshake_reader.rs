//! Arbitrary bytes, split arbitrarily, through the handshake reader: it never asks for a byte
//! past the message, gives exactly the length-prefixed message, and refuses a declared length
//! over the cap on its two length bytes. Input: one byte choosing the split, then the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sync_core::wire::{HandshakeReader, MAX_HANDSHAKE_MESSAGE};
use sync_core_fuzz::chunks;

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let mut reader = HandshakeReader::default();
    let mut at = 0usize;
    for chunk in chunks(seed, stream) {
        let mut chunk = chunk;
        while !chunk.is_empty() {
            let space = reader.space();
            assert!(
                !space.is_empty(),
                "asked for nothing before the message was whole"
            );
            let n = space.len().min(chunk.len());
            space[..n].copy_from_slice(&chunk[..n]);
            chunk = &chunk[n..];
            at += n;
            match reader.filled(n) {
                Ok(None) => {}
                Ok(Some(message)) => {
                    let len = u16::from_be_bytes([stream[0], stream[1]]) as usize;
                    assert!(len <= MAX_HANDSHAKE_MESSAGE, "a message over the cap");
                    assert_eq!(at, 2 + len, "read past the message");
                    assert_eq!(message, &stream[2..2 + len]);
                    return;
                }
                Err(_) => {
                    let len = u16::from_be_bytes([stream[0], stream[1]]) as usize;
                    assert!(
                        len > MAX_HANDSHAKE_MESSAGE,
                        "refused a message within the cap"
                    );
                    assert_eq!(at, 2, "read more than the length before refusing");
                    return;
                }
            }
        }
    }
});
