#!/usr/bin/env bash
# Pack and wire bytes of the v2 push of one compare case (v1 pushed first, not counted), with
# the sync-onboard/sync-ground in BIN_DIR. Wire totals move by a few hundred bytes with timing
# (keep-alives while encoding, acknowledgement timers); the pack is the deterministic part, so
# two builds that should encode alike are compared here.
#
#   benches/compare/packbytes.sh BIN_DIR binary|tree      (after run.sh fetched the corpus)
set -euo pipefail
bin=$(cd "$1" && pwd)
case_name=$2
corpus=${CORPUS:-$(cd "$(dirname "$0")" && pwd)/.corpus}/$case_name
work=$(mktemp -d)
trap 'kill "${daemon:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"
"$bin/sync-onboard" keygen > key
chmod 600 key
port=$((20000 + RANDOM % 20000))
"$bin/sync-onboard" serve --volumes vol --state state --listen "127.0.0.1:$port" --key key 2> daemon.log &
daemon=$!
sleep 1
# --rate: the effort follows the link's rate, and the comparison is for the narrow uplink (on
# loopback the second push would measure a fast link).
push() { "$bin/sync-ground" push "$1" --to "127.0.0.1:$port" --key key --pod p --state ground --json --rate 9600bit; }
push "$corpus/v1" > /dev/null
push "$corpus/v2" | python3 -c '
import json, sys
j = json.load(sys.stdin)
print(sys.argv[1] + ": pack", j["pack_bytes"], "B, wire", j["wire"]["total"], "B")' "$case_name"
