//! The onboard end of the protocol, and the sending window both ends use. (The ground's end,
//! which drives a link itself, is [`crate::ground`].)
//!
//! - [`onboard`]: the service that owns volumes and state, and a per-connection session that
//!   answers each message with replies (it does storage I/O, never network I/O).
//! - [`pull`]: the node's side of a pull: where a pull pack's bytes come from.
//! - [`upload`]: the sans-IO transfer window (frames, bytes in flight, acknowledgements, rate).

pub mod onboard;
pub mod pull;
pub mod upload;
