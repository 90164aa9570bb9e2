#!/usr/bin/env python3
"""Soak test of issue 9: random SIGKILLs of either program and link cuts, checked each time.

Each round changes something and transfers it through a throttling, counting, cuttable TCP
proxy, interrupting the transfer at a random moment:

- a push: the ground folder changed (files edited, added, removed, renamed), then
  `sync-ground push SRC --dest up`; or a pull: the pod's volume changed on disk as a pod
  would (a log grown, a database patched in place, results added and removed), then
  `sync-ground pull --into COPY --path 'out/**' --delete`;
- interrupted by SIGKILL of sync-ground, SIGKILL of sync-onboard (restarted at once on the
  same state), or a cut of every connection at the proxy, aimed at a phase: the ground's
  planning, the node's receive or apply of a push; the node's scan and encoding, the ground's
  receive or apply of a pull; or any moment.

After each interruption every file of the volume (push) or the copy (pull) must hash to the
old or the new version of its path; `.~sync.` temporaries are counted apart. The transfer is
then run again (interrupted again now and then) until it exits 0, and the whole volume and
copy must then equal their sources exactly. A mirror setup (its own daemon, ground state and
an unthrottled proxy) runs every change once without interruption: its bytes are the clean
figure that the interrupted transfer's bytes are compared with.

Python 3.11 standard library only. See README.md next to this file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TEMP_PREFIX = ".~sync."
POD = "p1"
DEST = "up"  # pushes land in VOLUME/up
OUT = "out"  # the pod writes VOLUME/out; pulls bring it into COPY/out
RETRYABLE = (4, 75)  # link failure, incomplete: run it again
KILLED = -signal.SIGKILL
ATTEMPT_TIMEOUT = 180.0  # seconds: an attempt running longer is a finding (hung)
MAX_ATTEMPTS = 14  # per round; past this the transfer "never completes" (a finding)
MAX_CLEAN_FAILURES = 6  # uninterrupted attempts that fail in a row before giving up
MAX_INTERRUPTS = 3  # interruptions per round at most
AGAIN = 0.3  # probability that a retry is interrupted again
DATA = 1024  # a forwarded read this large is data flowing, not a keep-alive or an ack
QUIET = 0.06  # seconds without data in one direction: that direction's data is done
MB = 1_000_000
BUFFER = 65536  # the proxy's socket buffers, each way

PUSH_PHASES = ("plan", "receive", "apply", "after")
PULL_PHASES = ("encode", "receive", "apply", "after")
PHASE_TEXT = {
    ("push", "plan"): "ground scan/plan/encode",
    ("push", "receive"): "node receiving",
    ("push", "apply"): "node verifying/applying",
    ("push", "after"): "after the transfer ended",
    ("push", "none"): "no connection open to cut",
    ("pull", "none"): "no connection open to cut",
    ("pull", "encode"): "node scan/encode",
    ("pull", "receive"): "ground receiving",
    ("pull", "apply"): "ground verifying/applying",
    ("pull", "after"): "after the transfer ended",
}


def now() -> float:
    return time.monotonic()


# --- processes ---------------------------------------------------------------------------


class Procs:
    """Every process this script started, so that any way out (Ctrl-C included) ends them.

    Children run in their own session: a Ctrl-C in the terminal reaches only this script,
    which then ends them one by one, by process id.
    """

    def __init__(self) -> None:
        self.live: list[subprocess.Popen] = []

    def spawn(self, args: list, **kw) -> subprocess.Popen:
        p = subprocess.Popen([str(a) for a in args], start_new_session=True, **kw)
        self.live.append(p)
        return p

    def forget_done(self) -> None:
        self.live = [p for p in self.live if p.poll() is None]

    def end_all(self) -> None:
        for p in self.live:
            if p.poll() is None:
                try:
                    p.terminate()
                except ProcessLookupError:
                    pass
        for p in self.live:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.live = []


PROCS = Procs()


def on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


# --- the link ----------------------------------------------------------------------------


class Pacer:
    """A link rate in bytes per second, shared by every connection in one direction."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.next = 0.0
        self.lock = threading.Lock()

    def wait(self, n: int) -> None:
        if not self.rate:
            return
        with self.lock:
            start = max(now(), self.next)
            self.next = start + n / self.rate
            until = self.next
        delay = until - now()
        if delay > 0:
            time.sleep(delay)


class Conn:
    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.socks = (client, server)
        self.cut = False
        self.ended = 0

    def kill(self) -> None:
        for s in self.socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Link:
    """A TCP proxy on 127.0.0.1 standing for the radio link between the two programs.

    Forwards to the daemon (whose address changes when it restarts), at `rate` bytes per second
    each way (None: as fast as it can), counts what it delivered each way, knows when data last
    flowed each way, and can cut every open connection at once (both sockets shut down; what
    the proxy holds is lost with the link). "up" is ground -> node, "down" node -> ground.
    """

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.chunk = 16384 if rate else 65536
        # Small socket buffers on the proxy's side: what a program has written is then close
        # to what crossed the link (megabytes of loopback buffering would let a killed sender
        # deliver long after its death, and a receiver look far behind the sender).
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.addr = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.upstream: tuple[str, int] | None = None
        self.lock = threading.Lock()
        self.count = {"up": 0, "down": 0}
        self.first_data = {"up": 0.0, "down": 0.0}
        self.last_data = {"up": 0.0, "down": 0.0}
        self.last_open = 0.0
        self.opened = 0
        self.conns: set[Conn] = set()
        self.pace = {"up": Pacer(rate), "down": Pacer(rate)}
        # A function of the direction: True loses what arrives that way (findings.py uses it).
        self.drop = None
        threading.Thread(target=self._accept, daemon=True).start()

    def retarget(self, addr: str) -> None:
        host, port = addr.rsplit(":", 1)
        self.upstream = (host, int(port))

    def total(self) -> int:
        return self.count["up"] + self.count["down"]

    def snapshot(self) -> dict:
        with self.lock:
            return {
                "up": self.count["up"],
                "down": self.count["down"],
                "t": now(),
            }

    def reset_marks(self) -> None:
        """Forgets when data last flowed (kept per attempt, or per mirror run)."""
        with self.lock:
            self.first_data = {"up": 0.0, "down": 0.0}
            self.last_data = {"up": 0.0, "down": 0.0}
            self.last_open = 0.0

    def flowing(self, way: str, within: float = QUIET) -> bool:
        return now() - self.last_data[way] < within

    def cut(self) -> int:
        """Cuts every open connection; returns how many there were."""
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            c.cut = True
            c.kill()
        return len(conns)

    def close(self) -> None:
        try:
            self.server.close()
        except OSError:
            pass
        self.cut()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            target = self.upstream
            try:
                if target is None:
                    raise OSError("no upstream")
                server = socket.socket()
                server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)
                server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)
                server.settimeout(5)
                server.connect(target)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Conn(client, server)
            with self.lock:
                self.conns.add(conn)
                self.opened += 1
                self.last_open = now()
            for src, dst, way in ((client, server, "up"), (server, client, "down")):
                threading.Thread(target=self._pump, args=(conn, src, dst, way), daemon=True).start()

    def _pump(self, conn: Conn, src: socket.socket, dst: socket.socket, way: str) -> None:
        clean = False
        try:
            while True:
                data = src.recv(self.chunk)
                if not data:
                    clean = True
                    break
                self.pace[way].wait(len(data))
                if conn.cut:
                    break
                if self.drop is not None and self.drop(way):
                    continue  # lost on the way
                dst.sendall(data)
                t = now()
                with self.lock:
                    self.count[way] += len(data)
                    if len(data) >= DATA:
                        if not self.first_data[way]:
                            self.first_data[way] = t
                        self.last_data[way] = t
        except OSError:
            pass
        if clean and not conn.cut:
            try:
                dst.shutdown(socket.SHUT_WR)  # pass the end on: each side sees what the other did
            except OSError:
                conn.kill()
        else:
            conn.kill()
        with self.lock:
            conn.ended += 1
            last = conn.ended == 2
            if last:
                self.conns.discard(conn)
        if last:
            for s in conn.socks:
                s.close()


# --- the daemon --------------------------------------------------------------------------


class DaemonFailed(Exception):
    pass


class Daemon:
    """`sync-onboard serve` on a free port, its stderr appended to `onboard.log`."""

    def __init__(self, bins: Path, root: Path, key: Path) -> None:
        self.bin = bins / "sync-onboard"
        self.root = root
        self.vols = root / "vols"
        self.state = root / "state"
        self.key = key
        self.log = root / "onboard.log"
        self.p: subprocess.Popen | None = None
        self.addr = ""
        self.starts = 0
        for d in (self.vols, self.state):
            d.mkdir(parents=True, exist_ok=True)

    def start(self, note: str = "") -> None:
        self.starts += 1
        listen = self.root / "listen.out"
        with open(self.log, "a") as log:
            log.write(f"--- soak: start {self.starts} {note}\n")
        with open(self.log, "ab") as err, open(listen, "wb") as out:
            self.p = PROCS.spawn(
                [
                    self.bin,
                    "serve",
                    "--volumes",
                    self.vols,
                    "--state",
                    self.state,
                    "--listen",
                    "127.0.0.1:0",
                    "--key",
                    self.key,
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        until = now() + 60
        while now() < until:
            text = listen.read_text(errors="replace")
            if text.endswith("\n") and text.startswith("listening on "):
                self.addr = text.split()[2]
                return
            if self.p.poll() is not None:
                break
            time.sleep(0.005)
        code = self.p.poll()
        raise DaemonFailed(
            f"sync-onboard did not start (exit {code}); log tail:\n{self.log_tail()}"
        )

    def alive(self) -> bool:
        return self.p is not None and self.p.poll() is None

    def kill(self) -> None:
        if self.p is not None and self.p.poll() is None:
            self.p.kill()  # SIGKILL
        if self.p is not None:
            self.p.wait()

    def stop(self) -> None:
        if self.p is not None and self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


# --- trees -------------------------------------------------------------------------------

WORDS = [
    "".join(random.Random(i).choices("abcdefghijklmnopqrstuvwxyz", k=2 + i % 9))
    for i in range(1500)
]


def text(rng: random.Random, n: int) -> bytes:
    """About `n` bytes of compressible text lines."""
    lines, size = [], 0
    while size < n:
        line = f"{rng.randrange(10**9)} " + " ".join(rng.choices(WORDS, k=10)) + "\n"
        lines.append(line)
        size += len(line)
    return "".join(lines).encode()[:n]


def noise(rng: random.Random, n: int) -> bytes:
    """`n` incompressible bytes."""
    return rng.randbytes(n)


class Tree:
    """Files by path relative to a folder, held in memory and written to every root.

    The pod's volume is written in the soak's and the mirror's volume alike, so both see the
    same change. Every file touched in a round gets that round's mtime (distinct per round).
    """

    def __init__(self, roots: list[Path]) -> None:
        self.roots = roots
        self.data: dict[str, bytes] = {}
        self.digest: dict[str, str] = {}
        self.mtime = 0

    def _touch(self, rel: str) -> None:
        self.digest.pop(rel, None)
        for r in self.roots:
            os.utime(r / rel, (self.mtime, self.mtime))

    def put(self, rel: str, data: bytes) -> None:
        self.data[rel] = data
        for r in self.roots:
            p = r / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        self._touch(rel)

    def patch(self, rel: str, offset: int, data: bytes) -> None:
        """Overwrites in place, as a database does."""
        old = self.data[rel]
        self.data[rel] = old[:offset] + data + old[offset + len(data) :]
        for r in self.roots:
            with open(r / rel, "r+b") as f:
                f.seek(offset)
                f.write(data)
        self._touch(rel)

    def append(self, rel: str, data: bytes) -> None:
        self.data[rel] += data
        for r in self.roots:
            with open(r / rel, "ab") as f:
                f.write(data)
        self._touch(rel)

    def truncate(self, rel: str, n: int) -> None:
        self.data[rel] = self.data[rel][:n]
        for r in self.roots:
            os.truncate(r / rel, n)
        self._touch(rel)

    def remove(self, rel: str) -> None:
        del self.data[rel]
        self.digest.pop(rel, None)
        for r in self.roots:
            (r / rel).unlink()
            self._prune(r, (r / rel).parent)

    def rename(self, a: str, b: str) -> None:
        self.data[b] = self.data.pop(a)
        self.digest[b] = self.digest.pop(a, None) or sha(self.data[b])
        for r in self.roots:
            (r / b).parent.mkdir(parents=True, exist_ok=True)
            os.rename(r / a, r / b)
            self._prune(r, (r / a).parent)

    def _prune(self, root: Path, d: Path) -> None:
        """Removes folders left empty (the script's trees never keep empty folders)."""
        while d != root and d.is_dir() and not any(d.iterdir()):
            d.rmdir()
            d = d.parent

    def hashes(self) -> dict[str, str]:
        for rel, data in self.data.items():
            if rel not in self.digest:
                self.digest[rel] = sha(data)
        return dict(self.digest)

    def under(self, prefix: str) -> list[str]:
        return sorted(p for p in self.data if p.startswith(prefix))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_source(tree: Tree, rng: random.Random) -> None:
    """The ground folder: incompressible binaries, text tables, many small files (~4.5 MB)."""
    for i in range(4):
        tree.put(f"bin/b{i}.bin", noise(rng, rng.randrange(300_000, 900_000)))
    for i in range(3):
        tree.put(f"data/t{i}.csv", text(rng, rng.randrange(150_000, 300_000)))
    for i in range(1200):
        tree.put(f"small/s{i % 25:02}/f{i:04}.txt", text(rng, rng.randrange(40, 2000)))


def change_source(tree: Tree, rng: random.Random, r: int) -> str:
    """One round's edits of the ground folder; returns a short description."""
    did = []
    fresh = 0  # bytes of new incompressible data
    bins = tree.under("bin/")
    for rel in rng.sample(bins, k=min(len(bins), rng.choice((1, 1, 2)))):
        op = rng.choices(("rewrite", "patch", "append", "truncate"), (4, 3, 2, 1))[0]
        size = len(tree.data[rel])
        if size < 150_000:
            op = "rewrite"
        elif op == "append" and size > 1_500_000:
            op = "truncate"
        if op == "rewrite":
            n = rng.randrange(200_000, 1_000_000)
            tree.put(rel, noise(rng, n))
            fresh += n
        elif op == "patch":
            for _ in range(rng.randint(1, 4)):
                n = rng.randrange(4_096, 65_536)
                tree.patch(rel, rng.randrange(0, size - n), noise(rng, n))
                fresh += n
        elif op == "append":
            n = rng.randrange(50_000, 300_000)
            tree.append(rel, noise(rng, n))
            fresh += n
        else:
            tree.truncate(rel, int(size * rng.uniform(0.6, 0.9)))
        did.append(f"{op} {rel}")
    if rng.random() < 0.25 and len(bins) < 6:
        n = rng.randrange(100_000, 700_000)
        tree.put(f"bin/n{r}.bin", noise(rng, n))
        fresh += n
        did.append("add bin")
    if rng.random() < 0.2 and len(bins) > 2:
        tree.remove(rng.choice(tree.under("bin/")))
        did.append("remove bin")
    if fresh < 800_000:
        # Every push carries about a megabyte or more of new incompressible data, so that it
        # lasts a while on the link and an interruption can land inside it.
        rel = rng.choice(tree.under("bin/"))
        tree.put(rel, noise(rng, rng.randrange(800_000, 1_400_000)))
        did.append(f"rewrite {rel}")
    tables = tree.under("data/")
    rel = rng.choice(tables)
    if rng.random() < 0.5:
        tree.append(rel, text(rng, rng.randrange(5_000, 50_000)))
    else:
        size = len(tree.data[rel])
        for _ in range(rng.randint(1, 20)):
            n = rng.randrange(20, 400)
            tree.patch(rel, rng.randrange(0, size - n), text(rng, n))
    small = tree.under("small/")
    edits = rng.sample(small, k=rng.randint(5, 60))
    for rel in edits:
        tree.put(rel, text(rng, rng.randrange(40, 2000)))
    folders = sorted({p.rsplit("/", 1)[0] for p in small})
    adds = rng.randint(5, 60)
    for i in range(adds):
        tree.put(f"{rng.choice(folders)}/r{r}_{i}.txt", text(rng, rng.randrange(40, 2000)))
    small = tree.under("small/")
    removes = rng.randint(5, 60) if len(small) > 700 else 0
    for rel in rng.sample(small, k=removes):
        tree.remove(rel)
    small = tree.under("small/")
    moves = rng.randint(0, 10)
    for i, rel in enumerate(rng.sample(small, k=moves)):
        tree.rename(rel, f"{rng.choice(folders)}/m{r}_{i}.txt")
    if rng.random() < 0.1 and len(folders) > 15:
        gone = rng.choice(folders)
        for rel in tree.under(gone + "/"):
            tree.remove(rel)
        did.append(f"remove {gone}/")
    if rng.random() < 0.1:
        for i in range(rng.randint(20, 60)):
            tree.put(f"small/x{r}/f{i:03}.txt", text(rng, rng.randrange(40, 2000)))
        did.append(f"add small/x{r}/")
    did.append(f"small: {len(edits)} edited, {adds} added, {removes} removed, {moves} moved")
    return "; ".join(did)


PAGE = 4096


def make_pod(tree: Tree, rng: random.Random) -> None:
    """What the pod writes in its volume's out/: a log, a database, results, stats (~4 MB)."""
    tree.put(f"{OUT}/log.txt", text(rng, 300_000))
    tree.put(f"{OUT}/db.bin", noise(rng, 300 * PAGE))
    for i in range(3):
        tree.put(f"{OUT}/results/r{i:04}.bin", noise(rng, rng.randrange(200_000, 600_000)))
    for i in range(300):
        tree.put(f"{OUT}/stats/s{i:04}.json", text(rng, rng.randrange(100, 1500)))


def change_pod(tree: Tree, rng: random.Random, r: int) -> str:
    """One round of the pod's work, written straight into its volume."""
    did = []
    log = f"{OUT}/log.txt"
    tree.append(log, text(rng, rng.randrange(20_000, 300_000)))
    if len(tree.data[log]) > 2_500_000:
        for old in tree.under(f"{OUT}/log."):
            if old != log:
                tree.remove(old)
        tree.rename(log, f"{OUT}/log.{r}.txt")
        tree.put(log, text(rng, 10_000))
        did.append("log rotated")
    db = f"{OUT}/db.bin"
    pages = len(tree.data[db]) // PAGE
    touched = rng.randint(5, 80)
    for _ in range(touched):
        tree.patch(db, rng.randrange(pages) * PAGE, noise(rng, PAGE))
    if rng.random() < 0.2 and pages < 900:
        tree.append(db, noise(rng, rng.randint(16, 128) * PAGE))
    did.append(f"db: {touched} pages")
    new = rng.randint(1, 3)
    for i in range(new):
        size = rng.randrange(100_000, 1_000_000) if i else rng.randrange(600_000, 1_200_000)
        tree.put(f"{OUT}/results/r{r:04}_{i}.bin", noise(rng, size))
    results = tree.under(f"{OUT}/results/")
    for rel in results[: max(0, len(results) - 6)]:
        tree.remove(rel)
    if rng.random() < 0.15:
        rel = rng.choice(tree.under(f"{OUT}/results/"))
        tree.put(rel, noise(rng, rng.randrange(100_000, 800_000)))
        did.append("result rewritten")
    did.append(f"{new} results")
    stats = tree.under(f"{OUT}/stats/")
    for rel in rng.sample(stats, k=rng.randint(5, 40)):
        tree.put(rel, text(rng, rng.randrange(100, 1500)))
    for i in range(rng.randint(5, 30)):
        tree.put(f"{OUT}/stats/r{r}_{i}.json", text(rng, rng.randrange(100, 1500)))
    stats = tree.under(f"{OUT}/stats/")
    if len(stats) > 150:
        for rel in rng.sample(stats, k=rng.randint(5, 30)):
            tree.remove(rel)
    if rng.random() < 0.1:
        stats = tree.under(f"{OUT}/stats/")
        for i, rel in enumerate(rng.sample(stats, k=5)):
            tree.rename(rel, f"{OUT}/stats/m{r}_{i}.json")
        did.append("stats renamed")
    return "; ".join(did)


# --- checking ----------------------------------------------------------------------------


def walk(root: Path) -> tuple[dict[str, str], set[str], list[str]]:
    """Files (path -> SHA-256), folders and `.~sync.` temporaries under `root`, as they are
    now. An entry that vanishes while it is read (a rename or removal in progress) is left out.
    """
    files: dict[str, str] = {}
    dirs: set[str] = set()
    temps: list[str] = []

    def visit(d: Path, prefix: str) -> None:
        try:
            entries = list(os.scandir(d))
        except FileNotFoundError:
            return
        for e in entries:
            rel = prefix + e.name
            if e.name.startswith(TEMP_PREFIX):
                temps.append(rel)
                continue
            try:
                if e.is_dir(follow_symlinks=False):
                    dirs.add(rel)
                    visit(Path(e.path), rel + "/")
                elif e.is_file(follow_symlinks=False):
                    with open(e.path, "rb") as f:
                        files[rel] = hashlib.file_digest(f, "sha256").hexdigest()
                else:
                    files[rel] = "special"
            except (FileNotFoundError, NotADirectoryError):
                pass

    visit(root, "")
    return files, dirs, temps


def judge(files: dict[str, str], old: dict[str, str], new: dict[str, str]):
    """Files that are neither the old nor the new version of their path (or at a path neither
    has), and paths both versions have that are missing."""
    corrupt = []
    for path, h in sorted(files.items()):
        if path not in old and path not in new:
            corrupt.append((path, "at a path neither version has"))
        elif h != old.get(path) and h != new.get(path):
            corrupt.append((path, "neither the old nor the new version"))
    missing = sorted(p for p in old.keys() & new.keys() if p not in files)
    return corrupt, missing


def prefixed(hashes: dict[str, str], prefix: str) -> dict[str, str]:
    return {f"{prefix}/{p}": h for p, h in hashes.items()}


def dirs_of(paths) -> set[str]:
    out = set()
    for p in paths:
        parts = p.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            out.add("/".join(parts[:i]))
    return out


# --- one setup: a daemon, a ground state, a link --------------------------------------------


class Setup:
    def __init__(self, bins: Path, root: Path, key: Path, src: Path, rate):
        self.root = root
        self.bins = bins
        self.key = key
        self.src = src
        self.daemon = Daemon(bins, root, key)
        self.gstate = root / "ground"
        self.copy = root / "copy"
        self.gstate.mkdir(parents=True, exist_ok=True)
        self.link = Link(rate)
        self.out = root / "run.out"
        self.err = root / "run.err"

    def start(self, note: str = "") -> None:
        """Starts the daemon; the third failure in a row ends the run (DaemonFailed)."""
        for tries in range(3):
            try:
                self.daemon.start(note)
                break
            except DaemonFailed:
                if tries == 2:
                    raise
                time.sleep(1)
        self.link.retarget(self.daemon.addr)

    def restart(self, note: str) -> None:
        """SIGKILL, then start again on the same folders (a new port: the link follows)."""
        self.daemon.kill()
        self.start(note)

    @property
    def volume(self) -> Path:
        return self.daemon.vols / POD

    def command(self, kind: str) -> list:
        g = self.bins / "sync-ground"
        conn = ["--pod", POD, "--to", self.link.addr, "--key", self.key]
        conn += ["--state", self.gstate, "--json"]
        if kind == "push":
            return [g, "push", self.src, "--dest", DEST, *conn]
        return [g, "pull", "--into", self.copy, "--path", f"{OUT}/**", "--delete", *conn]

    def spawn(self, kind: str) -> subprocess.Popen:
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            return PROCS.spawn(self.command(kind), stdin=subprocess.DEVNULL, stdout=out, stderr=err)

    def output(self) -> tuple[str, str]:
        return (
            self.out.read_text(errors="replace"),
            self.err.read_text(errors="replace"),
        )

    def run_clean(self, kind: str) -> dict:
        """One uninterrupted transfer: exit code, bytes, and when data flowed (for aiming)."""
        self.link.reset_marks()
        before = self.link.snapshot()
        t0 = now()
        p = self.spawn(kind)
        try:
            code = p.wait(timeout=ATTEMPT_TIMEOUT)
        except subprocess.TimeoutExpired:
            p.kill()
            code = p.wait()
        t1 = now()
        after = self.link.snapshot()
        way = "up" if kind == "push" else "down"
        first, last = self.link.first_data[way], self.link.last_data[way]
        out, err = self.output()
        return {
            "code": code,
            "stderr": err,
            "stdout": out,
            "up": after["up"] - before["up"],
            "down": after["down"] - before["down"],
            "bytes": after["up"] + after["down"] - before["up"] - before["down"],
            "seconds": t1 - t0,
            # Before the data: scan, plan, encode; after it: verify and apply.
            "before_data": (first - t0) if first else (t1 - t0),
            "after_data": (t1 - last) if last else 0.0,
        }


# --- the soak ----------------------------------------------------------------------------


class Soak:
    def __init__(self, args, bins: Path, work: Path) -> None:
        self.args = args
        self.seed = args.seed
        self.work = work
        self.key = work / "link.key"
        key = subprocess.run(
            [bins / "sync-onboard", "keygen"], check=True, capture_output=True, text=True
        ).stdout
        self.key.write_text(key)
        self.src = work / "src"
        self.src.mkdir()
        self.soak = Setup(bins, work / "soak", self.key, self.src, args.rate)
        self.mirror = Setup(bins, work / "mirror", self.key, self.src, None)
        self.source = Tree([self.src])
        self.pod = Tree([self.soak.volume, self.mirror.volume])
        self.t0 = int(time.time()) - 90 * 86400
        self.rounds: list[dict] = []
        self.findings: list[dict] = []
        self.counts = {
            "rounds": 0,
            "pushes": 0,
            "pulls": 0,
            "kills_ground": 0,
            "kills_daemon": 0,
            "cuts": 0,
            "landed_ground": 0,
            "landed_daemon": 0,
            "landed_cut": 0,
            "found_over": 0,
            "corrupt_files": 0,
            "missing_files": 0,
            "stray_temporaries": 0,
            "transient_temporaries": 0,
            "late_settles": 0,
            "transfers_completed": 0,
            "attempts": 0,
            "retries": 0,
            "unexpected_exits": 0,
            "bytes_total": 0,
            "bytes_up": 0,
            "bytes_down": 0,
            "bytes_clean": 0,
        }
        self.phases: dict[str, int] = {}
        self.exits: dict[str, int] = {}
        self.started = now()
        self.log_seen = 0  # bytes of the soak daemon's log already scanned

    # -- setup ---------------------------------------------------------------------------

    def set_up(self) -> None:
        self.soak.start()
        self.mirror.start()
        self.source.mtime = self.t0
        self.pod.mtime = self.t0
        make_source(self.source, random.Random(f"{self.seed}:source"))
        self.soak.volume.mkdir(parents=True, exist_ok=True)
        self.mirror.volume.mkdir(parents=True, exist_ok=True)
        make_pod(self.pod, random.Random(f"{self.seed}:pod"))
        for setup in (self.soak, self.mirror):
            for kind in ("push", "pull"):
                r = setup.run_clean(kind)
                if r["code"] != 0:
                    raise SystemExit(f"setup {kind} failed ({r['code']}):\n{r['stderr']}")
                print(
                    f"  first {kind} ({setup.root.name}): {r['bytes']:,} B in {r['seconds']:.1f} s",
                    flush=True,
                )
        self.final_check(-1, "setup")

    # -- one round -----------------------------------------------------------------------

    def play(self, r: int) -> bool:
        """Plays round `r`; False when the run cannot go on (a transfer never completed)."""
        plan = random.Random(f"{self.seed}:plan:{r}")
        retry = random.Random(f"{self.seed}:retry:{r}")
        # Always the same draws, whatever the command line narrows (so a seed means the same).
        kind = ("push", "pull")[plan.random() < 0.5]
        what = ("ground", "daemon", "cut")[int(plan.random() * 3)]
        u = plan.random()
        kind = self.args.kind or kind
        what = self.args.what or what
        phases = (PUSH_PHASES if kind == "push" else PULL_PHASES)[:3]
        weights = (2, 4, 3, 1) if kind == "push" else (3, 4, 3, 1)
        aim = random.Random(u).choices((*phases, "any"), weights)[0]
        if self.args.aim:
            aim = self.args.aim
            if aim in ("plan", "encode"):
                aim = phases[0]
        frac = plan.uniform(0.02, 0.95)
        pick = plan.random()
        interrupt_from = self.args.interrupt_from
        quiet = r < interrupt_from
        rec = {"round": r, "kind": kind, "what": what, "aim": aim, "attempts": []}
        change = random.Random(f"{self.seed}:change:{r}")
        if kind == "push":
            old = self.source.hashes()
            self.source.mtime = self.t0 + 60 * (r + 1)
            rec["change"] = change_source(self.source, change, r)
            new = self.source.hashes()
        else:
            old = self.pod.hashes()
            self.pod.mtime = self.t0 + 60 * (r + 1)
            rec["change"] = change_pod(self.pod, change, r)
            new = self.pod.hashes()

        clean = self.mirror.run_clean(kind)
        if clean["code"] != 0:
            self.finding(
                r,
                kind,
                "mirror",
                clean["code"],
                clean["stderr"],
                self.mirror,
                "the uninterrupted mirror transfer failed",
            )
        rec["clean_bytes"] = clean["bytes"]
        rate = self.args.rate
        expect = {
            "seconds": clean["seconds"] + clean["bytes"] / rate,
            "data": clean["up"] if kind == "push" else clean["down"],
            "before": clean["before_data"],
            "after": clean["after_data"],
        }
        rec["expected_seconds"] = round(expect["seconds"], 2)

        start = self.soak.link.snapshot()
        interrupts, clean_failures, done = 0, 0, False
        for attempt in range(MAX_ATTEMPTS):
            if attempt == 0:
                hit = None if quiet else {"what": what, "aim": aim, "frac": frac, "pick": pick}
            elif interrupts < MAX_INTERRUPTS and not quiet and retry.random() < AGAIN:
                hit = {
                    "what": retry.choice(("ground", "daemon", "cut")),
                    "aim": "any",
                    "frac": retry.uniform(0.02, 0.95),
                    "pick": retry.random(),
                }
            else:
                hit = None
            a = self.attempt(r, kind, hit, expect, old, new)
            rec["attempts"].append(a)
            self.counts["attempts"] += 1
            if attempt:
                self.counts["retries"] += 1
            self.exits[str(a["code"])] = self.exits.get(str(a["code"]), 0) + 1
            if a.get("landed"):
                interrupts += 1
            if a["code"] == 0:
                done = True
                break
            expected_code = a["code"] in RETRYABLE or (
                a["code"] == KILLED and a.get("what") == "ground" and a.get("landed")
            )
            if not expected_code:
                self.counts["unexpected_exits"] += 1
                self.finding(
                    r,
                    kind,
                    f"attempt {attempt + 1}",
                    a["code"],
                    a["stderr"],
                    self.soak,
                    "unexpected exit code" + (" after an interruption" if a.get("landed") else ""),
                )
            if hit is None:
                clean_failures += 1
                if clean_failures >= MAX_CLEAN_FAILURES:
                    break
                # As an operator would: the next pass a little later (0.5 s, 1 s, ... 8 s), so
                # that a passing trouble of the machine (no free local port, say) goes by.
                time.sleep(min(0.5 * 2 ** (clean_failures - 1), 8.0))
        end = self.soak.link.snapshot()
        rec["bytes"] = end["up"] + end["down"] - start["up"] - start["down"]
        rec["extra_bytes"] = rec["bytes"] - clean["bytes"]
        rec["interruptions"] = interrupts
        self.counts["bytes_total"] += rec["bytes"]
        self.counts["bytes_clean"] += clean["bytes"]
        self.counts["bytes_up"] += end["up"] - start["up"]
        self.counts["bytes_down"] += end["down"] - start["down"]
        self.counts["rounds"] += 1
        self.counts["pushes" if kind == "push" else "pulls"] += 1
        if not done:
            a = rec["attempts"][-1]
            self.finding(
                r,
                kind,
                "round",
                a["code"],
                a["stderr"],
                self.soak,
                f"the transfer did not complete in {len(rec['attempts'])} attempts",
            )
            self.rounds.append(rec)
            return False
        self.counts["transfers_completed"] += 1
        rec["final"] = self.final_check(r, kind)
        self.scan_daemon_log(r, kind)
        rec["seconds"] = round(now() - self.round_started, 2)
        self.rounds.append(rec)
        return True

    # -- one attempt ---------------------------------------------------------------------

    def attempt(self, r: int, kind: str, hit, expect, old, new) -> dict:
        s = self.soak
        if not s.daemon.alive():
            self.finding(
                r,
                kind,
                "daemon",
                s.daemon.p.returncode,
                s.daemon.log_tail(),
                s,
                "sync-onboard exited on its own",
            )
            s.restart(f"round {r}: after it exited on its own")
        PROCS.forget_done()
        s.link.reset_marks()
        base = s.link.snapshot()
        t0 = now()
        p = s.spawn(kind)
        a: dict = {"aim": hit["aim"] if hit else None, "what": hit["what"] if hit else None}
        if hit:
            phase = self.aim_and_fire(kind, p, hit, expect, base, t0)
            a["landed"] = phase not in ("after", "none")
            a["phase"] = phase
            a["at"] = round(now() - t0, 3)
            if "armed" in hit:
                a["armed"] = hit["armed"]
            key = f"{kind} {hit['what']} {phase}"
            self.phases[key] = self.phases.get(key, 0) + 1
        try:
            code = p.wait(timeout=ATTEMPT_TIMEOUT)
        except subprocess.TimeoutExpired:
            p.kill()
            code = p.wait()
            a["hung"] = True
            self.finding(
                r,
                kind,
                "attempt",
                "timeout",
                s.output()[1],
                s,
                f"sync-ground ran past {ATTEMPT_TIMEOUT:.0f} s",
            )
        a["code"] = code
        a["seconds"] = round(now() - t0, 2)
        snap = s.link.snapshot()
        a["bytes"] = snap["up"] + snap["down"] - base["up"] - base["down"]
        out, err = s.output()
        a["stderr"] = err.strip()[-2000:]
        if "panicked" in err:
            self.finding(r, kind, "attempt", code, err, s, "sync-ground panicked")
        try:
            report = json.loads(out)
            keys = ("pack_bytes", "resumed_from", "acked", "received", "up_to_date", "notes")
            a["report"] = {k: report[k] for k in keys if k in report and report[k]}
        except ValueError:
            pass
        if hit:
            # Whenever the transfer was interrupted: every file old or new. For a push the
            # node may still be applying (after a ground kill or a cut): per file that still
            # holds at any moment, since every file is placed by one rename.
            self.check_now(r, kind, old, new, a)
        return a

    def aim_and_fire(self, kind, p, hit, expect, base, t0) -> str:
        """Waits for the aimed moment, then interrupts; returns the phase it landed in."""
        s = self.soak
        link = s.link
        way = "up" if kind == "push" else "down"
        aim, frac, pick = hit["aim"], hit["frac"], hit["pick"]
        data = max(expect["data"], 1)
        fire_at = None
        if aim == "any":
            fire_at = t0 + pick * 1.15 * expect["seconds"]
        elif aim in ("plan", "encode"):
            # Ground: scan, manifest, plan and encoding; node: scan and encoding of the pull.
            fire_at = t0 + pick * max(expect["before"], 0.02)
        while p.poll() is None:
            t = now()
            moved = link.count[way] - base[way]
            if fire_at is not None and t >= fire_at:
                break
            if aim == "receive" and moved >= DATA + frac * data:
                break
            if (
                aim == "apply"
                and fire_at is None
                and moved >= max(DATA, 0.9 * data)
                and not link.flowing(way)
            ):
                # The data is through; verification and apply take about `after` seconds.
                fire_at = t + pick * 0.9 * max(expect["after"], 0.02)
                hit["armed"] = round(t - t0, 3)
            time.sleep(0.002)
        phase = self.phase_now(kind, p, base)
        what = hit["what"]
        if what == "ground":
            if p.poll() is None:
                p.kill()  # SIGKILL
                self.counts["kills_ground"] += 1
            else:
                phase = "after"
        elif what == "daemon":
            # Killed even when the transfer is over: a restart at rest is tested too.
            s.restart(f"(SIGKILL, {kind}, {phase})")
            self.counts["kills_daemon"] += 1
        elif p.poll() is None and link.cut():
            self.counts["cuts"] += 1
        else:
            phase = "after" if p.poll() is not None else "none"
        if phase in ("after", "none"):
            self.counts["found_over"] += 1
        else:
            self.counts[f"landed_{what}"] += 1
        return phase

    def phase_now(self, kind, p, base) -> str:
        """Where the transfer stands, from what the link carried and when."""
        link = self.soak.link
        if p.poll() is not None:
            return "after"
        way = "up" if kind == "push" else "down"
        if link.flowing(way):
            return "receive"
        if link.count[way] - base[way] >= 16384:
            return "apply"
        return "plan" if kind == "push" else "encode"

    # -- checks --------------------------------------------------------------------------

    def expected_volume(self, src: dict[str, str], pod: dict[str, str]) -> dict[str, str]:
        return {**prefixed(src, DEST), **pod}

    def check_now(self, r, kind, old, new, a) -> None:
        if kind == "push":
            files, _, temps = walk(self.soak.volume)
            pod = self.pod.hashes()
            corrupt, missing = judge(
                files, self.expected_volume(old, pod), self.expected_volume(new, pod)
            )
        else:
            files, _, temps = walk(self.soak.copy)
            corrupt, missing = judge(files, old, new)
        nested = [t for t in temps if "/" in t]
        a["temps"] = len(temps)
        self.counts["transient_temporaries"] += len(temps) - len(nested)
        self.counts["stray_temporaries"] += len(nested)
        if corrupt or missing or nested:
            self.counts["corrupt_files"] += len(corrupt)
            self.counts["missing_files"] += len(missing)
            a["corrupt"] = corrupt[:20]
            a["missing"] = missing[:20]
            self.finding(
                r,
                kind,
                "check after interruption",
                a["code"],
                a["stderr"],
                self.soak,
                f"{len(corrupt)} corrupt, {len(missing)} missing, "
                f"{len(nested)} temporaries below the root: "
                f"{(corrupt + [(m, 'missing') for m in missing] + nested)[:10]}",
            )

    def final_check(self, r, kind) -> dict:
        """After a completed transfer: the volume and the copy equal their sources exactly,
        by hash, with nothing extra and no temporaries."""
        src_files, src_dirs, _ = walk(self.src)
        if src_files != self.source.hashes():
            raise SystemExit("the script's model of the source differs from the disk (bug)")
        pod = self.pod.hashes()
        want_vol = self.expected_volume(src_files, pod)
        want_vol_dirs = {DEST} | {f"{DEST}/{d}" for d in src_dirs} | dirs_of(pod)
        out = {}
        for name, root, want, want_dirs in (
            ("volume", self.soak.volume, want_vol, want_vol_dirs),
            ("copy", self.soak.copy, pod, dirs_of(pod)),
        ):
            for look in range(2):
                files, dirs, temps = walk(root)
                diff = sorted(set(files.items()) ^ set(want.items()))
                ddiff = sorted(dirs ^ want_dirs)
                if not (diff or ddiff or temps) or look:
                    break
                # Not yet as it must be: whatever is still at work gets two seconds, so that a
                # late apply is told apart from a lasting difference.
                time.sleep(2)
            out[name] = {"files": len(files), "differ": len(diff), "temps": len(temps)}
            if look:
                out[name]["late"] = True
                self.counts["late_settles"] += 1
            self.counts["stray_temporaries"] += len(temps)
            paths = sorted({p for p, _ in diff})
            if diff or ddiff or temps:
                self.finding(
                    r,
                    kind,
                    f"final check of the {name}",
                    0,
                    "",
                    self.soak,
                    f"after exit 0 the {name} differs from its source (still 2 s later): "
                    f"{len(paths)} files ({paths[:8]}), folders {ddiff[:8]}, "
                    f"temporaries {temps[:8]}",
                )
            elif look:
                self.finding(
                    r,
                    kind,
                    f"final check of the {name}",
                    0,
                    "",
                    self.soak,
                    f"right after exit 0 the {name} was not yet equal to its source; "
                    "2 s later it was (something went on applying after the transfer ended)",
                )
        return out

    def scan_daemon_log(self, r, kind) -> None:
        """A panic in the daemon's log (one the daemon survived, or that ended it) is a finding."""
        log = self.soak.daemon.log
        with open(log, "rb") as f:
            f.seek(self.log_seen)
            new = f.read().decode(errors="replace")
            self.log_seen = f.tell()
        if "panicked" in new:
            at = new.index("panicked")
            self.finding(
                r,
                kind,
                "daemon log",
                None,
                new[max(0, at - 200) : at + 1500],
                self.soak,
                "sync-onboard panicked",
            )

    def finding(self, r, kind, where, code, stderr, setup, note) -> None:
        f = {
            "round": r,
            "kind": kind,
            "where": where,
            "code": code,
            "note": note,
            "stderr": (stderr or "").strip()[-3000:],
            "command": (
                " ".join(str(x) for x in setup.command(kind)) if kind in ("push", "pull") else ""
            ),
            "reproduce": f"python3 benches/soak/soak.py --seed {self.seed} --rounds {r + 1} "
            f"--rate {self.args.rate:.0f} --keep{self.narrowed()} (timing-dependent: the "
            f"same changes and choices, not the same moments; --interrupt-from {r} skips the "
            "interruptions of the rounds before)",
        }
        self.findings.append(f)
        print(f"  FINDING round {r}: {note} (exit {code})", file=sys.stderr)
        if f["stderr"]:
            print("    " + f["stderr"][-600:].replace("\n", "\n    "), file=sys.stderr)

    def narrowed(self) -> str:
        a = self.args
        return "".join(
            f" --{k.replace('_', '-')} {v}"
            for k, v in (("kind", a.kind), ("what", a.what), ("aim", a.aim))
            if v
        ) + (f" --interrupt-from {a.interrupt_from}" if a.interrupt_from else "")

    # -- the run -------------------------------------------------------------------------

    def run(self) -> None:
        n = self.args.rounds
        print(
            f"soak: {n} rounds, seed {self.seed}, link {self.args.rate / MB:.2f} MB/s, "
            f"work {self.work}",
            flush=True,
        )
        t_setup = now()
        self.set_up()
        print(
            f"set up in {now() - t_setup:.1f} s (source {sum(map(len, self.source.data.values())) / MB:.1f} MB"
            f" in {len(self.source.data)} files, pod {sum(map(len, self.pod.data.values())) / MB:.1f} MB"
            f" in {len(self.pod.data)} files)",
            flush=True,
        )
        self.loop_started = now()
        for r in range(n):
            self.round_started = now()
            if not self.play(r):
                print(f"round {r}: the transfer did not complete; stopping", file=sys.stderr)
                break
            self.print_round(self.rounds[-1], n)
        self.elapsed = now() - self.started

    def print_round(self, rec, n) -> None:
        done = len(self.rounds)
        per = (now() - self.loop_started) / done
        eta = per * (n - done)
        hits = [f"{a['what']}@{a['phase']}" for a in rec["attempts"] if a.get("what")]
        codes = ",".join(str(a["code"]) for a in rec["attempts"])
        print(
            f"[{rec['round'] + 1:>4}/{n}] {rec['kind']:<4} {' '.join(hits) or '-':<36} "
            f"exits {codes:<12} {rec['bytes']:>9,} B (clean {rec['clean_bytes']:>9,}, "
            f"{rec['extra_bytes']:>+8,}) {rec['seconds']:5.1f} s  eta {eta / 60:5.1f} min",
            flush=True,
        )
        if done == 3 and n > 10:
            print(f"  estimate for {n} rounds: {per * n / 60:.0f} min", flush=True)

    def summary(self) -> dict:
        c = self.counts
        done = [r for r in self.rounds if "final" in r]
        n_int = sum(r["interruptions"] for r in done)
        extra_all = sum(r["extra_bytes"] for r in done)
        hit = [r["extra_bytes"] for r in done if r["interruptions"]]
        calm = [r["extra_bytes"] for r in done if not r["interruptions"]]
        per_kind = {}
        for what in ("ground", "daemon", "cut"):
            xs = [
                r["extra_bytes"]
                for r in done
                if [a["what"] for a in r["attempts"] if a.get("landed")] == [what]
            ]
            per_kind[what] = {
                "rounds": len(xs),
                "mean": round(statistics.mean(xs)) if xs else None,
                "median": round(statistics.median(xs)) if xs else None,
                "max": max(xs) if xs else None,
            }
        by_transfer = {}
        for kind in ("push", "pull"):
            rs = [r for r in done if r["kind"] == kind]
            n = sum(r["interruptions"] for r in rs)
            extra = sum(r["extra_bytes"] for r in rs)
            by_transfer[kind] = {
                "rounds": len(rs),
                "interruptions": n,
                "extra_bytes": extra,
                "per_interruption": round(extra / n) if n else None,
            }
        costly = sorted(done, key=lambda r: -r["extra_bytes"])[:10]
        return {
            "seed": self.seed,
            "rounds_asked": self.args.rounds,
            "rate_bytes_per_s": self.args.rate,
            "counts": c,
            "interruptions_landed": n_int,
            "phases": dict(sorted(self.phases.items())),
            "exit_codes": dict(sorted(self.exits.items())),
            "resent": {
                "how": "per round, the bytes across the proxy (every attempt, both ways) minus "
                "the bytes of the same change run once without interruption in a mirror setup "
                "(its own daemon and ground state, an unthrottled counting proxy); summed over "
                "all completed rounds (a cost can show in the round after its interruption) "
                "and divided by the interruptions that landed mid-transfer",
                "total": extra_all,
                "per_interruption": round(extra_all / n_int) if n_int else None,
                "by_transfer": by_transfer,
                "interrupted_rounds": len(hit),
                "median_interrupted_round": round(statistics.median(hit)) if hit else None,
                "by_kind_single_interruption": per_kind,
                "uninterrupted_rounds": len(calm),
                "uninterrupted_mean_difference": round(statistics.mean(calm)) if calm else None,
                "costliest_rounds": [
                    {
                        "round": r["round"],
                        "kind": r["kind"],
                        "extra_bytes": r["extra_bytes"],
                        "clean_bytes": r["clean_bytes"],
                        "interruptions": [
                            f"{a['what']}@{a['phase']}" for a in r["attempts"] if a.get("what")
                        ],
                    }
                    for r in costly
                    if r["extra_bytes"] > 0
                ],
            },
            "elapsed_seconds": round(self.elapsed, 1),
            "seconds_per_round": round((now() - self.loop_started) / max(len(self.rounds), 1), 2),
            "findings": self.findings,
            "rounds": [{**r, "attempts": [_brief(a) for a in r["attempts"]]} for r in self.rounds],
        }

    def print_summary(self, s: dict) -> None:
        c = s["counts"]
        rs = s["resent"]
        rows = [
            ("rounds (push / pull)", f"{c['rounds']} ({c['pushes']} / {c['pulls']})"),
            ("kills: sync-ground (mid-transfer)", f"{c['kills_ground']} ({c['landed_ground']})"),
            (
                "kills: sync-onboard, restarted (mid-transfer)",
                f"{c['kills_daemon']} ({c['landed_daemon']})",
            ),
            ("link cuts (mid-transfer)", f"{c['cuts']} ({c['landed_cut']})"),
            ("aimed interruptions that found the transfer over", c["found_over"]),
            ("corrupt files (must be 0)", c["corrupt_files"]),
            ("missing files (must be 0)", c["missing_files"]),
            ("stray temporaries (must be 0)", c["stray_temporaries"]),
            ("temporaries seen right after an interruption", c["transient_temporaries"]),
            ("transfers completed", f"{c['transfers_completed']} of {c['rounds']}"),
            ("  equal to the source only 2 s after exit 0", c["late_settles"]),
            ("attempts (retries)", f"{c['attempts']} ({c['retries']})"),
            ("unexpected exit codes", c["unexpected_exits"]),
            (
                "bytes over the proxy (up / down)",
                f"{c['bytes_total']:,} ({c['bytes_up']:,} / {c['bytes_down']:,})",
            ),
            ("bytes of the same changes, clean", f"{c['bytes_clean']:,}"),
            ("bytes re-sent per interruption", _n(rs["per_interruption"])),
            ("  in pushes", _n(rs["by_transfer"]["push"]["per_interruption"])),
            ("  in pulls", _n(rs["by_transfer"]["pull"]["per_interruption"])),
            ("  round with one ground kill: mean (rounds)", _kind(rs, "ground")),
            ("  round with one daemon kill: mean (rounds)", _kind(rs, "daemon")),
            ("  round with one cut: mean (rounds)", _kind(rs, "cut")),
            (
                "  round without one: mean (rounds)",
                f"{_n(rs['uninterrupted_mean_difference'])} ({rs['uninterrupted_rounds']})",
            ),
            ("findings", len(s["findings"])),
            (
                "elapsed",
                f"{s['elapsed_seconds'] / 60:.1f} min, {s['seconds_per_round']:.1f} s per round",
            ),
        ]
        width = max(len(k) for k, _ in rows)
        vw = max(len(str(v)) for _, v in rows)
        print()
        print(f"| {'soak, seed ' + str(s['seed']):<{width}} | {'count':>{vw}} |")
        print(f"|{'-' * (width + 2)}|{'-' * (vw + 1)}:|")
        for k, v in rows:
            print(f"| {k:<{width}} | {str(v):>{vw}} |")
        print()
        print("Interruptions by where they landed:")
        for k, v in s["phases"].items():
            kind, what, phase = k.split()
            print(f"  {kind:<4} {what:<6} {PHASE_TEXT[(kind, phase)]:<28} {v:>5}")
        print(
            "Exit codes of all attempts:",
            ", ".join(f"{k}: {v}" for k, v in s["exit_codes"].items()),
        )
        print("Re-sent bytes: " + rs["how"] + ".")
        if rs["costliest_rounds"]:
            print("Costliest rounds (bytes over the clean run):")
            for r in rs["costliest_rounds"][:5]:
                print(
                    f"  round {r['round']:>4} {r['kind']:<4} {r['extra_bytes']:>+10,} "
                    f"(clean {r['clean_bytes']:,}) {' '.join(r['interruptions']) or '-'}"
                )
        for f in s["findings"]:
            print(
                f"FINDING round {f['round']} ({f['kind']}, {f['where']}): {f['note']}; exit {f['code']}"
            )
            print(f"  reproduce: {f['reproduce']}")


def _brief(a: dict) -> dict:
    """An attempt for the JSON summary: stderr only where the exit code was not expected."""
    if a["code"] in (0, KILLED) or (a["code"] in RETRYABLE and a.get("landed")):
        return {k: v for k, v in a.items() if k != "stderr"}
    return a


def _n(v) -> str:
    return "n/a" if v is None else f"{v:,}"


def _kind(rs, what) -> str:
    k = rs["by_kind_single_interruption"][what]
    return f"{_n(k['mean'])} ({k['rounds']})"


# --- entry -------------------------------------------------------------------------------


def build() -> Path:
    print("building sync-ground and sync-onboard (cargo build --release)", flush=True)
    subprocess.run(
        ["cargo", "build", "--release", "-p", "sync-ground", "-p", "sync-onboard"],
        cwd=REPO,
        check=True,
    )
    meta = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(json.loads(meta.stdout)["target_directory"]) / "release"


def main() -> int:
    ap = argparse.ArgumentParser(
        description="Soak: random SIGKILLs of sync-ground and sync-onboard and link cuts, "
        "during pushes and pulls; every file checked whole after each.",
    )
    ap.add_argument("--rounds", type=int, default=20, help="rounds (default 20)")
    ap.add_argument("--seed", type=int, default=1, help="seed of every random choice (default 1)")
    ap.add_argument(
        "--rate",
        type=float,
        default=2_000_000,
        metavar="BYTES_PER_S",
        help="link rate each way at the proxy (default 2000000)",
    )
    ap.add_argument(
        "--bin",
        type=Path,
        metavar="DIR",
        help="folder with release sync-ground and sync-onboard (default: cargo build --release)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument(
        "--work", type=Path, metavar="DIR", help="work folder (default: a new temporary one)"
    )
    ap.add_argument(
        "--summary",
        type=Path,
        metavar="FILE",
        help="JSON summary (default: soak-summary-SEED.json in the work folder's parent)",
    )
    ap.add_argument(
        "--interrupt-from",
        type=int,
        default=0,
        metavar="R",
        help="run rounds before R without interruption (to reach a failing round quickly)",
    )
    ap.add_argument("--kind", choices=("push", "pull"), help="only this kind of transfer")
    ap.add_argument("--what", choices=("ground", "daemon", "cut"), help="only this interruption")
    ap.add_argument(
        "--aim",
        choices=("plan", "encode", "receive", "apply", "any"),
        help="only this moment (plan and encode: before the data, for either kind)",
    )
    args = ap.parse_args()
    bins = args.bin.resolve() if args.bin else build()
    for b in ("sync-ground", "sync-onboard"):
        if not os.access(bins / b, os.X_OK):
            ap.error(f"{bins / b} is not an executable")
    if args.work:
        work = args.work.resolve()
        if work.exists() and any(work.iterdir()):
            ap.error(f"{work} is not empty")
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix=f"orbit-soak-{args.seed}-"))
    summary_path = args.summary or work.parent / f"soak-summary-{args.seed}.json"
    # Also when started with SIGINT ignored (in the background of a script).
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    soak = Soak(args, bins, work)
    interrupted = False
    try:
        soak.run()
    except KeyboardInterrupt:
        interrupted = True
        soak.elapsed = now() - soak.started
        print("\ninterrupted: ending the processes", file=sys.stderr)
    except (DaemonFailed, subprocess.SubprocessError, OSError) as e:
        # The daemon would not start again, say: a finding, and the end of this run.
        soak.elapsed = now() - soak.started
        soak.finding(len(soak.rounds), "-", "run", None, str(e), soak.soak, "the soak stopped")
    finally:
        soak.soak.link.close()
        soak.mirror.link.close()
        PROCS.end_all()
    if not hasattr(soak, "loop_started"):
        soak.loop_started = now()
    s = soak.summary()
    s["interrupted_by_user"] = interrupted
    summary_path.write_text(json.dumps(s, indent=1) + "\n")
    soak.print_summary(s)
    print(f"summary: {summary_path}")
    keep = args.keep or bool(soak.findings)
    if keep:
        print(f"work folder kept: {work}" + ("" if args.keep else " (there are findings)"))
    else:
        shutil.rmtree(work, ignore_errors=True)
    bad = s["counts"]["corrupt_files"] or s["counts"]["stray_temporaries"] or soak.findings
    return 1 if bad or interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
