//! How typed values are written into columns and read back: pack states, pull request keys,
//! change summaries, apply plans, manifests and 32-byte ids. Callers hand `state` the values;
//! only this file knows the text or bytes a column holds, which must stay as earlier versions
//! wrote them, so that an existing state file reads the same.

use super::StateError;
use crate::manifest::{ChangeSummary, Manifest};
use crate::volume::ApplyPlan;

/// Where a pack built for a pod stands (`outgoing.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PackState {
    /// Built and waiting for a pass (it may still hold bytes an earlier connection sent).
    Queued,
    /// A connection is sending it, or was when it stopped.
    Sending,
    /// Applied onboard; kept a while for `status`.
    Applied,
}

impl PackState {
    /// The column's text, and what `status --json` prints. The SQL in `ground.rs` names
    /// `'applied'` itself (what a pass still has to send is every other row).
    pub fn as_str(self) -> &'static str {
        match self {
            PackState::Queued => "queued",
            PackState::Sending => "sending",
            PackState::Applied => "applied",
        }
    }

    pub(super) fn from_column(text: &str) -> Result<Self, StateError> {
        match text {
            "queued" => Ok(PackState::Queued),
            "sending" => Ok(PackState::Sending),
            "applied" => Ok(PackState::Applied),
            _ => Err(StateError::Corrupt("outgoing pack state")),
        }
    }
}

impl std::fmt::Display for PackState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a pull was asked (its `--path` filter and `--delete`), kept with the pull being
/// received (`pull_incoming.request`): a pull asked differently does not resume it.
///
/// The key is only ever compared, never taken apart, so it holds the column's text: the
/// `Debug` form of the filter and the flag, as the first version wrote it, which rows already
/// in a state file must keep matching.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PullRequestKey(String);

impl PullRequestKey {
    pub fn new(filter: &[String], delete: bool) -> Self {
        Self(format!("{filter:?} delete={delete}"))
    }

    pub(super) fn from_column(text: String) -> Self {
        Self(text)
    }

    pub(super) fn as_column(&self) -> &str {
        &self.0
    }
}

/// `outgoing.summary`: JSON text.
pub(super) fn summary_column(s: &ChangeSummary) -> String {
    serde_json::to_string(s).expect("in-memory JSON")
}

/// A summary that does not parse reads as an empty one, not as an error: it only describes the
/// pack for the operator (status, the push report), and rows from before the column was
/// filled hold its default `{}`; neither may keep a queued pack from being sent.
pub(super) fn summary_from_column(text: &str) -> ChangeSummary {
    serde_json::from_str(text).unwrap_or_default()
}

/// `journal.plan` and `pull_journal.plan`: postcard, the same encoding at both ends.
pub(super) fn plan_column(plan: &ApplyPlan) -> Vec<u8> {
    postcard::to_stdvec(plan).expect("in-memory postcard")
}

pub(super) fn plan_from_column(blob: &[u8], what: &'static str) -> Result<ApplyPlan, StateError> {
    postcard::from_bytes(blob).map_err(|_| StateError::Corrupt(what))
}

/// Manifests are stored as zstd of their canonical encoding.
pub(super) fn manifest_column(m: &Manifest) -> Vec<u8> {
    zstd::bulk::compress(&m.encode(), 3).expect("in-memory zstd")
}

pub(super) fn manifest_from_column(blob: &[u8]) -> Result<Manifest, StateError> {
    let raw = zstd::stream::decode_all(blob).map_err(|_| StateError::Corrupt("manifest"))?;
    Manifest::decode(&raw).map_err(|_| StateError::Corrupt("manifest"))
}

/// A pack id, manifest root or content id.
pub(super) fn blob32(v: Vec<u8>, what: &'static str) -> Result<[u8; 32], StateError> {
    v.try_into().map_err(|_| StateError::Corrupt(what))
}

/// A pack's length in its column: -1 while it is not known yet (a pack still being encoded).
pub(crate) fn pack_len_to(len: Option<u64>) -> i64 {
    len.map_or(-1, |l| l as i64)
}

pub(crate) fn pack_len_from(v: i64) -> Option<u64> {
    u64::try_from(v).ok()
}

#[cfg(test)]
mod tests {
    //! Each typed column written and read back through a real state file, and the exact text
    //! the text columns hold: rows written by earlier versions must read the same, so a change
    //! of encoding has to fail here.

    use std::path::Path;

    use super::*;
    use crate::id::{ContentId, ManifestId, NodeId, PackId};
    use crate::path::{PodName, VolumePath};
    use crate::state::{Db, JournalEntry, OutgoingPack, PullIncoming, PullJournal};
    use crate::volume::Step;

    fn outgoing(n: u8, source: Option<&str>, summary: ChangeSummary) -> OutgoingPack {
        OutgoingPack {
            pack: PackId([n; 32]),
            node: NodeId([1; 16]),
            pod: PodName::new("p").unwrap(),
            len: 100,
            acked: 0,
            base_root: ManifestId([2; 32]),
            target_root: ManifestId([3; 32]),
            target: Manifest::default(),
            source: source.map(String::from),
            dest: None,
            state: PackState::Queued,
            priority: 0,
            content_bytes: 0,
            summary,
            created_at: n.into(),
            finished_at: None,
            hash: None,
        }
    }

    /// The text a column of `outgoing` holds for a pack.
    fn outgoing_text(db: &Db, column: &str, pack: &PackId) -> String {
        db.conn()
            .query_row(
                &format!("SELECT {column} FROM outgoing WHERE pack = ?1"),
                [&pack.0[..]],
                |r| r.get(0),
            )
            .unwrap()
    }

    fn reopen(path: &Path) -> Db {
        Db::open(path).unwrap()
    }

    #[test]
    fn a_pack_state_is_stored_as_the_words_status_prints() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("ground.db");
        let q = outgoing(1, Some("/data/in"), ChangeSummary::default());
        reopen(&path).insert_outgoing(&q).unwrap();
        let db = reopen(&path);
        assert_eq!(outgoing_text(&db, "state", &q.pack), "queued");
        assert_eq!(db.all_outgoing().unwrap()[0].state, PackState::Queued);
        db.set_outgoing_progress(&q.pack, 10, PackState::Sending)
            .unwrap();
        assert_eq!(outgoing_text(&db, "state", &q.pack), "sending");
        let db = reopen(&path);
        assert_eq!(db.all_outgoing().unwrap()[0].state, PackState::Sending);
        // The SQL that marks a pack applied, and the SQL that leaves applied packs out of a
        // pass, name the state themselves: they must agree with the enum.
        db.finish_outgoing(&q.pack).unwrap();
        assert_eq!(outgoing_text(&db, "state", &q.pack), "applied");
        assert_eq!(db.all_outgoing().unwrap()[0].state, PackState::Applied);
        assert!(db.queued_for_node(&q.node).unwrap().is_empty());
        for s in [PackState::Queued, PackState::Sending, PackState::Applied] {
            assert_eq!(PackState::from_column(s.as_str()).unwrap(), s);
            assert_eq!(s.to_string(), s.as_str());
        }
    }

    #[test]
    fn an_unknown_pack_state_is_reported_as_corrupt() {
        let db = Db::open_in_memory().unwrap();
        let q = outgoing(1, None, ChangeSummary::default());
        db.insert_outgoing(&q).unwrap();
        db.conn()
            .execute("UPDATE outgoing SET state = 'lost'", [])
            .unwrap();
        assert!(matches!(
            db.all_outgoing(),
            Err(StateError::Corrupt("outgoing pack state"))
        ));
    }

    #[test]
    fn a_summary_is_stored_as_json_and_read_back() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("ground.db");
        let summary = ChangeSummary {
            added: 1,
            changed: 2,
            removed: 3,
            copied: 4,
            metadata: 5,
            dirs_added: 6,
            dirs_removed: 7,
            symlinks: 8,
        };
        let q = outgoing(1, Some("/data/in"), summary.clone());
        reopen(&path).insert_outgoing(&q).unwrap();
        let db = reopen(&path);
        assert_eq!(
            outgoing_text(&db, "summary", &q.pack),
            r#"{"added":1,"changed":2,"removed":3,"copied":4,"metadata":5,"dirs_added":6,"dirs_removed":7,"symlinks":8}"#
        );
        let back = db.all_outgoing().unwrap();
        assert_eq!(back[0].summary, summary);
        assert_eq!(back[0].source.as_deref(), Some("/data/in"));
    }

    /// A summary that does not parse (the column's default `{}` from before it was filled, or
    /// a damaged text) reads as an empty summary: the pack still loads, and is still sent.
    #[test]
    fn a_summary_that_does_not_parse_reads_as_empty() {
        let db = Db::open_in_memory().unwrap();
        let q = outgoing(1, None, ChangeSummary::default());
        db.insert_outgoing(&q).unwrap();
        for text in ["{}", "", "not json"] {
            db.conn()
                .execute("UPDATE outgoing SET summary = ?1", [text])
                .unwrap();
            let back = db.queued_for_node(&q.node).unwrap();
            assert_eq!(back.len(), 1, "{text:?}");
            assert!(back[0].summary.is_empty(), "{text:?}");
        }
    }

    #[test]
    fn a_removal_has_no_source_and_is_stored_as_an_empty_text() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("ground.db");
        let q = outgoing(1, None, ChangeSummary::default());
        reopen(&path).insert_outgoing(&q).unwrap();
        let db = reopen(&path);
        assert_eq!(outgoing_text(&db, "source", &q.pack), "");
        assert_eq!(db.all_outgoing().unwrap()[0].source, None);
    }

    fn pull_incoming(request: PullRequestKey) -> PullIncoming {
        PullIncoming {
            pack: PackId([4; 32]),
            node: NodeId([1; 16]),
            pod: PodName::new("p").unwrap(),
            into: "/copy".into(),
            request,
            len: Some(10),
            received: 5,
            base_root: ManifestId([2; 32]),
            target_root: ManifestId([3; 32]),
        }
    }

    #[test]
    fn a_pull_request_key_is_stored_as_the_first_version_wrote_it() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("ground.db");
        let filter = vec!["logs/**".to_string(), r#"say "hi""#.to_string()];
        for (key, text) in [
            (PullRequestKey::new(&[], false), "[] delete=false"),
            (
                PullRequestKey::new(&filter, true),
                r#"["logs/**", "say \"hi\""] delete=true"#,
            ),
        ] {
            let p = pull_incoming(key);
            reopen(&path).put_pull_incoming(&p).unwrap();
            let db = reopen(&path);
            let stored: String = db
                .conn()
                .query_row("SELECT request FROM pull_incoming", [], |r| r.get(0))
                .unwrap();
            assert_eq!(stored, text);
            assert_eq!(db.pull_incoming(&p.node, &p.pod, &p.into).unwrap(), Some(p));
        }
        // Asked differently: another key.
        assert_ne!(
            PullRequestKey::new(&filter, true),
            PullRequestKey::new(&filter, false)
        );
        assert_ne!(
            PullRequestKey::new(&filter, true),
            PullRequestKey::new(&filter[..1], true)
        );
    }

    fn plan() -> ApplyPlan {
        ApplyPlan {
            steps: vec![
                Step::Remove {
                    path: VolumePath::new("old").unwrap(),
                },
                Step::File {
                    path: VolumePath::new("new").unwrap(),
                    temp: ".~sync.t.1".into(),
                    id: ContentId::of(b"x"),
                    mode: 0o644,
                    mtime: 7,
                },
            ],
        }
    }

    #[test]
    fn a_journaled_plan_is_read_back_at_both_ends() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("state.db");
        let pod = PodName::new("p").unwrap();
        let pull = PullJournal {
            into: "/copy".into(),
            tag: "pullab".into(),
            plan: plan(),
        };
        {
            let db = reopen(&path);
            db.journal_begin(&JournalEntry::new(PackId([9; 32]), pod.clone(), &plan()))
                .unwrap();
            db.pull_journal_begin(&pull, None).unwrap();
        }
        let db = reopen(&path);
        let entries = db.journal_entries().unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!((entries[0].pack, &entries[0].pod), (PackId([9; 32]), &pod));
        assert_eq!(entries[0].plan().unwrap(), plan());
        assert_eq!(db.pull_journals().unwrap(), vec![pull]);
        // Both ends store a plan the same way.
        let blob = |sql: &str| -> Vec<u8> { db.conn().query_row(sql, [], |r| r.get(0)).unwrap() };
        assert_eq!(blob("SELECT plan FROM journal"), plan_column(&plan()));
        assert_eq!(blob("SELECT plan FROM pull_journal"), plan_column(&plan()));
    }

    /// A journal row whose plan does not decode is still listed: it is that changeset's
    /// failure (reported when its plan is asked for), not the whole journal's.
    #[test]
    fn an_undecodable_journal_plan_fails_its_entry_alone() {
        let db = Db::open_in_memory().unwrap();
        let pod = PodName::new("p").unwrap();
        db.journal_begin(&JournalEntry::new(PackId([1; 32]), pod.clone(), &plan()))
            .unwrap();
        db.conn()
            .execute(
                "INSERT INTO journal (pack, pod, plan, started_at) VALUES (?1, 'p', x'ff', 0)",
                [&[2u8; 32][..]],
            )
            .unwrap();
        let entries = db.journal_entries().unwrap();
        assert_eq!(entries.len(), 2);
        let by = |n: u8| entries.iter().find(|e| e.pack == PackId([n; 32])).unwrap();
        assert_eq!(by(1).plan().unwrap(), plan());
        assert!(matches!(
            by(2).plan(),
            Err(StateError::Corrupt("journal plan"))
        ));
    }
}
