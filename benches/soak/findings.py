#!/usr/bin/env python3
"""Deterministic reproductions of what the soak (soak.py) found, one case per argument.

    python3 benches/soak/findings.py --bin target/release [handshake] [pull-cut] [pull-done]

- handshake: a link that drops during the handshake makes sync-ground exit 5 ("authentication
  failed ... do both sides use the same key?") although both sides hold the same key; exit 4
  (link failure, retry) is what the operator, or a script running passes, needs to see.
- pull-cut: a pull cut by the link keeps only what the ground had synced and recorded (every
  256 KiB or 3 s), not everything that had arrived: the next pull asks again for up to 256 KiB
  that already crossed the link. A push cut at the same point resumes where the node was.
- pull-done: a pull whose PullDone never reaches the node (the link or the node lost after the
  ground applied the pack) exits 0 or 4, and the ground forgets the pull; the node never
  records what it delivered, so the next pull cannot send a changed database as a delta or a
  grown log as an append, and sends them whole.

Each case prints what it measured and "REPRODUCED" or "not reproduced". Uses soak.py's proxy
and daemon helpers; Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import soak  # noqa: E402


class Side:
    """A daemon, its link (a proxy) and a ground state: one ground talking to one node."""

    def __init__(self, bins: Path, root: Path, key: Path, rate=None) -> None:
        self.bins = bins
        self.key = key
        self.daemon = soak.Daemon(bins, root, key)
        self.daemon.start()
        self.link = soak.Link(rate)
        self.link.retarget(self.daemon.addr)
        self.gstate = root / "ground"
        self.copy = root / "copy"

    def ground(self, *args, to=None) -> tuple[int, dict, str]:
        cmd = [self.bins / "sync-ground", *args, "--pod", soak.POD, "--to", to or self.link.addr]
        cmd += ["--key", self.key, "--state", self.gstate, "--json"]
        p = soak.PROCS.spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = p.communicate(timeout=120)
        try:
            report = json.loads(out)
        except ValueError:
            report = {}
        return p.returncode, report, err.strip()

    def pull(self):
        return self.ground("pull", "--into", self.copy, "--path", f"{soak.OUT}/**", "--delete")

    def bytes(self) -> int:
        return self.link.total()


def cut_when(link: soak.Link, way: str, at: int, within: float = 60) -> threading.Thread:
    """Cuts every connection once `at` more bytes have crossed `way` (if within `within` s)."""
    start = link.count[way]
    until = time.monotonic() + within

    def watch():
        while link.count[way] - start < at:
            if time.monotonic() > until:
                return
            time.sleep(0.001)
        link.cut()

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def case_handshake(bins: Path, work: Path, key: Path) -> bool:
    side = Side(bins, work / "hs", key, rate=400)  # 400 B/s: the handshake takes a while
    cut_when(side.link, "up", 1)
    code, _, err = side.ground("ls")
    print(f"  link cut after the first byte of the handshake: exit {code}\n    {err}")
    side.link.retarget(side.daemon.addr)
    side.link.pace = {"up": soak.Pacer(None), "down": soak.Pacer(None)}
    code2, _, err2 = side.ground("ls")
    print(f"  the same command again, link whole: exit {code2} {err2}")
    return code == 5 and code2 == 0


def case_pull_cut(bins: Path, work: Path, key: Path) -> bool:
    rng = random.Random(9)
    data = rng.randbytes(3_000_000)
    side = Side(bins, work / "pc", key, rate=1_000_000)
    vol = side.daemon.vols / soak.POD / soak.OUT
    vol.mkdir(parents=True)
    (vol / "big.bin").write_bytes(data)
    before = side.link.count["down"]
    # Past five 256 KiB steps of the ground's staging, 240 kB short of the sixth.
    cut_when(side.link, "down", 5 * 262_144 + 240_000)
    code, _, err = side.pull()
    arrived = side.link.count["down"] - before
    code2, report, _ = side.pull()
    resumed = report.get("resumed_from", 0)
    last = err.splitlines()[-1] if err else ""
    print(f"  pull cut after {arrived:,} B had come down: exit {code} ({last})")
    print(
        f"  next pull: exit {code2}, resumed_from {resumed:,} of a {report.get('pack_bytes', 0):,} "
        f"B pack: {arrived - resumed:,} B asked for again"
    )
    # The same for a push of other bytes, for contrast.
    src = work / "pc-src"
    src.mkdir()
    (src / "big.bin").write_bytes(rng.randbytes(3_000_000))
    up0 = side.link.count["up"]
    cut_when(side.link, "up", 5 * 262_144 + 240_000)
    pcode, _, _ = side.ground("push", src, "--dest", "in")
    sent = side.link.count["up"] - up0
    pcode2, preport, _ = side.ground("push", src, "--dest", "in")
    presumed = preport.get("resumed_from", 0)
    print(
        f"  push cut after {sent:,} B had gone up: exit {pcode}; next push: exit {pcode2}, "
        f"resumed_from {presumed:,}: {sent - presumed:,} B sent again"
    )
    return code == 4 and code2 == 0 and arrived - resumed > 200_000


def case_pull_done(bins: Path, work: Path, key: Path) -> bool:
    rng = random.Random(11)
    db = bytearray(rng.randbytes(2_000_000))
    log = rng.randbytes(500_000).hex().encode()  # 1 MB of text
    sides = {"control": Side(bins, work / "pd-a", key), "lost": Side(bins, work / "pd-b", key)}
    mtime = int(time.time()) - 86400

    def write(step: int) -> None:
        for side in sides.values():
            out = side.daemon.vols / soak.POD / soak.OUT
            out.mkdir(parents=True, exist_ok=True)
            for name, content in (("db.bin", db), ("log.txt", log)):
                (out / name).write_bytes(content)
                soak.os.utime(out / name, (mtime + step, mtime + step))

    def change(step: int) -> None:
        nonlocal log
        for _ in range(10):
            page = rng.randrange(len(db) // 4096) * 4096
            db[page : page + 4096] = rng.randbytes(4096)
        log += rng.randbytes(5_000).hex().encode()
        write(step)

    write(0)
    for side in sides.values():
        assert side.pull()[0] == 0
    # Second pull: the control normally; the other loses everything it sends after the pack.
    change(1)
    c = sides["control"]
    b0 = c.link.snapshot()
    assert c.pull()[0] == 0
    down = c.link.count["down"] - b0["down"]
    lost = sides["lost"]
    d0 = lost.link.count["down"]
    lost.link.drop = lambda way: way == "up" and lost.link.count["down"] - d0 >= down - 64
    code, _, err = lost.pull()
    lost.link.cut()
    lost.link.drop = None
    print(f"  pull whose PullDone was lost on the link: exit {code} {err}")
    # Third pull: ten more pages and 10 KB more log.
    change(2)
    costs = {}
    for name, side in sides.items():
        b = side.bytes()
        code3, report, err3 = side.pull()
        costs[name] = side.bytes() - b
        same = soak.walk(side.copy)[0] == soak.walk(side.daemon.vols / soak.POD)[0]
        print(
            f"  next pull ({name}): exit {code3}, {costs[name]:,} B on the link, pack "
            f"{report.get('pack_bytes', 0):,} B; copy equals the pod: {same} {err3}"
        )
    return costs["lost"] > 5 * costs["control"]


CASES = {"handshake": case_handshake, "pull-cut": case_pull_cut, "pull-done": case_pull_done}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cases", nargs="*", metavar="CASE", help=f"{', '.join(CASES)} (default: all)")
    ap.add_argument("--bin", type=Path, required=True, help="folder with release binaries")
    args = ap.parse_args()
    for name in args.cases:
        if name not in CASES:
            ap.error(f"no case {name!r}: {', '.join(CASES)}")
    bins = args.bin.resolve()
    work = Path(tempfile.mkdtemp(prefix="orbit-findings-"))
    key = work / "link.key"
    key.write_text(
        subprocess.run(
            [bins / "sync-onboard", "keygen"], check=True, capture_output=True, text=True
        ).stdout
    )
    ok = True
    try:
        for name in args.cases or CASES:
            print(f"{name}:")
            found = CASES[name](bins, work, key)
            print(f"  {'REPRODUCED' if found else 'not reproduced'}")
            ok &= found
    finally:
        soak.PROCS.end_all()
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
