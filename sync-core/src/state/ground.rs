//! The ground's tables: what it knows each pod holds, its content-store index, outgoing packs.

use rusqlite::{OptionalExtension, params};

use super::{Db, StateError, blob32, now_secs, pack_manifest, unpack_manifest};
use crate::id::{ContentId, ManifestId, NodeId, PackId};
use crate::manifest::Manifest;
use crate::path::PodName;

#[derive(Debug, Clone)]
pub struct KnownManifest {
    pub root: ManifestId,
    pub manifest: Manifest,
}

#[derive(Debug, Clone)]
pub struct OutgoingPack {
    pub pack: PackId,
    pub node: NodeId,
    pub pod: PodName,
    pub len: u64,
    pub acked: u64,
    pub base_root: ManifestId,
    pub target_root: ManifestId,
    pub target: Manifest,
    /// The local folder the pack was built from, for status output.
    pub source: String,
    pub state: String,
}

impl Db {
    pub fn known_manifest(
        &self,
        node: &NodeId,
        pod: &PodName,
    ) -> Result<Option<KnownManifest>, StateError> {
        let row: Option<(Vec<u8>, Vec<u8>)> = self
            .conn()
            .query_row(
                "SELECT root, manifest FROM known_manifest WHERE node = ?1 AND pod = ?2",
                params![node.to_hex(), pod.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((root, blob)) = row else {
            return Ok(None);
        };
        let manifest = unpack_manifest(&blob)?;
        let root = ManifestId(blob32(root, "manifest root")?);
        if manifest.root() != root {
            return Err(StateError::Corrupt("known manifest (root mismatch)"));
        }
        Ok(Some(KnownManifest { root, manifest }))
    }

    pub fn set_known_manifest(
        &self,
        node: &NodeId,
        pod: &PodName,
        manifest: &Manifest,
    ) -> Result<(), StateError> {
        self.conn().execute(
            "INSERT INTO known_manifest (node, pod, root, manifest, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(node, pod) DO UPDATE SET root = excluded.root,
                 manifest = excluded.manifest, updated_at = excluded.updated_at",
            params![
                node.to_hex(),
                pod.as_str(),
                &manifest.root().0[..],
                pack_manifest(manifest),
                now_secs()
            ],
        )?;
        Ok(())
    }

    /// Every content id some known manifest refers to: what the content store must keep.
    pub fn referenced_content(&self) -> Result<std::collections::HashSet<ContentId>, StateError> {
        let mut stmt = self.conn().prepare("SELECT manifest FROM known_manifest")?;
        let mut out = std::collections::HashSet::new();
        for blob in stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))? {
            for e in unpack_manifest(&blob?)?.entries() {
                if let Some(id) = e.file_id() {
                    out.insert(id);
                }
            }
        }
        Ok(out)
    }

    pub fn insert_outgoing(&self, p: &OutgoingPack) -> Result<(), StateError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO outgoing
             (pack, node, pod, len, acked, base_root, target_root, target, source, state, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                &p.pack.0[..],
                p.node.to_hex(),
                p.pod.as_str(),
                p.len as i64,
                p.acked as i64,
                &p.base_root.0[..],
                &p.target_root.0[..],
                pack_manifest(&p.target),
                p.source,
                p.state,
                now_secs()
            ],
        )?;
        Ok(())
    }

    pub fn set_outgoing_progress(
        &self,
        pack: &PackId,
        acked: u64,
        state: &str,
    ) -> Result<(), StateError> {
        self.conn().execute(
            "UPDATE outgoing SET acked = ?2, state = ?3 WHERE pack = ?1",
            params![&pack.0[..], acked as i64, state],
        )?;
        Ok(())
    }

    pub fn delete_outgoing(&self, pack: &PackId) -> Result<(), StateError> {
        self.conn()
            .execute("DELETE FROM outgoing WHERE pack = ?1", [&pack.0[..]])?;
        Ok(())
    }

    /// Outgoing packs for a pod of a node, oldest first.
    pub fn outgoing_for(
        &self,
        node: &NodeId,
        pod: &PodName,
    ) -> Result<Vec<OutgoingPack>, StateError> {
        let mut stmt = self.conn().prepare(
            "SELECT pack, len, acked, base_root, target_root, target, source, state
             FROM outgoing WHERE node = ?1 AND pod = ?2 ORDER BY created_at, rowid",
        )?;
        let rows = stmt.query_map(params![node.to_hex(), pod.as_str()], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, Vec<u8>>(4)?,
                r.get::<_, Vec<u8>>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, String>(7)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (pack, len, acked, base, target_root, target, source, state) = row?;
            out.push(OutgoingPack {
                pack: PackId(blob32(pack, "pack id")?),
                node: *node,
                pod: pod.clone(),
                len: len as u64,
                acked: acked as u64,
                base_root: ManifestId(blob32(base, "manifest root")?),
                target_root: ManifestId(blob32(target_root, "manifest root")?),
                target: unpack_manifest(&target)?,
                source,
                state,
            });
        }
        Ok(out)
    }
}
