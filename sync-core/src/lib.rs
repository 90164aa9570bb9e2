//! `sync-core`: the engine both programs are built on. `sync-ground` (the operator's tool) and
//! `sync-onboard` (the satellite's daemon) are thin command lines over it.
//!
//! # Layout
//!
//! What is synced, and how it is described:
//! - [`path`]: `VolumePath` and `PodName`, the only way a path or pod name enters the engine.
//! - [`id`]: typed BLAKE3 ids (content, manifest, pack, node).
//! - [`manifest`]: a volume's state (sorted entries, canonical root id), `diff`, scans with a
//!   stat cache, path filters, what a scan left out.
//!
//! How changes travel:
//! - [`delta`]: pure byte deltas (zstd reference prefix, rsync signatures).
//! - [`pack`]: the changeset on the wire: its byte layout, planning, encoding, capped decoding.
//! - [`wire`]: every byte layout of the link (handshake, records, frames, messages, blobs).
//! - [`window`]: the transfer window, sans-IO, for both directions.
//! - [`link`]: the only code that owns sockets: a link over any stream, the daemon's accept
//!   loop and connections, the simulated link.
//!
//! Where changes land:
//! - [`volume`]: pod volumes behind directory handles; a changeset prepared, then applied.
//! - [`apply`]: one journaled apply for both ends (decode into staging, journal, renames,
//!   roll-forward).
//! - [`state`]: SQLite: the schema and every column's encoding, for each end.
//! - [`object`]: the ground's store of the exact bytes it sent (bases for the next push).
//! - [`sparse`]: holes of sparse files, found, passed over unread, and kept when copied.
//!
//! The two ends:
//! - [`ground`]: the ground's state folder, the client, and one file per operation (push, send,
//!   rm, pass, pull).
//! - [`onboard`]: the daemon's service and per-connection session, one file per request family.
//!
//! [`units`] reads sizes, durations and rates as operators write them; `testing` (feature
//! `testing`) holds the providers and generators that tests, benches and fuzz share.
//! ARCHITECTURE.md at the repository's root says how a push and a pull flow through these.

pub mod apply;
pub mod delta;
pub mod ground;
pub mod id;
pub mod link;
pub mod manifest;
pub mod object;
pub mod onboard;
pub mod pack;
pub mod path;
pub mod sparse;
pub mod state;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod units;
pub mod volume;
pub mod window;
pub mod wire;
