#!/usr/bin/env python3
"""What peers without the key cost `sync-onboard serve` (issue 9, items 6 and 7).

Starts the given daemon on 127.0.0.1 port 0 with its own temporary folders and key, opens N
connections that never finish the handshake, holds them for a while (optionally running a real
`sync-ground push` meanwhile), closes them, and reports what the daemon used: peak and current
resident memory (VmHWM, VmRSS of /proc/PID/status), descriptors (/proc/PID/fd), CPU time, log
bytes (its stderr), and how many of the connections it had dropped.

Modes (what each connection sends):
  record  the preamble, a handshake record header declaring 65,535 bytes and 60,000 of them,
          then nothing: the daemon buffered the record per connection
  drip    the preamble, then a first handshake message a byte every --every seconds: the
          idle timeout restarted on every byte and never ran out
  version a preamble of another protocol version: refused at once, a log line each

Only the Python standard library; Linux only (/proc). Needs a descriptor limit above N for
itself (raised as far as the hard limit allows). Examples (see README "Peers without the key"):

  python3 benches/flood/flood.py --onboard target/release/sync-onboard \
      --connections 10000 --mode record --hold 10 --ground target/release/sync-ground
  python3 benches/flood/flood.py --onboard target/release/sync-onboard \
      --connections 1100 --mode drip --nofile 1024 --hold 25 --ground target/release/sync-ground
"""

import argparse
import json
import os
import resource
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

PREAMBLE = b"OSYN\x00\x03"  # magic and protocol version 3 (sync-core/src/wire/secure.rs)
# What a dripping peer sends after the preamble, a byte at a time: a first handshake message of
# the right length (48 bytes) that would fail authentication once whole, then zeros.
DRIP = b"\x00\x30" + b"\x07" * 48
IP_BIND_ADDRESS_NO_PORT = 24  # linux/in.h


def proc_status(pid, field):
    """A kB field of /proc/PID/status, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def descriptors(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Daemon:
    def __init__(self, onboard, nofile, extra):
        self.dir = tempfile.TemporaryDirectory(prefix="flood-")
        root = self.dir.name
        for d in ("vols", "state", "ground"):
            os.makedirs(os.path.join(root, d))
        key = subprocess.run([onboard, "keygen"], check=True, capture_output=True).stdout
        self.key = os.path.join(root, "link.key")
        with open(self.key, "wb") as f:
            f.write(key)
        self.log_path = os.path.join(root, "onboard.log")
        log = open(self.log_path, "wb")

        def limit():
            if nofile:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(
            [onboard, "serve", "--volumes", os.path.join(root, "vols"),
             "--state", os.path.join(root, "state"), "--listen", "127.0.0.1:0",
             "--key", self.key] + extra,
            stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, preexec_fn=limit)
        line = self.proc.stdout.readline().decode()
        if not line.startswith("listening on "):
            raise SystemExit(f"the daemon did not start: {line!r}\n{self.log()}")
        host, port = line.split()[-1].rsplit(":", 1)
        self.addr = (host, int(port))
        self.pid = self.proc.pid

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def log_bytes(self):
        return os.path.getsize(self.log_path)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def push(ground, daemon, timeout):
    """A real push of a small tree (1 MB of random bytes and a text file); (exit code, seconds)."""
    src = os.path.join(daemon.dir.name, "src")
    os.makedirs(os.path.join(src, "bin"), exist_ok=True)
    with open(os.path.join(src, "bin", "tool"), "wb") as f:
        f.write(os.urandom(1 << 20))
    with open(os.path.join(src, "readme.md"), "w") as f:
        f.write("# flood\n")
    t0 = time.monotonic()
    try:
        r = subprocess.run(
            [ground, "push", src, "--pod", "p", "--json", "--to", "%s:%d" % daemon.addr,
             "--key", daemon.key, "--state", os.path.join(daemon.dir.name, "ground")],
            capture_output=True, timeout=timeout)
        code, err = r.returncode, r.stderr.decode(errors="replace").strip()
    except subprocess.TimeoutExpired:
        code, err = "timeout", f"no answer in {timeout} s"
    return code, round(time.monotonic() - t0, 2), err


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--onboard", required=True, help="the sync-onboard binary")
    ap.add_argument("--ground", help="a sync-ground binary: push during the hold")
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--mode", choices=["record", "drip", "version"], default="record")
    ap.add_argument("--every", type=float, default=1.0, help="drip: seconds between bytes")
    ap.add_argument("--hold", type=float, default=10.0, help="seconds to hold the connections")
    ap.add_argument("--nofile", type=int, default=0,
                    help="the daemon's descriptor limit (0: this process's hard limit)")
    ap.add_argument("--source", default="127.0.0.2", help="address the connections come from")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("serve_flags", nargs="*", help="extra flags for sync-onboard serve (after --)")
    a = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, a.connections + 256)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    nofile = a.nofile or hard

    d = Daemon(a.onboard, nofile, a.serve_flags)
    time.sleep(0.5)
    base = {"rss": proc_status(d.pid, "VmRSS"), "hwm": proc_status(d.pid, "VmHWM"),
            "fds": descriptors(d.pid), "cpu": cpu_seconds(d.pid), "log": d.log_bytes()}

    sel = selectors.DefaultSelector()
    burst = {
        "record": PREAMBLE + b"\xff\xff" + b"\x07" * 60000,
        "drip": PREAMBLE,
        "version": PREAMBLE[:5] + bytes([PREAMBLE[5] + 1]),
    }[a.mode]
    opened = failed = dropped = 0
    live = set()
    max_fds = 0
    t0 = time.monotonic()
    for i in range(a.connections):
        s = socket.socket()
        s.settimeout(2)
        # The local port is picked at connect, knowing where the connection goes; picked at
        # bind, it often lands on a pair the daemon holds in TIME_WAIT and the connect stalls.
        s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        try:
            s.bind((a.source, 0))
            s.connect(d.addr)
        except OSError:
            failed += 1
            s.close()
            continue
        opened += 1
        try:
            s.sendall(burst)
        except OSError:
            # The daemon ended it while it was being sent.
            dropped += 1
            s.close()
            continue
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        live.add(s)
        if i % 500 == 0:
            max_fds = max(max_fds, descriptors(d.pid))
    open_secs = time.monotonic() - t0

    drips = [0]  # bytes of DRIP sent so far, the same for every connection

    def pump(until):
        nonlocal dropped, max_fds
        next_drip = time.monotonic() + a.every
        while True:
            now = time.monotonic()
            if now >= until:
                return
            for key, _ in sel.select(timeout=min(0.25, until - now)):
                s = key.fileobj
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(s)
                    live.discard(s)
                    s.close()
                    dropped += 1
            if a.mode == "drip" and time.monotonic() >= next_drip:
                next_drip += a.every
                byte = DRIP[drips[0]] if drips[0] < len(DRIP) else 0
                drips[0] += 1
                for s in list(live):
                    try:
                        s.send(bytes([byte]))
                    except OSError:
                        pass
            max_fds = max(max_fds, descriptors(d.pid))

    result = {"mode": a.mode, "connections": a.connections, "daemon_nofile": nofile,
              "serve_flags": a.serve_flags}
    if a.ground:
        pump(time.monotonic() + 1)
        # The push runs in its own process while this one keeps the connections dripping.
        t_push = time.monotonic()
        out = {}

        def run():
            out["push"] = push(a.ground, d, timeout=max(a.hold, 30))

        th = threading.Thread(target=run)
        th.start()
        pump(t_push + a.hold)
        th.join()
        code, secs, err = out["push"]
        result["push"] = {"exit": code, "seconds": secs, "error": err if code != 0 else ""}
    else:
        pump(time.monotonic() + a.hold)
    held = {"rss": proc_status(d.pid, "VmRSS"), "hwm": proc_status(d.pid, "VmHWM"),
            "fds": descriptors(d.pid), "cpu": cpu_seconds(d.pid), "log": d.log_bytes()}
    still = len(live)
    for s in list(live):
        sel.unregister(s)
        s.close()
    live.clear()
    time.sleep(3)
    after = {"rss": proc_status(d.pid, "VmRSS"), "fds": descriptors(d.pid),
             "cpu": cpu_seconds(d.pid), "log": d.log_bytes()}
    d.stop()
    wall = time.monotonic() - t0
    result.update({
        "opened": opened, "connect_failed": failed, "dropped_by_daemon": dropped,
        "still_open_at_end_of_hold": still, "seconds_to_open": round(open_secs, 2),
        "wall_seconds": round(wall, 1),
        "rss_before_mb": round(base["rss"] / 2**20, 1),
        "peak_rss_mb": round(held["hwm"] / 2**20, 1),
        "rss_after_close_mb": round(after["rss"] / 2**20, 1),
        "peak_descriptors": max_fds, "descriptors_after_close": after["fds"],
        "daemon_cpu_seconds": round(after["cpu"] - base["cpu"], 2),
        "log_bytes": d.log_bytes() - base["log"],
    })
    if a.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:28} {v}")
        tail = d.log()[-1500:]
        print("--- log (last 1.5 KB) ---\n" + tail)


if __name__ == "__main__":
    sys.exit(main())
