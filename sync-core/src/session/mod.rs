//! The protocol's two ends, free of sockets and runtimes.
//!
//! - [`onboard`]: the service that owns volumes and state, and a per-connection session that
//!   answers each message with replies (it does storage I/O, never network I/O).
//! - [`ground`]: the ground's knowledge (state, content store) and the pure steps of a push:
//!   learning a pod's manifest from a reply, planning and encoding a pack.

pub mod ground;
pub mod onboard;
pub mod pull;
pub mod upload;
