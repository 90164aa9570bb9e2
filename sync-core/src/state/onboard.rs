//! The onboard tables: node identity, recent pod manifests, incoming packs, the apply journal.

use std::collections::HashMap;

use rusqlite::{OptionalExtension, params};

use super::column::{blob32, manifest_column, manifest_from_column, plan_column, plan_from_column};
use super::{Db, StateError, now_secs};
use crate::id::{ManifestId, NodeId, PackId};
use crate::manifest::Manifest;
use crate::path::{PodName, VolumePath};
use crate::volume::ApplyPlan;

/// How many past manifests of a pod are kept to answer with deltas.
const KEEP_MANIFESTS: i64 = 8;
/// Manifests of grounds' copies kept per pod: a few grounds, each with a few `--path` selections.
const KEEP_COPY_MANIFESTS: i64 = 16;

/// Which manifests: of a pod's volume (bases of pushes), or of grounds' copies (bases of pulls).
#[derive(Clone, Copy)]
enum Shelf {
    Volume,
    Copy,
}

impl Shelf {
    /// The table (a fixed name, never from input) and how many per pod it keeps.
    fn table(self) -> (&'static str, i64) {
        match self {
            Shelf::Volume => ("pod_manifest", KEEP_MANIFESTS),
            Shelf::Copy => ("copy_manifest", KEEP_COPY_MANIFESTS),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingPack {
    pub pack: PackId,
    pub pod: PodName,
    /// `None` while the ground is still encoding it (it says the length at the end).
    pub len: Option<u64>,
    pub received: u64,
    pub base_root: ManifestId,
    pub target_root: ManifestId,
    /// The boot id of the machine when the staged file was last written ("" if unknown).
    pub boot: String,
    /// The folder the push replaces, if not the whole volume.
    pub scope: Option<VolumePath>,
}

/// A pull pack the node built and keeps until the ground has applied it.
#[derive(Debug, Clone)]
pub struct PullPack {
    pub pack: PackId,
    pub pod: PodName,
    /// `None` while the node encodes it.
    pub len: Option<u64>,
    pub base_root: ManifestId,
    pub target_root: ManifestId,
    /// The versions it delivers, recorded as sent once it is applied. (The signature kept for
    /// each is in `pull_signature` ([`Db::put_pull_signature`]); rows written before migration
    /// 8 may hold it here.)
    pub sent: Vec<(crate::onboard::pull::SentVersion, Option<Vec<u8>>)>,
}

/// How a kept pull pack is looked up.
#[derive(Debug, Clone, Copy)]
pub enum PullPackKey {
    Id(PackId),
    Roots(ManifestId, ManifestId),
    /// The pack that leads to this state.
    Target(ManifestId),
}

/// A changeset being applied to a pod's volume: its renames and removals, journaled from just
/// before the first until the last.
#[derive(Debug, Clone)]
pub struct JournalEntry {
    pub pack: PackId,
    pub pod: PodName,
    /// The plan as the column holds it. It is decoded when asked for ([`JournalEntry::plan`]),
    /// not when the journal is read: a row whose plan does not decode (a damaged file, or a
    /// plan a newer version wrote) is that changeset's failure alone, so the daemon still
    /// starts and the other pods still take changes.
    plan: Vec<u8>,
}

impl JournalEntry {
    pub fn new(pack: PackId, pod: PodName, plan: &ApplyPlan) -> Self {
        Self {
            pack,
            pod,
            plan: plan_column(plan),
        }
    }

    /// # Errors
    /// [`StateError::Corrupt`] when the stored plan does not decode.
    pub fn plan(&self) -> Result<ApplyPlan, StateError> {
        plan_from_column(&self.plan, "journal plan")
    }
}

impl Db {
    /// This node's id, created on first use.
    pub fn node_id(&self) -> Result<NodeId, StateError> {
        if let Some(v) = self.meta("node_id")? {
            let id: [u8; 16] = v.try_into().map_err(|_| StateError::Corrupt("node id"))?;
            return Ok(NodeId(id));
        }
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).map_err(|_| StateError::Corrupt("random source"))?;
        self.set_meta("node_id", &id)?;
        Ok(NodeId(id))
    }

    /// Remembers a manifest of `pod`'s volume (keeping the most recent few).
    pub fn remember_pod_manifest(&self, pod: &PodName, m: &Manifest) -> Result<(), StateError> {
        self.remember(Shelf::Volume, pod, m)
    }

    pub fn pod_manifest(
        &self,
        pod: &PodName,
        root: &ManifestId,
    ) -> Result<Option<Manifest>, StateError> {
        self.recall(Shelf::Volume, pod, root)
    }

    /// Remembers the manifest a ground's copy of `pod` will have once a pull pack is applied,
    /// apart from the volume's: many copies (other `--path`s, other grounds) must not push out
    /// the bases pushes need, nor the other way round.
    pub fn remember_copy_manifest(&self, pod: &PodName, m: &Manifest) -> Result<(), StateError> {
        self.remember(Shelf::Copy, pod, m)
    }

    pub fn copy_manifest(
        &self,
        pod: &PodName,
        root: &ManifestId,
    ) -> Result<Option<Manifest>, StateError> {
        self.recall(Shelf::Copy, pod, root)
    }

    fn remember(&self, shelf: Shelf, pod: &PodName, m: &Manifest) -> Result<(), StateError> {
        let (table, keep) = shelf.table();
        self.conn().execute(
            &format!(
                "INSERT INTO {table} (pod, root, manifest, seen_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(pod, root) DO UPDATE SET seen_at = excluded.seen_at"
            ),
            params![
                pod.as_str(),
                &m.root().0[..],
                manifest_column(m),
                now_secs()
            ],
        )?;
        self.conn().execute(
            &format!(
                "DELETE FROM {table} WHERE pod = ?1 AND root NOT IN
                 (SELECT root FROM {table} WHERE pod = ?1 ORDER BY seen_at DESC, rowid DESC LIMIT ?2)"
            ),
            params![pod.as_str(), keep],
        )?;
        Ok(())
    }

    fn recall(
        &self,
        shelf: Shelf,
        pod: &PodName,
        root: &ManifestId,
    ) -> Result<Option<Manifest>, StateError> {
        let (table, _) = shelf.table();
        let blob: Option<Vec<u8>> = self
            .conn()
            .query_row(
                &format!("SELECT manifest FROM {table} WHERE pod = ?1 AND root = ?2"),
                params![pod.as_str(), &root.0[..]],
                |r| r.get(0),
            )
            .optional()?;
        blob.map(|b| manifest_from_column(&b)).transpose()
    }

    pub fn incoming(&self, pack: &PackId) -> Result<Option<IncomingPack>, StateError> {
        let row = self
            .conn()
            .query_row(
                "SELECT pod, len, received, base_root, target_root, boot, scope FROM incoming WHERE pack = ?1",
                [&pack.0[..]],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Vec<u8>>(3)?,
                        r.get::<_, Vec<u8>>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, Option<String>>(6)?,
                    ))
                },
            )
            .optional()?;
        let Some((pod, len, received, base, target, boot, scope)) = row else {
            return Ok(None);
        };
        Ok(Some(IncomingPack {
            pack: *pack,
            pod: PodName::new(pod).map_err(|_| StateError::Corrupt("pod name"))?,
            len: super::column::pack_len_from(len),
            received: received as u64,
            base_root: ManifestId(blob32(base, "manifest root")?),
            target_root: ManifestId(blob32(target, "manifest root")?),
            boot,
            scope: scope
                .map(VolumePath::new)
                .transpose()
                .map_err(|_| StateError::Corrupt("scope"))?,
        }))
    }

    pub fn put_incoming(&self, p: &IncomingPack) -> Result<(), StateError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO incoming
             (pack, pod, len, received, base_root, target_root, updated_at, boot, scope)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                &p.pack.0[..],
                p.pod.as_str(),
                super::column::pack_len_to(p.len),
                p.received as i64,
                &p.base_root.0[..],
                &p.target_root.0[..],
                now_secs(),
                p.boot,
                p.scope.as_ref().map(|v| v.as_str())
            ],
        )?;
        Ok(())
    }

    /// Packs being received that no connection has continued for `secs`.
    pub fn stale_incoming(&self, secs: i64) -> Result<Vec<PackId>, StateError> {
        self.packs_older("SELECT pack FROM incoming WHERE updated_at < ?1", secs)
    }

    /// Pull packs built more than `secs` ago.
    pub fn stale_pull_packs(&self, secs: i64) -> Result<Vec<PackId>, StateError> {
        self.packs_older("SELECT pack FROM pull_pack WHERE created_at < ?1", secs)
    }

    fn packs_older(&self, sql: &str, secs: i64) -> Result<Vec<PackId>, StateError> {
        let mut stmt = self.conn().prepare(sql)?;
        let rows = stmt.query_map([now_secs() - secs], |r| r.get::<_, Vec<u8>>(0))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(PackId(blob32(r?, "pack id")?));
        }
        Ok(out)
    }

    pub fn delete_incoming(&self, pack: &PackId) -> Result<(), StateError> {
        self.conn()
            .execute("DELETE FROM incoming WHERE pack = ?1", [&pack.0[..]])?;
        Ok(())
    }

    /// Records that `pack` was applied to `pod`, leaving it at `root`; keeps the last 64.
    pub fn remember_applied(
        &self,
        pack: &PackId,
        pod: &PodName,
        root: &ManifestId,
    ) -> Result<(), StateError> {
        let c = self.conn();
        c.execute(
            "INSERT OR REPLACE INTO applied (pack, pod, root, applied_at) VALUES (?1, ?2, ?3, ?4)",
            params![&pack.0[..], pod.as_str(), &root.0[..], now_secs()],
        )?;
        c.execute(
            "DELETE FROM applied WHERE rowid NOT IN
             (SELECT rowid FROM applied ORDER BY applied_at DESC, rowid DESC LIMIT 64)",
            [],
        )?;
        Ok(())
    }

    /// The root a recently applied pack left its pod at.
    pub fn applied(&self, pack: &PackId, pod: &PodName) -> Result<Option<ManifestId>, StateError> {
        let root: Option<Vec<u8>> = self
            .conn()
            .query_row(
                "SELECT root FROM applied WHERE pack = ?1 AND pod = ?2",
                params![&pack.0[..], pod.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        root.map(|r| Ok(ManifestId(blob32(r, "manifest root")?)))
            .transpose()
    }

    pub fn put_pull_pack(&self, p: &PullPack) -> Result<(), StateError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO pull_pack
             (pack, pod, len, base_root, target_root, sent, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                &p.pack.0[..],
                p.pod.as_str(),
                super::column::pack_len_to(p.len),
                &p.base_root.0[..],
                &p.target_root.0[..],
                postcard::to_stdvec(&p.sent).expect("sent versions"),
                now_secs()
            ],
        )?;
        Ok(())
    }

    /// A kept pull pack by id, or the one for a pod taking `base_root` to `target_root`.
    pub fn pull_pack(
        &self,
        pod: &PodName,
        by: PullPackKey,
    ) -> Result<Option<PullPack>, StateError> {
        let (sql, a, b): (&str, Vec<u8>, Vec<u8>) = match by {
            PullPackKey::Id(p) => (
                "SELECT pack, len, base_root, target_root, sent FROM pull_pack
                 WHERE pod = ?1 AND pack = ?2 AND ?3 = ?3",
                p.0.to_vec(),
                Vec::new(),
            ),
            PullPackKey::Roots(base, target) => (
                "SELECT pack, len, base_root, target_root, sent FROM pull_pack
                 WHERE pod = ?1 AND base_root = ?2 AND target_root = ?3
                 ORDER BY len < 0, created_at DESC",
                base.0.to_vec(),
                target.0.to_vec(),
            ),
            PullPackKey::Target(target) => (
                "SELECT pack, len, base_root, target_root, sent FROM pull_pack
                 WHERE pod = ?1 AND target_root = ?2 AND ?3 = ?3
                 ORDER BY len < 0, created_at DESC",
                target.0.to_vec(),
                Vec::new(),
            ),
        };
        let row = self
            .conn()
            .query_row(sql, params![pod.as_str(), a, b], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, Vec<u8>>(4)?,
                ))
            })
            .optional()?;
        let Some((pack, len, base, target, sent)) = row else {
            return Ok(None);
        };
        Ok(Some(PullPack {
            pack: PackId(blob32(pack, "pack id")?),
            pod: pod.clone(),
            len: super::column::pack_len_from(len),
            base_root: ManifestId(blob32(base, "manifest root")?),
            target_root: ManifestId(blob32(target, "manifest root")?),
            sent: postcard::from_bytes(&sent).map_err(|_| StateError::Corrupt("sent versions"))?,
        }))
    }

    /// A kept pull pack by id, whatever its pod.
    pub fn pull_pack_any(&self, pack: &PackId) -> Result<Option<PullPack>, StateError> {
        let pod: Option<String> = self
            .conn()
            .query_row(
                "SELECT pod FROM pull_pack WHERE pack = ?1",
                [&pack.0[..]],
                |r| r.get(0),
            )
            .optional()?;
        match pod {
            Some(p) => {
                let pod = PodName::new(p).map_err(|_| StateError::Corrupt("pod name"))?;
                self.pull_pack(&pod, PullPackKey::Id(*pack))
            }
            None => Ok(None),
        }
    }

    pub fn delete_pull_pack(&self, pack: &PackId) -> Result<(), StateError> {
        let tx = self.conn().unchecked_transaction()?;
        tx.execute("DELETE FROM pull_pack WHERE pack = ?1", [&pack.0[..]])?;
        tx.execute("DELETE FROM pull_signature WHERE pack = ?1", [&pack.0[..]])?;
        tx.commit()?;
        Ok(())
    }

    /// The pull pack being encoded is whole at `len` bytes.
    pub fn set_pull_pack_len(&self, pack: &PackId, len: u64) -> Result<(), StateError> {
        self.conn().execute(
            "UPDATE pull_pack SET len = ?2 WHERE pack = ?1",
            params![&pack.0[..], len as i64],
        )?;
        Ok(())
    }

    /// Pull packs whose encoding never ended (the daemon stopped meanwhile).
    pub fn unfinished_pull_packs(&self) -> Result<Vec<PackId>, StateError> {
        self.packs_older("SELECT pack FROM pull_pack WHERE len < 0 AND ?1 = ?1", 0)
    }

    /// The signatures kept of content pull pack `pack` delivers, by id, in one transaction.
    pub fn put_pull_signatures(
        &self,
        pack: &PackId,
        sigs: &[(crate::id::ContentId, Vec<u8>)],
    ) -> Result<(), StateError> {
        let tx = self.conn().unchecked_transaction()?;
        {
            let mut put = tx.prepare(
                "INSERT OR REPLACE INTO pull_signature (pack, id, signature) VALUES (?1, ?2, ?3)",
            )?;
            for (id, sig) in sigs {
                put.execute(params![&pack.0[..], &id.0[..], sig])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// A kept pull pack's length (`Some(None)` while it is encoded), without what it delivers.
    pub fn pull_pack_len(&self, pack: &PackId) -> Result<Option<Option<u64>>, StateError> {
        let len: Option<i64> = self
            .conn()
            .query_row(
                "SELECT len FROM pull_pack WHERE pack = ?1",
                [&pack.0[..]],
                |r| r.get(0),
            )
            .optional()?;
        Ok(len.map(super::column::pack_len_from))
    }

    /// Records versions pull pack `pack` delivered, with the signatures kept of them; keeps the
    /// newest 100,000 per pod.
    pub fn remember_sent(
        &self,
        pod: &PodName,
        pack: &PackId,
        sent: &[(crate::onboard::pull::SentVersion, Option<Vec<u8>>)],
    ) -> Result<(), StateError> {
        let tx = self.conn().unchecked_transaction()?;
        {
            let mut put = tx.prepare(
                "INSERT OR REPLACE INTO sent_version (pod, id, path, len, signature, sent_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for (v, sig) in sent {
                put.execute(params![
                    pod.as_str(),
                    &v.id.0[..],
                    v.path.as_str(),
                    v.len as i64,
                    sig,
                    now_secs()
                ])?;
            }
        }
        // In the database, not through this process: a large pull's signatures add up to
        // more than the node's memory bound.
        tx.execute(
            "UPDATE sent_version SET signature = (SELECT signature FROM pull_signature s
             WHERE s.pack = ?2 AND s.id = sent_version.id)
             WHERE pod = ?1 AND id IN (SELECT id FROM pull_signature WHERE pack = ?2)",
            params![pod.as_str(), &pack.0[..]],
        )?;
        tx.execute(
            "DELETE FROM sent_version WHERE pod = ?1 AND rowid NOT IN (SELECT rowid FROM
             sent_version WHERE pod = ?1 ORDER BY sent_at DESC, rowid DESC LIMIT 100000)",
            [pod.as_str()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The kept signatures of versions sent, by id.
    pub fn sent_signatures(
        &self,
        pod: &PodName,
        ids: &[crate::id::ContentId],
    ) -> Result<HashMap<crate::id::ContentId, Vec<u8>>, StateError> {
        let c = self.conn();
        let mut get = c.prepare(
            "SELECT signature FROM sent_version WHERE pod = ?1 AND id = ?2
             AND signature IS NOT NULL",
        )?;
        let mut out = HashMap::new();
        for id in ids {
            let sig: Option<Vec<u8>> = get
                .query_row(params![pod.as_str(), &id.0[..]], |r| r.get(0))
                .optional()?;
            if let Some(sig) = sig {
                out.insert(*id, sig);
            }
        }
        Ok(out)
    }

    /// What was sent of `ids` (those the ground says it holds).
    pub fn sent_versions(
        &self,
        pod: &PodName,
        ids: &[crate::id::ContentId],
    ) -> Result<Vec<crate::onboard::pull::SentVersion>, StateError> {
        let c = self.conn();
        let mut get = c.prepare("SELECT path, len FROM sent_version WHERE pod = ?1 AND id = ?2")?;
        let mut out = Vec::new();
        for id in ids {
            let row: Option<(String, i64)> = get
                .query_row(params![pod.as_str(), &id.0[..]], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
            if let Some((path, len)) = row {
                out.push(crate::onboard::pull::SentVersion {
                    id: *id,
                    path: VolumePath::new(path).map_err(|_| StateError::Corrupt("sent path"))?,
                    len: len as u64,
                });
            }
        }
        Ok(out)
    }

    pub fn journal_begin(&self, e: &JournalEntry) -> Result<(), StateError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO journal (pack, pod, plan, started_at) VALUES (?1, ?2, ?3, ?4)",
            params![&e.pack.0[..], e.pod.as_str(), e.plan, now_secs()],
        )?;
        Ok(())
    }

    pub fn journal_end(&self, pack: &PackId) -> Result<(), StateError> {
        self.conn()
            .execute("DELETE FROM journal WHERE pack = ?1", [&pack.0[..]])?;
        Ok(())
    }

    pub fn journal_entries(&self) -> Result<Vec<JournalEntry>, StateError> {
        let mut stmt = self
            .conn()
            .prepare("SELECT pack, pod, plan FROM journal ORDER BY started_at")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (pack, pod, plan) = row?;
            out.push(JournalEntry {
                pack: PackId(blob32(pack, "pack id")?),
                pod: PodName::new(pod).map_err(|_| StateError::Corrupt("pod name"))?,
                plan,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Entry, EntryKind};
    use crate::path::VolumePath;

    #[test]
    fn sent_versions_are_found_by_id() {
        use crate::onboard::pull::SentVersion;
        let db = Db::open_in_memory().unwrap();
        let pod = PodName::new("p".to_string()).unwrap();
        let v = SentVersion {
            id: crate::id::ContentId::of(b"log v1"),
            path: VolumePath::new("logs/a.log").unwrap(),
            len: 6,
        };
        db.remember_sent(&pod, &PackId([9; 32]), &[(v.clone(), Some(vec![1, 2, 3]))])
            .unwrap();
        let other = crate::id::ContentId::of(b"never sent");
        assert_eq!(
            db.sent_versions(&pod, &[v.id, other]).unwrap(),
            vec![v.clone()]
        );
        let elsewhere = PodName::new("q".to_string()).unwrap();
        assert!(db.sent_versions(&elsewhere, &[v.id]).unwrap().is_empty());
    }

    #[test]
    fn node_id_is_stable() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("onboard.db");
        let db = Db::open(&path).unwrap();
        let id = db.node_id().unwrap();
        assert_eq!(db.node_id().unwrap(), id);
        drop(db);
        // The node keeps its id across restarts: the grounds know it by that id.
        let db = Db::open(&path).unwrap();
        assert_eq!(db.node_id().unwrap(), id);
    }

    #[test]
    fn only_recent_pod_manifests_are_kept() {
        let db = Db::open_in_memory().unwrap();
        let pod = PodName::new("p").unwrap();
        let mut roots = Vec::new();
        for i in 0..12 {
            let m = Manifest::new(vec![Entry {
                path: VolumePath::new(format!("f{i}")).unwrap(),
                kind: EntryKind::Dir,
                mode: 0o755,
                mtime: 0,
            }])
            .unwrap();
            db.remember_pod_manifest(&pod, &m).unwrap();
            roots.push(m.root());
        }
        assert!(db.pod_manifest(&pod, &roots[0]).unwrap().is_none());
        assert!(db.pod_manifest(&pod, &roots[11]).unwrap().is_some());
        let n: i64 = db
            .conn()
            .query_row("SELECT count(*) FROM pod_manifest", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, KEEP_MANIFESTS);
    }

    /// Manifests of grounds' copies live apart from the volume's: pulls into many copies never
    /// push out the manifest a push's base needs.
    #[test]
    fn copy_manifests_do_not_push_out_volume_manifests() {
        let db = Db::open_in_memory().unwrap();
        let pod = PodName::new("p").unwrap();
        let m = |i: usize| {
            Manifest::new(vec![Entry {
                path: VolumePath::new(format!("f{i}")).unwrap(),
                kind: EntryKind::Dir,
                mode: 0o755,
                mtime: 0,
            }])
            .unwrap()
        };
        db.remember_pod_manifest(&pod, &m(0)).unwrap();
        for i in 1..=40 {
            db.remember_copy_manifest(&pod, &m(i)).unwrap();
        }
        assert!(db.pod_manifest(&pod, &m(0).root()).unwrap().is_some());
        assert!(db.copy_manifest(&pod, &m(0).root()).unwrap().is_none());
        assert!(db.copy_manifest(&pod, &m(40).root()).unwrap().is_some());
        assert!(db.copy_manifest(&pod, &m(1).root()).unwrap().is_none());
        let n: i64 = db
            .conn()
            .query_row("SELECT count(*) FROM copy_manifest", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, KEEP_COPY_MANIFESTS);
    }
}
