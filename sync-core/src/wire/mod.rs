//! Everything that knows a byte layout on the link.
//!
//! ```text
//! ground → onboard   preamble  "OSYN" u16-BE version          (6 bytes, cleartext)
//! onboard → ground   preamble  "OSYN" u16-BE version          (6 bytes, cleartext)
//! ground → onboard   u16-BE len | Noise NNpsk0 message 1      (-> psk, e; 48 bytes, ≤ 256)
//! onboard → ground   u16-BE len | Noise NNpsk0 message 2      (<- e, ee; 48 bytes, ≤ 256)
//! both ways          u16-BE len | ChaCha20-Poly1305 record     (≤ 65535 bytes each)
//! ```
//! Both preambles are the Noise prologue, so a tampered version is caught by the handshake.
//! Inside the records, the plaintext is a stream of messages, each a varint length and the
//! postcard encoding of a [`Message`]; a message may span records. The compressed blobs some
//! messages carry (manifests, manifest deltas, signatures) are encoded and decoded in [`blob`].

pub mod blob;
pub mod frame;
pub mod message;
pub mod secure;

pub use frame::{MAX_MESSAGE_BYTES, MessageDecoder, RecordDecoder, encode_message};
pub use message::{ErrorKind, ManifestBody, Message, PROTOCOL_VERSION};
pub use secure::{
    Handshake, HandshakeReader, KEY_REFUSED, LinkKey, MAX_HANDSHAKE_MESSAGE, Opener, PREAMBLE_LEN,
    Sealer, SecureChannel, check_preamble, preamble,
};

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// the peer does not speak this protocol
    #[error("peer does not speak the orbit-sync protocol (bad preamble)")]
    NotOurProtocol,
    /// the peer speaks another version
    #[error("peer speaks protocol version {peer}; this program speaks version {ours}")]
    Version { peer: u16, ours: u16 },
    /// the handshake failed: wrong key or tampering
    #[error("link authentication failed (wrong key, or the data was altered)")]
    Auth,
    /// a record that does not decrypt
    #[error("a record failed authentication (corrupt or forged data on the link)")]
    Corrupt,
    /// a message over the size cap
    #[error("message of {0} bytes is over the limit of {MAX_MESSAGE_BYTES}")]
    TooLarge(u64),
    /// a message that does not decode
    #[error("malformed message: {0}")]
    Malformed(String),
    /// a key that does not parse
    #[error("link key must be 64 hex digits (256 bits): {0}")]
    BadKey(String),
    /// a handshake message longer than any this protocol sends
    #[error(
        "handshake message of {0} bytes is over the limit of {MAX_HANDSHAKE_MESSAGE} (not the orbit-sync handshake)"
    )]
    HandshakeTooLarge(usize),
    /// a Noise failure other than authentication
    #[error("noise: {0}")]
    Noise(String),
}
