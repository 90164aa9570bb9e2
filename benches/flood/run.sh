#!/bin/sh
# Peers without the key against sync-onboard builds, side by side (the README table).
#
#   benches/flood/run.sh DIR...
#
# Each DIR holds a sync-onboard and a sync-ground (release builds: target/release, or a copy of
# an older build). Scenarios, each with a real push from 127.0.0.1 while the peers (from
# 127.0.0.2) are held:
#   record  10,000 connections each declaring a 65,535-byte handshake record and sending
#           60,000 bytes of it, held 10 s
#   drip    10,000 connections dripping their first handshake message a byte every 5 s,
#           held 10 s
#   emfile  1,100 dripping connections against a daemon limited to 1,024 descriptors, 25 s
#   version 15,000 connections speaking another protocol version
# Needs a descriptor limit of about 10,300 for itself (raised up to the hard limit).
set -eu
here=$(dirname "$0")
out=${OUT:-$(mktemp -d)}
for dir in "$@"; do
    name=$(basename "$dir")
    run() {
        scenario=$1
        shift
        python3 "$here/flood.py" --onboard "$dir/sync-onboard" --ground "$dir/sync-ground" \
            --json "$@" >"$out/$name-$scenario.json"
        echo "$name $scenario: $(cat "$out/$name-$scenario.json")" >&2
    }
    run record --connections 10000 --mode record --hold 10
    run drip --connections 10000 --mode drip --every 5 --hold 10
    run emfile --connections 1100 --mode drip --every 5 --nofile 1024 --hold 25
    run version --connections 15000 --mode version --hold 2
done
python3 - "$out" "$@" <<'EOF'
import json, os, sys
out, dirs = sys.argv[1], [os.path.basename(d) for d in sys.argv[2:]]
print("| scenario | build | peak RSS | RSS after they left | peak descriptors | log | daemon CPU | dropped by the daemon | push |")
print("|---|---|---:|---:|---:|---:|---:|---:|---|")
for scenario in ["record", "drip", "emfile", "version"]:
    for d in dirs:
        r = json.load(open(os.path.join(out, f"{d}-{scenario}.json")))
        p = r.get("push", {})
        push = f"ok, {p['seconds']} s" if p.get("exit") == 0 else f"failed ({p.get('exit')}) after {p.get('seconds')} s"
        print(f"| {scenario} | {d} | {r['peak_rss_mb']} MB | {r['rss_after_close_mb']} MB | "
              f"{r['peak_descriptors']} | {r['log_bytes']:,} B | {r['daemon_cpu_seconds']} s | "
              f"{r['dropped_by_daemon']:,} of {r['opened']:,} | {push} |")
EOF
