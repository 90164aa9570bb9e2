#!/usr/bin/env python3
"""Fake remote shell that also counts the bytes on the pipe.

Used once per case by run.sh to cross-check rsync's own --stats numbers
("Total bytes sent"/"Total bytes received" as reported by the client) against
an independent count of what actually crossed the pipe between the rsync
client and `rsync --server`.

Usage is like ssh / fake-rsh: count-rsh.py [-l USER] [-opts] HOST CMD...
On exit it writes "SENT RECEIVED" (client's point of view: SENT = client ->
server, RECEIVED = server -> client) to the file named by $COUNT_FILE.
"""
import os
import select
import subprocess
import sys
import threading

args = sys.argv[1:]
while args and args[0].startswith("-"):
    args = args[2:] if args[0] == "-l" else args[1:]
args = args[1:]  # drop the host name

child = subprocess.Popen(
    ["sh", "-c", " ".join(args)],
    stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
)
counts = [0, 0]  # [client->server, server->client]


def write_all(fd, view):
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            # The rsync client may hand us a non-blocking socket: wait until it drains.
            select.select([], [fd], [])
            continue
        view = view[n:]


def pump(src_fd, dst_fd, idx, on_eof):
    try:
        while True:
            try:
                buf = os.read(src_fd, 1 << 16)
            except BlockingIOError:
                select.select([src_fd], [], [])
                continue
            if not buf:
                break
            write_all(dst_fd, memoryview(buf))
            # count only what was forwarded
            counts[idx] += len(buf)
    except (BrokenPipeError, OSError) as e:
        # A pump that stops early would leave both rsyncs waiting for ever: say why.
        if not isinstance(e, BrokenPipeError):
            print(f"count-rsh: pump {idx}: {e}", file=sys.stderr)
    finally:
        on_eof()


up = threading.Thread(
    target=pump, args=(0, child.stdin.fileno(), 0, child.stdin.close), daemon=True)
down = threading.Thread(
    target=pump, args=(child.stdout.fileno(), 1, 1, lambda: None), daemon=True)
up.start()
down.start()
down.join()
rc = child.wait()
# The client normally closes its end right after the server is done; give
# the upstream pump a moment to see EOF so its count is final.
up.join(timeout=5)
with open(os.environ["COUNT_FILE"], "w") as f:
    f.write(f"{counts[0]} {counts[1]}\n")
sys.exit(rc)
