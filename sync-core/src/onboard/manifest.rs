//! What a ground asks before it plans a push: the pod's manifest (the same as it knows, a
//! delta from it, or whole) and rsync signatures of files only the pod's volume holds.

use std::collections::HashSet;

use crate::delta::rsync;
use crate::id::ManifestId;
use crate::manifest::diff;
use crate::pack::BaseReader;
use crate::path::PodName;
use crate::wire::{ErrorKind, ManifestBody, Message, blob};

use super::{OnboardService, Refusal, with_skipped};
use crate::apply::VolumeReader;

impl OnboardService {
    /// The pod's manifest (after what it left out of it, if anything).
    pub(super) fn manifest_reply(
        &self,
        pod: PodName,
        known: Option<ManifestId>,
    ) -> Result<Vec<Message>, Refusal> {
        let lock = self.pod_lock(&pod);
        let _held = lock.lock().expect("pod lock");
        self.settle_pod(&pod)?;
        let (current, left_out) = self.scan_pod_reporting(&pod)?;
        let root = current.root();
        let body = match known {
            Some(k) if k == root => ManifestBody::Same,
            Some(k) => match self.db().pod_manifest(&pod, &k)? {
                Some(old) => ManifestBody::Delta {
                    from: k,
                    blob: blob::encode_changes(&diff(&old, &current)),
                },
                None => ManifestBody::Full {
                    blob: blob::encode_manifest(&current),
                },
            },
            None => ManifestBody::Full {
                blob: blob::encode_manifest(&current),
            },
        };
        Ok(with_skipped(
            left_out,
            Message::ManifestReply { pod, root, body },
        ))
    }

    /// Rsync signatures of `entries` of the pod's manifest `base_root`, as the volume holds
    /// them now.
    pub(super) fn signatures(
        &self,
        pod: &PodName,
        base_root: &ManifestId,
        entries: &[u32],
    ) -> Result<Message, Refusal> {
        let base = self.db().pod_manifest(pod, base_root)?.ok_or_else(|| {
            Refusal::conflict("that manifest of the pod is no longer known; ask again")
        })?;
        let dir = self
            .volumes
            .pod(pod)
            .map_err(Refusal::internal)?
            .ok_or_else(|| Refusal::conflict("the pod has no volume"))?;
        if entries.len() as u64 > self.limits.max_changes {
            return Err(Refusal::new(
                ErrorKind::TooLarge,
                format!("{} signatures asked for at once", entries.len()),
            ));
        }
        let mut seen = HashSet::new();
        let mut sigs = Vec::with_capacity(entries.len());
        for &i in entries {
            let entry = base
                .entries()
                .get(i as usize)
                .filter(|e| e.file_id().is_some())
                .ok_or_else(|| Refusal::refused(format!("entry #{i} is not a file")))?;
            // Each file once, read through a fixed buffer whatever its size.
            if !seen.insert(i) {
                continue;
            }
            let reader = VolumeReader(&dir);
            let file = reader.open_base(entry).map_err(Refusal::internal)?;
            let block = rsync::block_size_for(entry.size());
            let (sig, id) = rsync::signature_stream(file.as_ref(), entry.size(), block)
                .map_err(|_| Refusal::conflict(format!("{} changed onboard", entry.path)))?;
            if Some(id) != entry.file_id() {
                return Err(Refusal::conflict(format!("{} changed onboard", entry.path)));
            }
            sigs.push((i, sig));
        }
        Ok(Message::Signatures {
            blob: blob::encode_signatures(&sigs),
        })
    }
}
