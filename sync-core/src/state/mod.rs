//! The SQLite store (one file per side) and the only code that knows its schema.
//!
//! - [`Db`]: opening, pragmas, migrations from `schema.sql`.
//! - `ground`: what the ground knows of each pod, its content-store index, outgoing packs,
//!   pulls being received and the journal of a pull's apply to its copy.
//! - `onboard`: the node id, recent pod manifests, incoming packs, the apply journal.
//! - `column`: how typed values are written into columns and read back (pack states, pull
//!   request keys, change summaries, apply plans, manifests).
//! - stat caches for both.

mod column;
mod ground;
mod onboard;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};

pub use column::{PackState, PullRequestKey};
pub use ground::{FollowUp, KnownManifest, OutgoingPack, PullIncoming, PullJournal, Pulled};
pub use onboard::{IncomingPack, JournalEntry, PullPack, PullPackKey};

use crate::id::ContentId;
use crate::manifest::{CachedStat, StatCache};

const SCHEMA: &str = include_str!("schema.sql");

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// SQLite failed
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// a stored value that does not decode
    #[error("state database holds a malformed {0}")]
    Corrupt(&'static str),
    /// a database written by a newer version
    #[error("state database is at schema version {found}; this program knows up to {known}")]
    TooNew { found: i64, known: i64 },
}

pub struct Db {
    conn: Connection,
}

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The migrations in `schema.sql`, split at their `-- migration N` markers.
fn migrations() -> Vec<&'static str> {
    SCHEMA
        .split("-- migration ")
        .skip(1)
        .map(|m| m.split_once('\n').map(|(_, body)| body).unwrap_or(""))
        .collect()
}

impl Db {
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let conn = Connection::open(path)?;
        Self::setup(conn)
    }

    pub fn open_in_memory() -> Result<Self, StateError> {
        Self::setup(Connection::open_in_memory()?)
    }

    fn setup(mut conn: Connection) -> Result<Self, StateError> {
        // WAL: readers never block the writer; synchronous=FULL: a commit survives power loss,
        // which is what "acknowledged" means here.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let all = migrations();
        if version > all.len() as i64 {
            return Err(StateError::TooNew {
                found: version,
                known: all.len() as i64,
            });
        }
        for (i, sql) in all.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(Self { conn })
    }

    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    pub fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), StateError> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    /// The stat cache of one scanned tree.
    pub fn stat_cache(&self, scope: &str) -> Result<StatCache, StateError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT path, size, mtime_ns, ctime_ns, ino, id FROM stat_cache WHERE scope = ?1",
        )?;
        let rows = stmt.query_map([scope], |r| {
            let id: Vec<u8> = r.get(5)?;
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                id,
            ))
        })?;
        let mut cache = StatCache::new();
        for row in rows {
            let (path, size, mtime_ns, ctime_ns, ino, id) = row?;
            let id: [u8; 32] = id
                .try_into()
                .map_err(|_| StateError::Corrupt("stat cache id"))?;
            cache.insert(
                path,
                CachedStat {
                    size: size as u64,
                    mtime_ns,
                    ctime_ns,
                    ino: ino as u64,
                    id: ContentId(id),
                },
            );
        }
        Ok(cache)
    }

    /// Replaces the stored cache of `scope` with `new`, writing only the rows that differ from
    /// `old` (what was loaded), so an unchanged tree costs no writes.
    pub fn save_stat_cache(
        &mut self,
        scope: &str,
        old: &StatCache,
        new: &StatCache,
    ) -> Result<(), StateError> {
        let stale: Vec<&String> = old.keys().filter(|k| !new.contains_key(*k)).collect();
        let fresh: Vec<(&String, &CachedStat)> =
            new.iter().filter(|(k, v)| old.get(*k) != Some(v)).collect();
        if stale.is_empty() && fresh.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        {
            let mut del =
                tx.prepare_cached("DELETE FROM stat_cache WHERE scope = ?1 AND path = ?2")?;
            for path in stale {
                del.execute(params![scope, path])?;
            }
            let mut put = tx.prepare_cached(
                "INSERT OR REPLACE INTO stat_cache (scope, path, size, mtime_ns, ctime_ns, ino, id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for (path, s) in fresh {
                put.execute(params![
                    scope,
                    path,
                    s.size as i64,
                    s.mtime_ns,
                    s.ctime_ns,
                    s.ino as i64,
                    &s.id.0[..]
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_run_once_and_reopen() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("s.db");
        {
            let db = Db::open(&p).unwrap();
            db.set_meta("k", b"v").unwrap();
        }
        let db = Db::open(&p).unwrap();
        assert_eq!(db.meta("k").unwrap(), Some(b"v".to_vec()));
        let v: i64 = db
            .conn()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, migrations().len() as i64);
    }

    #[test]
    fn newer_schema_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("s.db");
        Db::open(&p)
            .unwrap()
            .conn()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        assert!(matches!(
            Db::open(&p),
            Err(StateError::TooNew { found: 99, .. })
        ));
    }

    #[test]
    fn stat_cache_saves_only_differences() {
        let mut db = Db::open_in_memory().unwrap();
        let st = |n: u64| CachedStat {
            size: n,
            mtime_ns: 1,
            ctime_ns: 2,
            ino: 3,
            id: ContentId::of(&n.to_le_bytes()),
        };
        // Rows inserted, replaced or deleted by statements on this connection so far.
        let writes = |db: &Db| -> i64 {
            db.conn()
                .query_row("SELECT total_changes()", [], |r| r.get(0))
                .unwrap()
        };
        let mut a = StatCache::new();
        a.insert("x".into(), st(1));
        a.insert("y".into(), st(2));
        db.save_stat_cache("s", &StatCache::new(), &a).unwrap();
        assert_eq!(db.stat_cache("s").unwrap(), a);
        let before = writes(&db);
        db.save_stat_cache("s", &a, &a).unwrap();
        assert_eq!(writes(&db), before, "an unchanged tree costs no writes");
        let mut b = a.clone();
        b.remove("x");
        b.insert("z".into(), st(3));
        let before = writes(&db);
        db.save_stat_cache("s", &a, &b).unwrap();
        assert_eq!(db.stat_cache("s").unwrap(), b);
        // x deleted and z written; y, unchanged, is not written again (a rewrite of the whole
        // cache would cost 3 or 4).
        assert_eq!(writes(&db) - before, 2, "only the differences are written");
        assert!(db.stat_cache("other").unwrap().is_empty());
    }
}
