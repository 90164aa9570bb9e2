//! The ground's tables: what it knows each pod holds, its content-store index, outgoing packs,
//! pulls being received and the journal of a pull being applied to its copy.

use rusqlite::{OptionalExtension, params};

use super::column::{
    PackState, PullRequestKey, blob32, manifest_column, manifest_from_column, plan_column,
    plan_from_column, summary_column, summary_from_column,
};
use super::{Db, StateError, now_secs};
use crate::id::{ContentId, ManifestId, NodeId, PackId};
use crate::manifest::{ChangeSummary, Manifest};
use crate::path::PodName;
use crate::volume::ApplyPlan;

#[derive(Debug, Clone)]
pub struct KnownManifest {
    pub root: ManifestId,
    pub manifest: Manifest,
}

/// A pack built for a pod: queued, partly sent, or applied (kept a while for `status`).
#[derive(Debug, Clone)]
pub struct OutgoingPack {
    pub pack: PackId,
    pub node: NodeId,
    pub pod: PodName,
    pub len: u64,
    /// Durable onboard, as last acknowledged.
    pub acked: u64,
    pub base_root: ManifestId,
    pub target_root: ManifestId,
    pub target: Manifest,
    /// The local folder the pack was built from (to plan again if the volume moved on); None
    /// for a removal (`rm`), which has none.
    pub source: Option<String>,
    /// `--dest`, if any.
    pub dest: Option<String>,
    pub state: PackState,
    pub priority: i64,
    /// Bytes of new content the pack carries.
    pub content_bytes: u64,
    /// What the pack changes, for the push report and status.
    pub summary: ChangeSummary,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    /// The BLAKE3 of the pack's bytes (rows of packs queued before packs were sent while
    /// encoded have none: their id is that hash, with the node, pod and folder).
    pub hash: Option<[u8; 32]>,
}

const OUTGOING_COLUMNS: &str = "pack, node, pod, len, acked, base_root, target_root, target, \
     source, dest, state, priority, content_bytes, summary, created_at, finished_at, hash";

fn outgoing_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<OutgoingPack, StateError>> {
    let pack: Vec<u8> = r.get(0)?;
    let node: String = r.get(1)?;
    let pod: String = r.get(2)?;
    let base: Vec<u8> = r.get(5)?;
    let target_root: Vec<u8> = r.get(6)?;
    let target: Vec<u8> = r.get(7)?;
    let rest = (
        r.get::<_, i64>(3)?,
        r.get::<_, i64>(4)?,
        r.get::<_, String>(8)?,
        r.get::<_, Option<String>>(9)?,
        r.get::<_, String>(10)?,
        r.get::<_, i64>(11)?,
        r.get::<_, i64>(12)?,
        r.get::<_, String>(13)?,
        r.get::<_, i64>(14)?,
        r.get::<_, Option<i64>>(15)?,
        r.get::<_, Option<Vec<u8>>>(16)?,
    );
    Ok((|| {
        let (len, acked, source, dest, state, priority, content, summary, created, finished, hash) =
            rest;
        Ok(OutgoingPack {
            pack: PackId(blob32(pack, "pack id")?),
            node: NodeId::from_hex(&node).ok_or(StateError::Corrupt("node id"))?,
            pod: PodName::new(pod).map_err(|_| StateError::Corrupt("pod name"))?,
            len: len as u64,
            acked: acked as u64,
            base_root: ManifestId(blob32(base, "manifest root")?),
            target_root: ManifestId(blob32(target_root, "manifest root")?),
            target: manifest_from_column(&target)?,
            // A removal's row holds '' (the column is NOT NULL).
            source: Some(source).filter(|s| !s.is_empty()),
            dest,
            state: PackState::from_column(&state)?,
            priority,
            content_bytes: content as u64,
            summary: summary_from_column(&summary),
            created_at: created,
            finished_at: finished,
            hash: hash.map(|h| blob32(h, "pack hash")).transpose()?,
        })
    })())
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
        let manifest = manifest_from_column(&blob)?;
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
                manifest_column(manifest),
                now_secs()
            ],
        )?;
        Ok(())
    }

    /// Every content id some known manifest refers to: what the content store must keep.
    pub fn referenced_content(&self) -> Result<std::collections::HashSet<ContentId>, StateError> {
        // Content of queued packs' targets is kept too: it is the base of the push after them.
        let mut stmt = self.conn().prepare(
            "SELECT manifest FROM known_manifest
             UNION ALL SELECT target FROM outgoing WHERE state != 'applied'",
        )?;
        let mut out = std::collections::HashSet::new();
        for blob in stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))? {
            for e in manifest_from_column(&blob?)?.entries() {
                if let Some(id) = e.file_id() {
                    out.insert(id);
                }
            }
        }
        Ok(out)
    }

    pub fn insert_outgoing(&self, p: &OutgoingPack) -> Result<(), StateError> {
        self.conn().execute(
            &format!(
                "INSERT OR REPLACE INTO outgoing ({OUTGOING_COLUMNS})
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
            ),
            params![
                &p.pack.0[..],
                p.node.to_hex(),
                p.pod.as_str(),
                p.len as i64,
                p.acked as i64,
                &p.base_root.0[..],
                &p.target_root.0[..],
                manifest_column(&p.target),
                p.source.as_deref().unwrap_or(""),
                p.dest,
                p.state.as_str(),
                p.priority,
                p.content_bytes as i64,
                summary_column(&p.summary),
                p.created_at,
                p.finished_at,
                p.hash.as_ref().map(|h| &h[..]),
            ],
        )?;
        Ok(())
    }

    pub fn set_outgoing_progress(
        &self,
        pack: &PackId,
        acked: u64,
        state: PackState,
    ) -> Result<(), StateError> {
        self.conn().execute(
            "UPDATE outgoing SET acked = ?2, state = ?3 WHERE pack = ?1",
            params![&pack.0[..], acked as i64, state.as_str()],
        )?;
        Ok(())
    }

    /// Marks a pack applied; applied rows older than a week, or beyond the last 20 per pod,
    /// are dropped.
    pub fn finish_outgoing(&self, pack: &PackId) -> Result<(), StateError> {
        let c = self.conn();
        c.execute(
            "UPDATE outgoing SET acked = len, state = 'applied', finished_at = ?2 WHERE pack = ?1",
            params![&pack.0[..], now_secs()],
        )?;
        c.execute(
            "DELETE FROM outgoing WHERE state = 'applied' AND (finished_at < ?1 OR rowid NOT IN (
                 SELECT o.rowid FROM outgoing o WHERE o.state = 'applied'
                 AND o.node = outgoing.node AND o.pod = outgoing.pod
                 ORDER BY o.finished_at DESC LIMIT 20))",
            params![now_secs() - 7 * 24 * 3600],
        )?;
        Ok(())
    }

    pub fn delete_outgoing(&self, pack: &PackId) -> Result<(), StateError> {
        self.conn()
            .execute("DELETE FROM outgoing WHERE pack = ?1", [&pack.0[..]])?;
        Ok(())
    }

    fn outgoing_where(
        &self,
        filter: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<OutgoingPack>, StateError> {
        let mut stmt = self.conn().prepare(&format!(
            "SELECT {OUTGOING_COLUMNS} FROM outgoing WHERE {filter}
             ORDER BY priority DESC, created_at, rowid"
        ))?;
        let rows = stmt.query_map(args, outgoing_row)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row??);
        }
        Ok(out)
    }

    /// Packs not yet applied for a pod of a node, in the order a pass sends them.
    pub fn outgoing_for(
        &self,
        node: &NodeId,
        pod: &PodName,
    ) -> Result<Vec<OutgoingPack>, StateError> {
        self.outgoing_where(
            "node = ?1 AND pod = ?2 AND state != 'applied'",
            &[&node.to_hex(), &pod.as_str()],
        )
    }

    /// Every pack not yet applied for a node, in the order a pass sends them (priority, then
    /// age).
    pub fn queued_for_node(&self, node: &NodeId) -> Result<Vec<OutgoingPack>, StateError> {
        self.outgoing_where("node = ?1 AND state != 'applied'", &[&node.to_hex()])
    }

    /// Every row, queued and recently applied, for status.
    pub fn all_outgoing(&self) -> Result<Vec<OutgoingPack>, StateError> {
        self.outgoing_where("1 = 1", &[])
    }

    /// Records what one connection moved, for rate estimates: `sent`, pack bytes acknowledged
    /// by the node, took `secs` on the link (from the first frame to the last acknowledgement;
    /// scanning, encoding and applying are not the link).
    pub fn log_link(
        &self,
        node: &NodeId,
        sent: u64,
        received: u64,
        secs: f64,
    ) -> Result<(), StateError> {
        let c = self.conn();
        c.execute(
            "INSERT INTO link_log (node, at, sent, received, secs) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                node.to_hex(),
                now_secs(),
                sent as i64,
                received as i64,
                secs
            ],
        )?;
        c.execute(
            "DELETE FROM link_log WHERE rowid NOT IN (SELECT rowid FROM link_log ORDER BY at DESC LIMIT 50)",
            [],
        )?;
        Ok(())
    }

    /// The uplink rate seen over recent connections that moved enough to tell (bytes/s).
    pub fn measured_rate(&self, node: &NodeId) -> Result<Option<f64>, StateError> {
        let (bytes, secs): (Option<i64>, Option<f64>) = self.conn().query_row(
            "SELECT SUM(sent), SUM(secs) FROM (SELECT sent, secs FROM link_log
             WHERE node = ?1 AND sent > 262144 AND secs > 0.25 ORDER BY at DESC LIMIT 10)",
            [node.to_hex()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(match (bytes, secs) {
            (Some(b), Some(s)) if s > 0.0 => Some(b as f64 / s),
            _ => None,
        })
    }
}

/// Newer changes of a folder that follow a queued push of it (see `follow_up` in the schema).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowUp {
    pub node: NodeId,
    pub pod: PodName,
    /// `--dest`, if any.
    pub dest: Option<String>,
    /// The local folder to plan them from (absolute).
    pub source: String,
    pub priority: i64,
    pub created_at: i64,
}

impl Db {
    /// Records (or renews) the promise that `f.source`'s newer changes follow.
    pub fn put_follow_up(&self, f: &FollowUp) -> Result<(), StateError> {
        self.conn().execute(
            "INSERT INTO follow_up (node, pod, dest, source, priority, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(node, pod, dest) DO UPDATE SET source = excluded.source,
                 priority = excluded.priority",
            params![
                f.node.to_hex(),
                f.pod.as_str(),
                f.dest.as_deref().unwrap_or(""),
                f.source,
                f.priority,
                f.created_at
            ],
        )?;
        Ok(())
    }

    /// The newer changes for this destination are planned (or there are none): the promise is
    /// kept.
    pub fn end_follow_up(
        &self,
        node: &NodeId,
        pod: &PodName,
        dest: Option<&str>,
    ) -> Result<(), StateError> {
        self.conn().execute(
            "DELETE FROM follow_up WHERE node = ?1 AND pod = ?2 AND dest = ?3",
            params![node.to_hex(), pod.as_str(), dest.unwrap_or("")],
        )?;
        Ok(())
    }

    /// Promised follow-ups, for one node or (None) all, in the order a pass plans them.
    pub fn follow_ups(&self, node: Option<&NodeId>) -> Result<Vec<FollowUp>, StateError> {
        let mut stmt = self.conn().prepare(
            "SELECT node, pod, dest, source, priority, created_at FROM follow_up
             WHERE ?1 IS NULL OR node = ?1 ORDER BY priority DESC, created_at, rowid",
        )?;
        let rows = stmt.query_map([node.map(|n| n.to_hex())], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (node, pod, dest, source, priority, created_at) = row?;
            out.push(FollowUp {
                node: NodeId::from_hex(&node).ok_or(StateError::Corrupt("node id"))?,
                pod: PodName::new(pod).map_err(|_| StateError::Corrupt("pod name"))?,
                dest: Some(dest).filter(|d| !d.is_empty()),
                source,
                priority,
                created_at,
            });
        }
        Ok(out)
    }
}

/// A pull pack being received on the ground.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullIncoming {
    pub pack: PackId,
    pub node: NodeId,
    pub pod: PodName,
    pub into: String,
    /// The filter and --delete the pull was asked with.
    pub request: PullRequestKey,
    /// `None` until the node has said (it was still encoding the pack when it offered it).
    pub len: Option<u64>,
    /// Durable in the ground's staging file up to here.
    pub received: u64,
    pub base_root: ManifestId,
    pub target_root: ManifestId,
}

impl Db {
    pub fn put_pull_incoming(&self, p: &PullIncoming) -> Result<(), StateError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO pull_incoming
             (pack, node, pod, into_dir, len, received, base_root, target_root, updated_at,
              request)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                &p.pack.0[..],
                p.node.to_hex(),
                p.pod.as_str(),
                p.into,
                super::column::pack_len_to(p.len),
                p.received as i64,
                &p.base_root.0[..],
                &p.target_root.0[..],
                now_secs(),
                p.request.as_column()
            ],
        )?;
        Ok(())
    }

    /// The pull being received for a pod into a folder, if any.
    pub fn pull_incoming(
        &self,
        node: &NodeId,
        pod: &PodName,
        into: &str,
    ) -> Result<Option<PullIncoming>, StateError> {
        let row = self
            .conn()
            .query_row(
                "SELECT pack, len, received, base_root, target_root, request FROM pull_incoming
                 WHERE node = ?1 AND pod = ?2 AND into_dir = ?3",
                params![node.to_hex(), pod.as_str(), into],
                |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Vec<u8>>(3)?,
                        r.get::<_, Vec<u8>>(4)?,
                        r.get::<_, String>(5)?,
                    ))
                },
            )
            .optional()?;
        let Some((pack, len, received, base, target, request)) = row else {
            return Ok(None);
        };
        Ok(Some(PullIncoming {
            pack: PackId(blob32(pack, "pack id")?),
            node: *node,
            pod: pod.clone(),
            into: into.to_string(),
            request: PullRequestKey::from_column(request),
            len: super::column::pack_len_from(len),
            received: received as u64,
            base_root: ManifestId(blob32(base, "manifest root")?),
            target_root: ManifestId(blob32(target, "manifest root")?),
        }))
    }

    pub fn delete_pull_incoming(&self, p: &PullIncoming) -> Result<(), StateError> {
        self.conn().execute(
            "DELETE FROM pull_incoming WHERE node = ?1 AND pod = ?2 AND into_dir = ?3",
            params![p.node.to_hex(), p.pod.as_str(), p.into],
        )?;
        Ok(())
    }
}

impl Db {
    /// Records what the node believes the copy at `into` holds: the target of the pull just
    /// applied to it.
    pub fn set_pulled_copy(
        &self,
        into: &str,
        node: &NodeId,
        pod: &PodName,
        manifest: &Manifest,
    ) -> Result<(), StateError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO pulled_copy (into_dir, node, pod, manifest, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                into,
                node.to_hex(),
                pod.as_str(),
                manifest_column(manifest),
                now_secs()
            ],
        )?;
        Ok(())
    }

    /// What the last pull of `pod` of `node` into the copy at `into` left it holding, if the
    /// copy's last pull came from that pod.
    pub fn pulled_copy(
        &self,
        into: &str,
        node: &NodeId,
        pod: &PodName,
    ) -> Result<Option<Manifest>, StateError> {
        let blob: Option<Vec<u8>> = self
            .conn()
            .query_row(
                "SELECT manifest FROM pulled_copy WHERE into_dir = ?1 AND node = ?2 AND pod = ?3",
                params![into, node.to_hex(), pod.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        blob.map(|b| manifest_from_column(&b)).transpose()
    }
}

/// A pull being applied to a copy: its renames and removals, journaled from just before the
/// first until the last, so that a crash in between is rolled forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullJournal {
    /// The copy (its absolute path, as `PullIncoming::into`).
    pub into: String,
    /// The tag of the plan's temporaries (`.~sync.<tag>.<n>`), which `volume::apply` needs.
    pub tag: String,
    pub plan: ApplyPlan,
}

/// What a copy holds once a pull is applied, as the node sees it (see `pulled_copy`).
#[derive(Debug, Clone, Copy)]
pub struct Pulled<'a> {
    pub node: &'a NodeId,
    pub pod: &'a PodName,
    pub manifest: &'a Manifest,
}

impl Db {
    /// Journals a pull's apply to its copy (one per copy: a later one replaces it). `pulled`
    /// becomes the copy's `pulled_copy` record when the journal ends.
    pub fn pull_journal_begin(
        &self,
        j: &PullJournal,
        pulled: Option<Pulled<'_>>,
    ) -> Result<(), StateError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO pull_journal
             (into_dir, tag, plan, started_at, pulled_node, pulled_pod, pulled)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                j.into,
                j.tag,
                plan_column(&j.plan),
                now_secs(),
                pulled.map(|p| p.node.to_hex()),
                pulled.map(|p| p.pod.as_str().to_string()),
                pulled.map(|p| manifest_column(p.manifest)),
            ],
        )?;
        Ok(())
    }

    /// The copy's apply is done: its journal entry goes, and what the pull delivered becomes
    /// what the copy is known to hold, in one transaction.
    pub fn pull_journal_end(&self, into: &str) -> Result<(), StateError> {
        let c = self.conn();
        let tx = c.unchecked_transaction()?;
        tx.execute(
            "INSERT OR REPLACE INTO pulled_copy (into_dir, node, pod, manifest, updated_at)
             SELECT into_dir, pulled_node, pulled_pod, pulled, ?2 FROM pull_journal
             WHERE into_dir = ?1 AND pulled IS NOT NULL",
            params![into, now_secs()],
        )?;
        tx.execute("DELETE FROM pull_journal WHERE into_dir = ?1", [into])?;
        tx.commit()?;
        Ok(())
    }

    /// The copy's apply is given up, half done: its journal entry goes, and so does what the
    /// copy was known to hold (the next pull plans from the copy as it is).
    pub fn pull_journal_abandon(&self, into: &str) -> Result<(), StateError> {
        let c = self.conn();
        let tx = c.unchecked_transaction()?;
        tx.execute("DELETE FROM pulled_copy WHERE into_dir = ?1", [into])?;
        tx.execute("DELETE FROM pull_journal WHERE into_dir = ?1", [into])?;
        tx.commit()?;
        Ok(())
    }

    /// The journaled apply of the copy at `into`, if a crash or a failure left one.
    pub fn pull_journal(&self, into: &str) -> Result<Option<PullJournal>, StateError> {
        let row: Option<(String, String, Vec<u8>)> = self
            .conn()
            .query_row(
                "SELECT into_dir, tag, plan FROM pull_journal WHERE into_dir = ?1",
                [into],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        row.map(pull_journal_row).transpose()
    }

    /// Every journaled apply, oldest first.
    pub fn pull_journals(&self) -> Result<Vec<PullJournal>, StateError> {
        let mut stmt = self
            .conn()
            .prepare("SELECT into_dir, tag, plan FROM pull_journal ORDER BY started_at, rowid")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(pull_journal_row(row?)?);
        }
        Ok(out)
    }
}

fn pull_journal_row(
    (into, tag, plan): (String, String, Vec<u8>),
) -> Result<PullJournal, StateError> {
    Ok(PullJournal {
        into,
        tag,
        plan: plan_from_column(&plan, "pull journal plan")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::VolumePath;
    use crate::volume::Step;

    fn plan(name: &str) -> ApplyPlan {
        ApplyPlan {
            steps: vec![
                Step::Remove {
                    path: VolumePath::new("old").unwrap(),
                },
                Step::File {
                    path: VolumePath::new(name).unwrap(),
                    temp: ".~sync.pullab.1".into(),
                    id: ContentId::of(b"x"),
                    mode: 0o644,
                    mtime: 7,
                },
            ],
        }
    }

    #[test]
    fn a_pull_journal_is_kept_per_copy_until_it_ends() {
        let db = Db::open_in_memory().unwrap();
        assert_eq!(db.pull_journal("/c1").unwrap(), None);
        let a = PullJournal {
            into: "/c1".into(),
            tag: "pullab".into(),
            plan: plan("a"),
        };
        let b = PullJournal {
            into: "/c2".into(),
            tag: "pullcd".into(),
            plan: plan("b"),
        };
        db.pull_journal_begin(&a, None).unwrap();
        db.pull_journal_begin(&b, None).unwrap();
        assert_eq!(db.pull_journal("/c1").unwrap(), Some(a.clone()));
        assert_eq!(db.pull_journals().unwrap(), vec![a.clone(), b.clone()]);
        // One per copy: a newer apply of the same copy replaces the entry.
        let a2 = PullJournal {
            tag: "pullef".into(),
            plan: plan("a2"),
            ..a.clone()
        };
        db.pull_journal_begin(&a2, None).unwrap();
        assert_eq!(db.pull_journal("/c1").unwrap(), Some(a2));
        db.pull_journal_end("/c1").unwrap();
        assert_eq!(db.pull_journal("/c1").unwrap(), None);
        assert_eq!(db.pull_journals().unwrap(), vec![b]);
    }

    #[test]
    fn a_follow_up_is_one_per_destination_until_it_ends() {
        let db = Db::open_in_memory().unwrap();
        let node = NodeId([1; 16]);
        let pod = PodName::new("p").unwrap();
        let f = |dest: Option<&str>, source: &str| FollowUp {
            node,
            pod: pod.clone(),
            dest: dest.map(String::from),
            source: source.into(),
            priority: 0,
            created_at: 1,
        };
        db.put_follow_up(&f(None, "/a")).unwrap();
        db.put_follow_up(&f(Some("in"), "/b")).unwrap();
        // The same destination again: the newer source replaces the older.
        db.put_follow_up(&f(None, "/c")).unwrap();
        let all = db.follow_ups(Some(&node)).unwrap();
        assert_eq!(all, vec![f(None, "/c"), f(Some("in"), "/b")]);
        assert_eq!(db.follow_ups(Some(&NodeId([2; 16]))).unwrap(), vec![]);
        db.end_follow_up(&node, &pod, None).unwrap();
        assert_eq!(db.follow_ups(None).unwrap(), vec![f(Some("in"), "/b")]);
    }

    #[test]
    fn what_a_pull_delivers_is_recorded_when_its_journal_ends_not_before() {
        let db = Db::open_in_memory().unwrap();
        let (node, pod) = (NodeId([1; 16]), PodName::new("p").unwrap());
        let target = Manifest::new(vec![crate::manifest::Entry {
            path: VolumePath::new("a").unwrap(),
            kind: crate::manifest::EntryKind::Dir,
            mode: 0o755,
            mtime: 0,
        }])
        .unwrap();
        let j = PullJournal {
            into: "/c".into(),
            tag: "pullab".into(),
            plan: plan("a"),
        };
        let pulled = Pulled {
            node: &node,
            pod: &pod,
            manifest: &target,
        };
        db.pull_journal_begin(&j, Some(pulled)).unwrap();
        assert_eq!(db.pulled_copy("/c", &node, &pod).unwrap(), None);
        db.pull_journal_end("/c").unwrap();
        assert_eq!(
            db.pulled_copy("/c", &node, &pod).unwrap().as_ref(),
            Some(&target)
        );
        // Another pod's pull into the copy is not this pod's.
        let other = PodName::new("q").unwrap();
        assert_eq!(db.pulled_copy("/c", &node, &other).unwrap(), None);
        // Given up half done: nothing is known of the copy any more.
        db.pull_journal_begin(&j, Some(pulled)).unwrap();
        db.pull_journal_abandon("/c").unwrap();
        assert_eq!(db.pulled_copy("/c", &node, &pod).unwrap(), None);
        assert_eq!(db.pull_journal("/c").unwrap(), None);
    }

    #[test]
    fn an_undecodable_pull_journal_plan_is_reported_as_corrupt() {
        let db = Db::open_in_memory().unwrap();
        db.conn()
            .execute(
                "INSERT INTO pull_journal (into_dir, tag, plan, started_at)
                 VALUES ('/c', 't', x'ff', 0)",
                [],
            )
            .unwrap();
        assert!(matches!(
            db.pull_journal("/c"),
            Err(StateError::Corrupt("pull journal plan"))
        ));
    }
}
