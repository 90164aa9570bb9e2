//! The authenticated, encrypted link: a Noise `NNpsk0` handshake over a 256-bit pre-shared key,
//! then ChaCha20-Poly1305 records. Both ends prove they hold the key before either acts on a
//! byte; fresh ephemeral keys per connection give forward secrecy; a record that was altered,
//! replayed or reordered fails to open.
//!
//! Sans-IO: bytes in, bytes out. The link layer moves them.

use std::sync::Arc;

use super::WireError;
use super::message::PROTOCOL_VERSION;

const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
const MAGIC: &[u8; 4] = b"OSYN";
pub const PREAMBLE_LEN: usize = 6;
/// Largest Noise message, and so the largest record.
const MAX_RECORD: usize = 65535;
const TAG_LEN: usize = 16;
/// Most plaintext one record carries.
pub const MAX_RECORD_PLAINTEXT: usize = MAX_RECORD - TAG_LEN;
/// Largest handshake message either side reads. NNpsk0's are 48 bytes each (an ephemeral key and
/// the tag of an empty payload); a peer that declares more is refused on its length, before a
/// byte of it is kept. So a peer that has not proven the key costs this side one fixed buffer
/// of this size, not a record (a declared 65 KB record per connection once held 690 MB for
/// 10,000 connections).
pub const MAX_HANDSHAKE_MESSAGE: usize = 256;

/// The pre-shared link key. Its bytes never appear in `Debug` output or messages.
#[derive(Clone)]
pub struct LinkKey([u8; 32]);

impl std::fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkKey(…)")
    }
}

impl LinkKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<Self, WireError> {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).map_err(|e| WireError::BadKey(e.to_string()))?;
        Ok(Self(k))
    }

    /// Parses 64 hex digits; surrounding white space (a trailing newline) is ignored.
    pub fn from_hex(text: &str) -> Result<Self, WireError> {
        let t = text.trim();
        let mut k = [0u8; 32];
        hex::decode_to_slice(t, &mut k).map_err(|e| WireError::BadKey(e.to_string()))?;
        Ok(Self(k))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// Our cleartext preamble.
pub fn preamble() -> [u8; PREAMBLE_LEN] {
    let v = PROTOCOL_VERSION.to_be_bytes();
    [MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], v[0], v[1]]
}

/// Checks the peer's preamble: ours, and the same version.
pub fn check_preamble(p: &[u8; PREAMBLE_LEN]) -> Result<(), WireError> {
    if &p[..4] != MAGIC {
        return Err(WireError::NotOurProtocol);
    }
    let peer = u16::from_be_bytes([p[4], p[5]]);
    if peer != PROTOCOL_VERSION {
        return Err(WireError::Version {
            peer,
            ours: PROTOCOL_VERSION,
        });
    }
    Ok(())
}

fn noise(e: snow::Error) -> WireError {
    match e {
        snow::Error::Decrypt => WireError::Auth,
        other => WireError::Noise(other.to_string()),
    }
}

pub struct Handshake {
    state: snow::HandshakeState,
}

impl Handshake {
    /// `prologue`: the ground's preamble then the onboard's.
    pub fn initiator(key: &LinkKey, prologue: &[u8]) -> Result<Self, WireError> {
        Self::build(key, prologue, true)
    }

    pub fn responder(key: &LinkKey, prologue: &[u8]) -> Result<Self, WireError> {
        Self::build(key, prologue, false)
    }

    fn build(key: &LinkKey, prologue: &[u8], initiator: bool) -> Result<Self, WireError> {
        let params = NOISE_PARAMS.parse().map_err(noise)?;
        let b = snow::Builder::new(params)
            .psk(0, &key.0)
            .map_err(noise)?
            .prologue(prologue)
            .map_err(noise)?;
        let state = if initiator {
            b.build_initiator()
        } else {
            b.build_responder()
        }
        .map_err(noise)?;
        Ok(Self { state })
    }

    /// The next handshake message to send, framed with its u16 length.
    pub fn write_message(&mut self) -> Result<Vec<u8>, WireError> {
        let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
        let n = self.state.write_message(&[], &mut buf).map_err(noise)?;
        let mut out = (n as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&buf[..n]);
        Ok(out)
    }

    /// Reads a handshake message (the record, without its length).
    pub fn read_message(&mut self, record: &[u8]) -> Result<(), WireError> {
        if record.len() > MAX_HANDSHAKE_MESSAGE {
            return Err(WireError::HandshakeTooLarge(record.len()));
        }
        // The payload is empty; the buffer only has to hold what a message could carry.
        let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
        self.state.read_message(record, &mut buf).map_err(noise)?;
        Ok(())
    }

    pub fn is_finished(&self) -> bool {
        self.state.is_handshake_finished()
    }

    pub fn into_channel(self) -> Result<SecureChannel, WireError> {
        let transport = Arc::new(self.state.into_stateless_transport_mode().map_err(noise)?);
        Ok(SecureChannel {
            // Scratch space grows to the largest record seen, not to the largest possible: a
            // link that only ever carries small messages keeps small buffers.
            sealer: Sealer {
                transport: transport.clone(),
                nonce: 0,
                scratch: Vec::new(),
            },
            opener: Opener {
                transport,
                nonce: 0,
                scratch: Vec::new(),
            },
        })
    }
}

/// What the responder sends, in clear, when the initiator's first handshake message does not
/// prove the key: an empty handshake message (a zero length). No real message is empty, so the
/// ground can tell "the keys differ" (exit 5) from a link cut during the handshake (exit 4).
/// It is not authenticated; anyone on the path could forge it, as they could cut the link.
pub const KEY_REFUSED: [u8; 2] = [0, 0];

/// Reads one handshake message (a u16 length, then the message) into a fixed buffer. It asks
/// for exactly the bytes of that message and no more ([`HandshakeReader::space`]): what follows
/// belongs to the transport phase, and a peer that has not proven the key gets nothing of this
/// side's memory beyond this buffer. A declared length over [`MAX_HANDSHAKE_MESSAGE`] is refused
/// as soon as it is read.
pub struct HandshakeReader {
    buf: [u8; 2 + MAX_HANDSHAKE_MESSAGE],
    /// Bytes of `buf` filled so far.
    got: usize,
}

impl Default for HandshakeReader {
    fn default() -> Self {
        Self {
            buf: [0; 2 + MAX_HANDSHAKE_MESSAGE],
            got: 0,
        }
    }
}

impl HandshakeReader {
    /// Where the next bytes go: the rest of the length, then the rest of the message. Empty
    /// once the message is whole.
    pub fn space(&mut self) -> &mut [u8] {
        let end = if self.got < 2 {
            2
        } else {
            2 + self.declared().min(MAX_HANDSHAKE_MESSAGE)
        };
        &mut self.buf[self.got..end]
    }

    /// Takes note that `n` bytes were written into [`HandshakeReader::space`]; gives the message
    /// once it is whole.
    pub fn filled(&mut self, n: usize) -> Result<Option<&[u8]>, WireError> {
        self.got += n;
        if self.got < 2 {
            return Ok(None);
        }
        let len = self.declared();
        if len > MAX_HANDSHAKE_MESSAGE {
            return Err(WireError::HandshakeTooLarge(len));
        }
        Ok((self.got == 2 + len).then(|| &self.buf[2..2 + len]))
    }

    fn declared(&self) -> usize {
        u16::from_be_bytes([self.buf[0], self.buf[1]]) as usize
    }
}

/// Both directions of an established link. [`SecureChannel::split`] gives each direction its
/// own half, so one task can send while another receives.
pub struct SecureChannel {
    sealer: Sealer,
    opener: Opener,
}

impl SecureChannel {
    pub fn seal(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        self.sealer.seal(plaintext, out)
    }

    pub fn open(&mut self, record: &[u8]) -> Result<Vec<u8>, WireError> {
        self.opener.open(record)
    }

    pub fn split(self) -> (Sealer, Opener) {
        (self.sealer, self.opener)
    }
}

/// The sending direction. Each record uses the next nonce, so records cannot be replayed,
/// dropped or reordered without the receiver noticing.
pub struct Sealer {
    transport: Arc<snow::StatelessTransportState>,
    nonce: u64,
    scratch: Vec<u8>,
}

impl Sealer {
    /// Encrypts `plaintext` into as many framed records as it needs, appended to `out`.
    pub fn seal(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        for chunk in plaintext.chunks(MAX_RECORD_PLAINTEXT) {
            if self.scratch.len() < chunk.len() + TAG_LEN {
                self.scratch.resize(chunk.len() + TAG_LEN, 0);
            }
            let n = self
                .transport
                .write_message(self.nonce, chunk, &mut self.scratch)
                .map_err(noise)?;
            self.nonce += 1;
            out.extend_from_slice(&(n as u16).to_be_bytes());
            out.extend_from_slice(&self.scratch[..n]);
        }
        Ok(())
    }
}

/// The receiving direction.
pub struct Opener {
    transport: Arc<snow::StatelessTransportState>,
    nonce: u64,
    scratch: Vec<u8>,
}

impl Opener {
    /// Decrypts one record (without its length).
    pub fn open(&mut self, record: &[u8]) -> Result<Vec<u8>, WireError> {
        if self.scratch.len() < record.len() {
            self.scratch.resize(record.len(), 0);
        }
        let n = self
            .transport
            .read_message(self.nonce, record, &mut self.scratch)
            .map_err(|e| match e {
                snow::Error::Decrypt => WireError::Corrupt,
                other => noise(other),
            })?;
        self.nonce += 1;
        Ok(self.scratch[..n].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::super::frame::RecordDecoder;
    use super::*;

    fn pair(k1: &LinkKey, k2: &LinkKey) -> Result<(SecureChannel, SecureChannel), WireError> {
        let prologue = [preamble(), preamble()].concat();
        let mut i = Handshake::initiator(k1, &prologue)?;
        let mut r = Handshake::responder(k2, &prologue)?;
        let m1 = i.write_message()?;
        r.read_message(&m1[2..])?;
        let m2 = r.write_message()?;
        i.read_message(&m2[2..])?;
        assert!(i.is_finished() && r.is_finished());
        Ok((i.into_channel()?, r.into_channel()?))
    }

    #[test]
    fn same_key_talks() {
        let k = LinkKey::generate().unwrap();
        let (mut a, mut b) = pair(&k, &k).unwrap();
        let mut wire = Vec::new();
        let big = vec![42u8; 200_000];
        a.seal(&big, &mut wire).unwrap();
        let mut rd = RecordDecoder::default();
        rd.push(&wire);
        let mut got = Vec::new();
        while let Some(rec) = rd.next_record() {
            got.extend(b.open(&rec).unwrap());
        }
        assert_eq!(got, big);
    }

    #[test]
    fn wrong_key_fails_the_handshake() {
        let k1 = LinkKey::generate().unwrap();
        let k2 = LinkKey::generate().unwrap();
        assert!(matches!(pair(&k1, &k2), Err(WireError::Auth)));
    }

    #[test]
    fn tampered_record_is_corrupt() {
        let k = LinkKey::generate().unwrap();
        let (mut a, mut b) = pair(&k, &k).unwrap();
        let mut wire = Vec::new();
        a.seal(b"hello", &mut wire).unwrap();
        wire[5] ^= 1;
        assert!(matches!(b.open(&wire[2..]), Err(WireError::Corrupt)));
    }

    #[test]
    fn replayed_record_is_corrupt() {
        let k = LinkKey::generate().unwrap();
        let (mut a, mut b) = pair(&k, &k).unwrap();
        let mut wire = Vec::new();
        a.seal(b"once", &mut wire).unwrap();
        assert_eq!(b.open(&wire[2..]).unwrap(), b"once");
        assert!(matches!(b.open(&wire[2..]), Err(WireError::Corrupt)));
    }

    #[test]
    fn version_mismatch_is_named() {
        let mut p = preamble();
        p[5] = p[5].wrapping_add(1);
        assert!(matches!(check_preamble(&p), Err(WireError::Version { .. })));
        assert!(matches!(
            check_preamble(b"SSH-2."),
            Err(WireError::NotOurProtocol)
        ));
    }

    /// Feeds `stream` to a reader `step` bytes at a time, as a socket would: never more than
    /// the reader asks for. The message, and how many bytes it took.
    fn read_in_steps(stream: &[u8], step: usize) -> (Result<Vec<u8>, WireError>, usize) {
        let mut r = HandshakeReader::default();
        let mut at = 0;
        loop {
            let space = r.space();
            assert!(
                !space.is_empty(),
                "asked for nothing before the message was whole"
            );
            let n = space.len().min(step).min(stream.len() - at);
            if n == 0 {
                return (Err(WireError::Malformed("stream ended".into())), at);
            }
            space[..n].copy_from_slice(&stream[at..at + n]);
            at += n;
            match r.filled(n) {
                Ok(Some(m)) => return (Ok(m.to_vec()), at),
                Ok(None) => continue,
                Err(e) => return (Err(e), at),
            }
        }
    }

    #[test]
    fn the_handshake_reader_takes_exactly_one_message_and_not_a_byte_more() {
        let prologue = [preamble(), preamble()].concat();
        let k = LinkKey::generate().unwrap();
        let m1 = Handshake::initiator(&k, &prologue)
            .unwrap()
            .write_message()
            .unwrap();
        assert_eq!(m1.len(), 2 + 48, "NNpsk0's first message");
        // The transport phase follows at once: none of it may be taken.
        let stream = [&m1[..], &[0xee; 100]].concat();
        for step in [1, 2, 3, 7, 50, 1000] {
            let (m, took) = read_in_steps(&stream, step);
            assert_eq!(m.unwrap(), &m1[2..], "step {step}");
            assert_eq!(took, m1.len(), "step {step}");
        }
    }

    #[test]
    fn a_declared_handshake_message_over_the_cap_is_refused_on_its_length() {
        // The length says 65,535; the peer would send it all. Two bytes are read, no more.
        let stream = [&[0xff, 0xff][..], &[7; 60_000]].concat();
        for step in [1, 2, 4096] {
            let (m, took) = read_in_steps(&stream, step);
            assert!(
                matches!(m, Err(WireError::HandshakeTooLarge(65535))),
                "{m:?}"
            );
            assert_eq!(took, 2);
        }
        let just_over = (MAX_HANDSHAKE_MESSAGE as u16 + 1).to_be_bytes();
        assert!(matches!(
            read_in_steps(&just_over, 2).0,
            Err(WireError::HandshakeTooLarge(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn the_handshake_reader_takes_the_declared_message_or_refuses_it_on_its_length(
            stream in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            step in 1usize..300,
        ) {
            let (m, took) = read_in_steps(&stream, step);
            if stream.len() < 2 {
                proptest::prop_assert!(m.is_err());
                proptest::prop_assert_eq!(took, stream.len());
            } else {
                let len = u16::from_be_bytes([stream[0], stream[1]]) as usize;
                if len > MAX_HANDSHAKE_MESSAGE {
                    proptest::prop_assert!(matches!(m, Err(WireError::HandshakeTooLarge(n)) if n == len));
                    proptest::prop_assert_eq!(took, 2);
                } else if stream.len() >= 2 + len {
                    proptest::prop_assert_eq!(m.unwrap(), &stream[2..2 + len]);
                    proptest::prop_assert_eq!(took, 2 + len);
                } else {
                    proptest::prop_assert!(m.is_err(), "a short stream gave a message");
                    proptest::prop_assert_eq!(took, stream.len());
                }
            }
        }
    }

    #[test]
    fn a_peer_without_the_key_costs_a_fixed_few_hundred_bytes() {
        // All a connection holds for its peer's handshake message, whatever the peer declares:
        // the reader is a fixed buffer on the connection's own task, nothing on the heap.
        let size = std::mem::size_of::<HandshakeReader>();
        assert!(size <= 2 + MAX_HANDSHAKE_MESSAGE + 16, "{size} bytes");
        const { assert!(MAX_HANDSHAKE_MESSAGE <= 512) };
        let too_long = vec![0u8; MAX_HANDSHAKE_MESSAGE + 1];
        let mut hs = Handshake::responder(&LinkKey::generate().unwrap(), b"p").unwrap();
        assert!(matches!(
            hs.read_message(&too_long),
            Err(WireError::HandshakeTooLarge(_))
        ));
    }

    #[test]
    fn key_hex_round_trip_and_refusals() {
        let k = LinkKey::generate().unwrap();
        let again = LinkKey::from_hex(&format!("{}\n", k.to_hex())).unwrap();
        assert_eq!(again.0, k.0);
        assert!(LinkKey::from_hex("abcd").is_err());
        assert!(!format!("{k:?}").contains(&k.to_hex()[..8]));
    }
}
