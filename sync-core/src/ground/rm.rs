//! Removing paths from a pod's volume: a push whose target is the volume without them, which
//! carries no content.

use tokio::io::{AsyncRead, AsyncWrite};

use super::push::Update;
use super::queue::scopes_overlap;
use super::{Allowance, Client, Ground, GroundError, PushReport};
use crate::manifest::Manifest;
use crate::path::{PodName, VolumePath};

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Removes `paths` from the pod's volume.
    pub async fn remove(
        &mut self,
        ground: &mut Ground,
        pod: &PodName,
        paths: &[VolumePath],
        recursive: bool,
    ) -> Result<PushReport, GroundError> {
        let base = self.manifest(ground, pod).await?;
        let mut keep: Vec<_> = base.entries().to_vec();
        for p in paths {
            let e = base
                .get(p)
                .ok_or_else(|| GroundError::NotFound(p.to_string()))?;
            if e.is_dir() && !recursive {
                return Err(GroundError::IsFolder(p.to_string()));
            }
            keep.retain(|e| !e.path.is_within(p));
        }
        let target = Manifest::new(keep)?;
        let mut notes = Vec::new();
        // Pushes queued into folders the removal does not reach stay queued.
        let overlaps = |queued: Option<&str>| paths.iter().any(|p| scopes_overlap(queued, Some(p)));
        // A promise to push a folder again must not bring back what is removed now.
        self.end_follow_ups(ground, pod, &overlaps)?;
        if let Some(q) = self.settle_queue(ground, pod, &base, &overlaps, &mut notes)? {
            // A removal changes the base under a queued push; it would only be dropped later.
            notes.push("replaced the queued push: the volume changes first".into());
            self.discard_queued(ground, &q)?;
        }
        let update = Update {
            pod,
            source: None,
            dest: None,
            // Ahead of everything else queued for the node.
            priority: i64::MAX,
            base: &base,
            target: &target,
        };
        let mut r = self
            .plan_and_send(ground, &update, &Allowance::default(), &mut |_| {})
            .await?;
        r.notes = notes;
        Ok(r)
    }
}
