#!/usr/bin/env bash
# Bytes re-sent after a full volume disk and after a full state disk (issue 9, item 5).
# Needs root (tmpfs mounts) and port 7921 free. Usage: benches/fulldisk/run.sh target/release
set -euo pipefail
B=$(cd "${1:?bin dir}" && pwd); W=$(mktemp -d)
stop_daemon() { [ -f "$W/pid" ] && kill "$(cat "$W/pid")" 2>/dev/null; rm -f "$W/pid"; sleep 0.5; }
trap 'stop_daemon; umount -l $W/vols $W/state 2>/dev/null; rm -rf $W' EXIT
cd $W; mkdir vols state src g
$B/sync-onboard keygen > k
run_daemon() { $B/sync-onboard serve --volumes $W/vols --state $W/state --listen 127.0.0.1:7921 --key k >> d.log 2>&1 & echo $! > "$W/pid"; sleep 1; }
push() { $B/sync-ground push src --pod p --dest inputs --json --to 127.0.0.1:7921 --key k --state g "$@" || true; }
echo "== full volume disk (volumes on a 60 MB tmpfs, state elsewhere)"
mount -t tmpfs -o size=60M tmpfs vols
run_daemon
echo seed > src/readme; push > /dev/null
mkdir -p vols/p/scratch; head -c 30000000 /dev/urandom > vols/p/scratch/junk   # the pod fills its volume
head -c 50000000 /dev/urandom > src/data.bin
push | python3 -c 'import sys; print("  first push:", sys.stdin.read()[:200])' 2>&1
rm -rf vols/p/scratch                                                  # the pod frees room
push | python3 -c 'import json,sys; r=json.load(sys.stdin); print("  retry: pack", r["pack_bytes"], "resumed_from", r["resumed_from"], "wire sent", r["wire"]["sent"], "notes", r["notes"])'
stop_daemon; umount -l vols; rm -rf state/* g/*; mkdir -p vols
echo "== full state disk (state on a 20 MB tmpfs)"
mount -t tmpfs -o size=20M tmpfs state
run_daemon
rm -f src/data.bin; push > /dev/null
head -c 50000000 /dev/urandom > src/data.bin
push 2>&1 | head -c 300; echo
mount -o remount,size=200M state
push | python3 -c 'import json,sys; r=json.load(sys.stdin); print("  retry: pack", r["pack_bytes"], "resumed_from", r["resumed_from"], "wire sent", r["wire"]["sent"], "notes", r["notes"])'
