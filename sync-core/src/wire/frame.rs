//! Record framing (u16 length) and message framing (varint length + postcard), both push-style:
//! feed bytes as they arrive, take out what is complete; `None` means "need more bytes".

use super::WireError;
use super::message::Message;

/// Largest message accepted. Bulk data travels in many `PackData` messages; this caps manifests
/// and signature sets, and so what a peer can make this side allocate.
pub const MAX_MESSAGE_BYTES: u64 = 256 << 20;

/// Splits a byte stream into records of at most 65535 bytes each.
#[derive(Default)]
pub struct RecordDecoder {
    buf: Vec<u8>,
    /// Where the next record starts; consumed bytes are dropped on the next push, not on every
    /// record taken out (which would shift the buffer once per record).
    start: usize,
}

impl RecordDecoder {
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    pub fn next_record(&mut self) -> Option<Vec<u8>> {
        let avail = &self.buf[self.start..];
        if avail.len() < 2 {
            return None;
        }
        let len = u16::from_be_bytes([avail[0], avail[1]]) as usize;
        if avail.len() < 2 + len {
            return None;
        }
        let rec = avail[2..2 + len].to_vec();
        self.start += 2 + len;
        Some(rec)
    }

    /// Bytes held that do not yet make a whole record.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }
}

/// One message, framed: varint length then postcard.
pub fn encode_message(msg: &Message) -> Vec<u8> {
    let body = postcard::to_stdvec(msg).expect("messages always serialize");
    let mut out = Vec::with_capacity(body.len() + 5);
    crate::pack::format::write_varint(body.len() as u64, &mut out);
    out.extend_from_slice(&body);
    out
}

/// Reassembles messages from decrypted record plaintext.
#[derive(Default)]
pub struct MessageDecoder {
    buf: Vec<u8>,
    start: usize,
}

impl MessageDecoder {
    pub fn push(&mut self, plaintext: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(plaintext);
    }

    pub fn next_message(&mut self) -> Result<Option<Message>, WireError> {
        let avail = &self.buf[self.start..];
        let mut len = 0u64;
        let mut used = 0;
        loop {
            let Some(&b) = avail.get(used) else {
                return Ok(None);
            };
            if used == 9 {
                return Err(WireError::Malformed("length varint too long".into()));
            }
            len |= ((b & 0x7f) as u64) << (7 * used);
            used += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        if len > MAX_MESSAGE_BYTES {
            return Err(WireError::TooLarge(len));
        }
        if (avail.len() - used) < len as usize {
            return Ok(None);
        }
        let body = &avail[used..used + len as usize];
        let msg = postcard::from_bytes(body).map_err(|e| WireError::Malformed(e.to_string()))?;
        self.start += used + len as usize;
        if self.start > (1 << 20) && self.start * 2 > self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(Some(msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_survive_any_split() {
        let msgs = vec![
            Message::Bye,
            Message::PackData {
                offset: 1 << 40,
                bytes: vec![9; 70_000],
            },
            Message::PackAck { offset: 5 },
            Message::KeepAlive,
        ];
        let stream: Vec<u8> = msgs.iter().flat_map(encode_message).collect();
        for step in [1, 2, 7, 1000, stream.len()] {
            let mut d = MessageDecoder::default();
            let mut out = Vec::new();
            for chunk in stream.chunks(step) {
                d.push(chunk);
                while let Some(m) = d.next_message().unwrap() {
                    out.push(m);
                }
            }
            assert_eq!(out, msgs);
        }
    }

    #[test]
    fn oversized_length_is_refused_without_allocating() {
        let mut d = MessageDecoder::default();
        d.push(&[0xff, 0xff, 0xff, 0xff, 0x7f]);
        assert!(matches!(d.next_message(), Err(WireError::TooLarge(_))));
    }

    #[test]
    fn garbage_message_is_malformed() {
        let mut d = MessageDecoder::default();
        d.push(&[3, 0xee, 0xee, 0xee]);
        assert!(matches!(d.next_message(), Err(WireError::Malformed(_))));
    }

    #[test]
    fn records_split_and_join() {
        let mut r = RecordDecoder::default();
        r.push(&[0, 3, 1, 2]);
        assert_eq!(r.next_record(), None);
        r.push(&[3, 0, 0, 0, 1]);
        assert_eq!(r.next_record(), Some(vec![1, 2, 3]));
        assert_eq!(r.next_record(), Some(vec![]));
        assert_eq!(r.pending(), 2);
    }
}
