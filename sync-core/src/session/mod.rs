//! The sans-IO transfer window both ends use.
//!
//! - [`upload`]: frames, bytes in flight, acknowledgements, rate.

pub mod upload;
