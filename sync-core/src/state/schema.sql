-- The engine's on-disk state, one SQLite file per side. Each migration below runs once, in
-- order, inside a transaction; PRAGMA user_version records how many have run.
-- A migration is never edited after it ships: add a new one.

-- migration 1
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);

-- Stat cache of scanned trees: a ground folder (scope = its absolute path) or a pod volume
-- (scope = "pod:<name>"). A row vouches for `id` only while size, mtime, ctime and inode match.
CREATE TABLE stat_cache (
    scope    TEXT NOT NULL,
    path     TEXT NOT NULL,
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    ino      INTEGER NOT NULL,
    id       BLOB NOT NULL,
    PRIMARY KEY (scope, path)
) WITHOUT ROWID;

-- Ground: the manifest it believes each pod of each node holds (postcard, zstd).
CREATE TABLE known_manifest (
    node       TEXT NOT NULL,
    pod        TEXT NOT NULL,
    root       BLOB NOT NULL,
    manifest   BLOB NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (node, pod)
);

-- Ground: packs built for a pod, kept until applied so a retry never re-encodes.
CREATE TABLE outgoing (
    pack        BLOB PRIMARY KEY,
    node        TEXT NOT NULL,
    pod         TEXT NOT NULL,
    len         INTEGER NOT NULL,
    acked       INTEGER NOT NULL DEFAULT 0,
    base_root   BLOB NOT NULL,
    target_root BLOB NOT NULL,
    target      BLOB NOT NULL,
    source      TEXT NOT NULL,
    state       TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

-- Onboard: recent manifests of each pod, so a ground that knows one gets a delta from it.
CREATE TABLE pod_manifest (
    pod      TEXT NOT NULL,
    root     BLOB NOT NULL,
    manifest BLOB NOT NULL,
    seen_at  INTEGER NOT NULL,
    PRIMARY KEY (pod, root)
);

-- Onboard: packs being received into staging/<pack>.pack.
CREATE TABLE incoming (
    pack        BLOB PRIMARY KEY,
    pod         TEXT NOT NULL,
    len         INTEGER NOT NULL,
    received    INTEGER NOT NULL,
    base_root   BLOB NOT NULL,
    target_root BLOB NOT NULL,
    updated_at  INTEGER NOT NULL
);

-- Onboard: a changeset being applied. Present from just before the first change to a volume
-- until the last; on start-up every row is rolled forward.
CREATE TABLE journal (
    pack       BLOB PRIMARY KEY,
    pod        TEXT NOT NULL,
    plan       BLOB NOT NULL,
    started_at INTEGER NOT NULL
);

-- migration 2
-- Onboard: the boot during which the staged pack file was last written. Within the same boot,
-- bytes written past the synced offset survive a killed daemon (they are in the page cache),
-- so a resume can start at the file's end instead of the last synced offset.
ALTER TABLE incoming ADD COLUMN boot TEXT NOT NULL DEFAULT '';
-- The folder the push replaces (its --dest), if not the whole volume.
ALTER TABLE incoming ADD COLUMN scope TEXT;

-- Ground: a queued push's priority (higher goes first in a pass) and a description for status.
ALTER TABLE outgoing ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outgoing ADD COLUMN dest TEXT;
ALTER TABLE outgoing ADD COLUMN content_bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outgoing ADD COLUMN summary TEXT NOT NULL DEFAULT '{}';
-- When it was applied onboard (state 'applied'); applied rows are kept a while for status.
ALTER TABLE outgoing ADD COLUMN finished_at INTEGER;

-- Onboard: packs applied recently, so a ground that missed the answer gets it again.
CREATE TABLE applied (
    pack       BLOB PRIMARY KEY,
    pod        TEXT NOT NULL,
    root       BLOB NOT NULL,
    applied_at INTEGER NOT NULL
);

-- Ground: what each connection to a node moved, to estimate the link's rate for planning.
CREATE TABLE link_log (
    node     TEXT NOT NULL,
    at       INTEGER NOT NULL,
    sent     INTEGER NOT NULL,
    received INTEGER NOT NULL,
    secs     REAL NOT NULL
);

-- migration 3
-- Onboard: versions of files sent to a ground by a pull. The ground holds these bytes, so the
-- next pull can encode against them: `len` bytes at `path`, if the file only grew since, and
-- `signature` (rsync, of the version sent) for a file changed in place.
CREATE TABLE sent_version (
    pod       TEXT NOT NULL,
    id        BLOB NOT NULL,
    path      TEXT NOT NULL,
    len       INTEGER NOT NULL,
    signature BLOB,
    sent_at   INTEGER NOT NULL,
    PRIMARY KEY (pod, id)
);

-- Onboard: pull packs built and kept until the ground has applied them (a cut pull resumes
-- without encoding again). `sent`: postcard list of the versions it delivers.
CREATE TABLE pull_pack (
    pack        BLOB PRIMARY KEY,
    pod         TEXT NOT NULL,
    len         INTEGER NOT NULL,
    base_root   BLOB NOT NULL,
    target_root BLOB NOT NULL,
    sent        BLOB NOT NULL,
    created_at  INTEGER NOT NULL
);

-- Ground: pull packs being received into pulls/<pack>.pack, for the copy at `into`.
-- One per copy: a copy receives one pull at a time. `request`: the filter and --delete it was
-- asked with (a pull asked differently does not resume it).
CREATE TABLE pull_incoming (
    node        TEXT NOT NULL,
    pod         TEXT NOT NULL,
    into_dir    TEXT NOT NULL,
    pack        BLOB NOT NULL,
    request     TEXT NOT NULL,
    len         INTEGER NOT NULL,
    received    INTEGER NOT NULL,
    base_root   BLOB NOT NULL,
    target_root BLOB NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (node, pod, into_dir)
);

-- migration 4
-- Ground: a pull being applied to the copy at `into_dir`. Present from just before the first
-- rename in the copy until the last, like the onboard `journal`: `plan` is the same postcard
-- encoding of the apply plan, `tag` names its temporaries (`.~sync.<tag>.<n>`). Rolled forward
-- before anything scans that copy again (the next pull into it) and when the ground opens its
-- state. One per copy: a copy takes one pull at a time.
CREATE TABLE pull_journal (
    into_dir   TEXT PRIMARY KEY,
    tag        TEXT NOT NULL,
    plan       BLOB NOT NULL,
    started_at INTEGER NOT NULL
);

-- migration 5
-- Onboard: manifests grounds' copies will have once a pull pack is applied (the next pull names
-- its copy by root), kept apart from `pod_manifest` so that pulls into many copies never push
-- out the bases of pushes. Same layout.
CREATE TABLE copy_manifest (
    pod      TEXT NOT NULL,
    root     BLOB NOT NULL,
    manifest BLOB NOT NULL,
    seen_at  INTEGER NOT NULL,
    PRIMARY KEY (pod, root)
);

-- migration 6
-- Ground: a push promised to follow a queued one. When a folder changes while an older push of
-- it is partly sent, the older one is finished first and the newer changes follow it; until
-- they are planned into a pack of their own (by the next push of that folder, or by a pass once
-- the older one has applied), this row is the promise, so that nothing a note announced is
-- forgotten. One per node, pod and destination (`dest` is '' for the whole volume).
CREATE TABLE follow_up (
    node       TEXT NOT NULL,
    pod        TEXT NOT NULL,
    dest       TEXT NOT NULL,
    source     TEXT NOT NULL,
    priority   INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (node, pod, dest)
);

-- Ground: connection times in link_log included scanning and encoding, which made the link look
-- as slow as the CPU. From here on a row records pack bytes acknowledged and the seconds they
-- took on the link; the old rows would mislead a plan.
DELETE FROM link_log;

-- Ground: what the node believes each copy holds after the last pull applied to it (the pull's
-- target as the node built it). The copy's user may have changed it since: the next pull asks
-- for the pod's changes since this state, and refuses to overwrite what the user changed.
CREATE TABLE pulled_copy (
    into_dir   TEXT PRIMARY KEY,
    node       TEXT NOT NULL,
    pod        TEXT NOT NULL,
    manifest   BLOB NOT NULL,
    updated_at INTEGER NOT NULL
);
-- What the copy will hold once a journaled pull is applied, moved to pulled_copy in the same
-- transaction that ends the journal, so a crash between the renames and that record is rolled
-- forward with it.
ALTER TABLE pull_journal ADD COLUMN pulled_node TEXT;
ALTER TABLE pull_journal ADD COLUMN pulled_pod TEXT;
ALTER TABLE pull_journal ADD COLUMN pulled BLOB;

-- migration 7
-- Ground: a pack is sent while it is encoded, so its id is no longer the hash of its bytes; the
-- hash is kept here to check the queued file before it is sent again (NULL for older rows,
-- whose id still says it).
ALTER TABLE outgoing ADD COLUMN hash BLOB;

-- migration 8
-- Onboard: a pull pack is offered while the node encodes it. Its row is written when encoding
-- starts, with len -1 until the pack is whole (a row left at -1 by a restart is dropped with
-- its file). The signature of each file it delivers is kept here as the encoder reads the
-- file, rather than held in memory to the end, and moves to sent_version once the ground has
-- applied the pack.
CREATE TABLE pull_signature (
    pack      BLOB NOT NULL,
    id        BLOB NOT NULL,
    signature BLOB NOT NULL,
    PRIMARY KEY (pack, id)
);
