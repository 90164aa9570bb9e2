//! Typed identifiers. Every hash in the engine is BLAKE3; the type says what was hashed, so a
//! manifest root can never be passed where a content id is expected.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! hash_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// Lower-case hex, the form used in logs, `--json` output and on disk.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// Parses the 64-character hex form.
            pub fn from_hex(s: &str) -> Option<Self> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out).ok()?;
                Some(Self(out))
            }

            /// The first 12 hex digits: enough to tell ids apart in a human summary.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..6])
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }
    };
}

hash_id!(
    /// BLAKE3 of a file's bytes (or of a symlink's target text).
    ContentId
);
hash_id!(
    /// BLAKE3 of a manifest's canonical encoding: names one exact state of a volume.
    ManifestId
);
hash_id!(
    /// Names one transfer of a pack: derived from the pack's bytes, so a resumed transfer can
    /// never splice two packs, and (for a push) from what it is for, so two pods or folders that
    /// receive identical bytes are two transfers, each queued, staged and applied on its own.
    PackId
);

impl PackId {
    /// The id of a push sent while its pack is encoded: the node, pod and folder it goes to,
    /// the states it goes from and to, and what makes this push unlike any other (the time
    /// and the process). Two pushes of identical folders to two pods are two pushes, and a push
    /// planned again is a new one: its bytes may differ from the first one's.
    pub fn for_plan(
        node: &NodeId,
        pod: &str,
        dest: Option<&str>,
        base_root: &ManifestId,
        target_root: &ManifestId,
    ) -> Self {
        let mut h = blake3::Hasher::new_derive_key("orbit-sync 2026-11 planned push id");
        h.update(&node.0);
        for part in [pod, dest.unwrap_or("")] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.update(&[dest.is_some() as u8]);
        h.update(&base_root.0);
        h.update(&target_root.0);
        Self::unlike_any_other(h)
    }

    /// The id of a pull pack the node is about to encode (its bytes do not exist yet): the pod
    /// and the states it goes from and to, and the moment, so that a pack encoded again is a
    /// new one.
    pub fn for_pull(
        pod: &crate::path::PodName,
        base_root: &ManifestId,
        target_root: &ManifestId,
    ) -> Self {
        let mut h = blake3::Hasher::new_derive_key("orbit-sync 2026-11 pull pack id");
        h.update(&(pod.as_str().len() as u64).to_le_bytes());
        h.update(pod.as_str().as_bytes());
        h.update(&base_root.0);
        h.update(&target_root.0);
        Self::unlike_any_other(h)
    }

    /// `h`, with what makes this moment unlike any other (the time, the process, a count), as
    /// an id: one for each time a pack is planned.
    fn unlike_any_other(mut h: blake3::Hasher) -> Self {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        h.update(&now.as_nanos().to_le_bytes());
        h.update(&std::process::id().to_le_bytes());
        h.update(
            &SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .to_le_bytes(),
        );
        Self(*h.finalize().as_bytes())
    }

    /// The id of a push: the pack's bytes (their BLAKE3, `pack`) and the node, pod and folder
    /// (`dest`, or the whole volume) it goes to. Identical folders pushed to two pods are two
    /// pushes, never one.
    pub fn for_push(pack: &[u8; 32], node: &NodeId, pod: &str, dest: Option<&str>) -> Self {
        let mut h = blake3::Hasher::new_derive_key("orbit-sync 2026-11 push id");
        h.update(pack);
        h.update(&node.0);
        // Lengths first, so no two (pod, dest) pairs hash alike.
        for part in [pod, dest.unwrap_or("")] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.update(&[dest.is_some() as u8]);
        Self(*h.finalize().as_bytes())
    }
}

impl ContentId {
    /// Hashes a whole buffer.
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }

    /// The id of the empty file; every volume may hold it without an object being sent.
    pub fn empty() -> Self {
        Self::of(&[])
    }
}

/// A random identity the onboard side creates once and keeps in its state, so the ground can tell
/// two satellites (or a re-installed one) apart and never trusts knowledge about another node.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub [u8; 16]);

impl NodeId {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 16];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }

    /// The first 8 hex digits, for human output.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = ContentId::of(b"pod data");
        assert_eq!(ContentId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(ContentId::from_hex("zz"), None);
        assert_eq!(id.short().len(), 12);
    }

    #[test]
    fn a_push_id_names_its_pod_and_folder_as_well_as_its_bytes() {
        let node = NodeId([7; 16]);
        let a = PackId::for_push(&[7; 32], &node, "p1", None);
        assert_eq!(a, PackId::for_push(&[7; 32], &node, "p1", None));
        for other in [
            PackId::for_push(&[7; 32], &node, "p2", None),
            PackId::for_push(&[7; 32], &node, "p1", Some("")),
            PackId::for_push(&[7; 32], &node, "p1", Some("in")),
            PackId::for_push(&[7; 32], &NodeId([8; 16]), "p1", None),
            PackId::for_push(&[8; 32], &node, "p1", None),
            PackId(*blake3::hash(b"pack").as_bytes()),
        ] {
            assert_ne!(a, other);
        }
    }

    #[test]
    fn empty_id_is_blake3_of_nothing() {
        assert_eq!(
            ContentId::empty().to_hex(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }
}
