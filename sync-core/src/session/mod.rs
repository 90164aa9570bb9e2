//! The ground's end of the protocol.
//!
//! - [`ground`]: the ground's knowledge (state, content store) and the pure steps of a push:
//!   learning a pod's manifest from a reply, planning and encoding a pack.
//! - [`upload`]: the sans-IO sending window.
//!
//! The onboard end is [`crate::onboard`].

pub mod ground;
pub mod upload;

// The onboard end moved to `crate::onboard`; `ground` (being moved to `crate::ground`) and
// `state` still name it here. Dropped once those moves land.
pub(crate) use crate::onboard;
pub(crate) use crate::onboard::pull;
