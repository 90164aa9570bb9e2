#!/usr/bin/env bash
# Uplink-delta comparison: how many bytes does each tool need to turn the
# onboard copy (v1) into the new release (v2)?
#
#   benches/compare/install-tools.sh   # once (needs root: apt)
#   benches/compare/run.sh             # fetches the corpus on first use
#
# Environment knobs:
#   CORPUS=DIR      corpus location (default benches/compare/.corpus)
#   SYNC_BUILD=0    never run cargo; use target/release binaries if present
#   SYNC_BUILD=force  always run cargo build first (picks up new code)
#   PUSH_TIMEOUT=900  seconds allowed per sync-ground push
#   SYNC_RATE="--rate 9600bit"  the link rate sync-ground is told (it sets the effort)
#   SYNC_BIN_DIR=DIR  take sync-onboard/sync-ground from DIR instead of
#                   target/release (never builds; e.g. to test this script)
#
# Cases (see corpus.sh): "binary" = ruff 0.6.8 -> 0.6.9 executable,
# "tree" = pip 24.0 -> 24.1 unpacked wheel.
#
# What each column measures (all in bytes):
#   raw v2     sum of the sizes of v2's regular files (what a naive full
#              upload would send before compression).
#   zstd       size of `zstd -19 --long=27 --patch-from=v1.tar v2.tar`.
#              Pure payload: no transport, and it assumes the sender has an
#              exact copy of the onboard v1.tar.
#   xdelta3    size of `xdelta3 -9 -e -s v1.tar v2.tar` (same assumptions).
#   rsync -z   "Total bytes sent" + "Total bytes received" from --stats of an
#              rsync client pushing v2/ into a directory holding v1, over a
#              pipe to `rsync --server` (see lib/fake-rsh). Both directions:
#              includes the receiver's block checksums and the file list.
#   casync     sum of the compressed chunk files (.cacnk, zstd) that v2's
#              store has and v1's store does not, plus v2's .caidx index
#              compressed with `zstd -19`. Both stores made with default
#              chunking (16K/64K/256K) from the directories. This is a lower
#              bound for a casync transfer: no protocol or HTTP overhead, and
#              it assumes the receiver already knows which chunks it lacks.
#   sync       `.wire.total` reported by `sync-ground push --json` for the v2
#              push (v1 pushed first, not counted): every byte on the TCP
#              socket, both directions, handshake and encryption included.
#   sync/zstd  ratio of the two; < 1 means our tool beats zstd --patch-from.
#
# Every tool's output is checked: zstd/xdelta3 deltas are decoded and
# compared with v2.tar, the rsync and casync results and the sync volume are
# compared with v2/ using diff -r. A mismatch fails the run.
set -euo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CORPUS=${CORPUS:-$HERE/.corpus}
WORK=$HERE/.work
SYNC_BUILD=${SYNC_BUILD:-auto}
PUSH_TIMEOUT=${PUSH_TIMEOUT:-900} # seconds per sync-ground push
# The uplink these figures are for: the engine picks its effort from the link's rate, and on
# loopback it would measure a fast link after the first push.
read -r -a SYNC_RATE <<<"${SYNC_RATE:---rate 9600bit}"
CASES=(binary tree)

log() { echo "run: $*" >&2; }
die() { echo "run: ERROR: $*" >&2; exit 1; }

# --- tools -------------------------------------------------------------------
for t in rsync xdelta3 zstd tar python3; do
  command -v "$t" >/dev/null || die "$t missing; run benches/compare/install-tools.sh"
done
HAVE_CASYNC=0
if command -v casync >/dev/null; then HAVE_CASYNC=1; fi

# --- corpus (idempotent; downloads only on first use) --------------------------
"$HERE/corpus.sh" "$CORPUS" >&2
CORPUS=$(cd "$CORPUS" && pwd)

mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)

# --- our tool, the server, helpers (lib/common.sh) ------------------------------
# shellcheck source=lib/common.sh
. "$HERE/lib/common.sh"
if build_sync "$WORK/cargo-build.log"; then HAVE_SYNC=1; else HAVE_SYNC=0; log "$SYNC_NOTE"; fi
cleanup() { stop_server; }
trap cleanup EXIT

FAILED=0
fail() { echo "run: FAILED: $*" >&2; FAILED=1; }

# zstd with v1.tar as dictionary. --long=27 (128 MiB window) covers the whole
# ~30 MB reference; zstd needs the same flag to decode.
zstd_case() { # V1TAR V2TAR DIR -> R=bytes
  local v1=$1 v2=$2 d=$3
  zstd -q -f -19 --long=27 --patch-from="$v1" "$v2" -o "$d/v2.tar.zst"
  zstd -q -f -d --long=27 --patch-from="$v1" "$d/v2.tar.zst" -o "$d/zstd.check.tar"
  R=$(fsize "$d/v2.tar.zst")
  cmp -s "$v2" "$d/zstd.check.tar" || { fail "zstd round trip differs"; R=ERR; }
  rm -f "$d/zstd.check.tar"
}

xdelta_case() { # V1TAR V2TAR DIR -> R=bytes
  local v1=$1 v2=$2 d=$3
  xdelta3 -9 -e -f -s "$v1" "$v2" "$d/v2.vcdiff"
  xdelta3 -d -f -s "$v1" "$d/v2.vcdiff" "$d/xdelta.check.tar"
  R=$(fsize "$d/v2.vcdiff")
  cmp -s "$v2" "$d/xdelta.check.tar" || { fail "xdelta3 round trip differs"; R=ERR; }
  rm -f "$d/xdelta.check.tar"
}

# rsync -z over a pipe. A local-to-local rsync ignores -z and copies whole
# files, so we force the remote protocol with a fake remote shell that runs
# `rsync --server` locally. --delete so the result is exactly v2 (pip 24.1
# removed files), --no-whole-file to keep the delta algorithm on.
RSYNC_OPTS=(-a -z --delete --no-whole-file --stats)
rsync_case() { # V1DIR V2DIR DIR -> R=stats total, R2=pipe total
  local v1=$1 v2=$2 d=$3 sent recv
  rm -rf "$d/rsync-dest"
  cp -a "$v1" "$d/rsync-dest" # the "onboard" copy, mtimes preserved
  rsync "${RSYNC_OPTS[@]}" -e "$HERE/lib/fake-rsh" \
    "$v2/" "fakehost:$d/rsync-dest/" >"$d/rsync.stats"
  diff -r "$v2" "$d/rsync-dest" >/dev/null || fail "rsync result differs from v2"
  sent=$(awk -F': ' '/^Total bytes sent/ {gsub(/[^0-9]/, "", $2); print $2}' "$d/rsync.stats")
  recv=$(awk -F': ' '/^Total bytes received/ {gsub(/[^0-9]/, "", $2); print $2}' "$d/rsync.stats")

  # Cross-check: same transfer again through a remote shell that counts the
  # bytes on the pipe itself (lib/count-rsh.py).
  #
  # Observed (rsync 3.5.0, this corpus): they agree to within 0.05%, but the
  # pipe count is always a little LARGER (~70-200 bytes per run): rsync
  # snapshots its "Total bytes" counters before the last protocol messages
  # (end-of-transfer/goodbye exchange) go over the pipe. Repeated runs also
  # vary by a few bytes because the multiplexed-I/O framing and the zstd
  # stream flushes depend on buffer timing. The table uses --stats as asked;
  # the pipe count is printed under the table.
  rm -rf "$d/rsync-dest"
  cp -a "$v1" "$d/rsync-dest"
  COUNT_FILE="$d/rsync.pipecount" rsync "${RSYNC_OPTS[@]}" \
    -e "$HERE/lib/count-rsh.py" "$v2/" "fakehost:$d/rsync-dest/" >"$d/rsync.stats2"
  diff -r "$v2" "$d/rsync-dest" >/dev/null || fail "rsync (counted) result differs from v2"
  R=$((sent + recv))
  R2=$(awk '{print $1 + $2}' "$d/rsync.pipecount")
}

# casync: chunk both versions into separate stores; what v2 needs beyond v1
# is the chunks v1's store lacks, plus the index naming all of v2's chunks.
casync_case() { # V1DIR V2DIR DIR -> R=bytes, R2=chunk counts
  local v1=$1 v2=$2 d=$3 new idx
  rm -rf "$d/casync" && mkdir -p "$d/casync/new.castr"
  local cs=$d/casync
  casync make --compression=zstd --store="$cs/v1.castr" "$cs/v1.caidx" "$v1" >/dev/null
  casync make --compression=zstd --store="$cs/v2.castr" "$cs/v2.caidx" "$v2" >/dev/null
  # chunk files are named by content hash: <4 hex>/<hash>.cacnk
  (cd "$cs/v2.castr" && find . -name '*.cacnk') | sort >"$cs/v2.list"
  (cd "$cs/v1.castr" && find . -name '*.cacnk') | sort >"$cs/v1.list"
  comm -23 "$cs/v2.list" "$cs/v1.list" >"$cs/new.list"
  while read -r f; do
    mkdir -p "$cs/new.castr/$(dirname "$f")"
    cp "$cs/v2.castr/$f" "$cs/new.castr/$f"
  done <"$cs/new.list"
  new=$(tree_bytes "$cs/new.castr")
  idx=$(zstd -q -19 -c "$cs/v2.caidx" | wc -c)
  # Proof that the measured set is sufficient: rebuild v2 from the new chunks
  # plus v1's store only.
  casync extract --store="$cs/new.castr" --extra-store="$cs/v1.castr" \
    "$cs/v2.caidx" "$cs/out" >/dev/null
  diff -r "$v2" "$cs/out" >/dev/null || fail "casync extract differs from v2"
  R=$((new + idx))
  R2="$(wc -l <"$cs/new.list") of $(wc -l <"$cs/v2.list") chunks new"
}

# Our tool: push v1 (not counted), then v2 from the same ground directory with
# the same pod and ground state; report v2's .wire.total.
sync_case() { # NAME V1DIR V2DIR DIR -> R=bytes | ERR | MISMATCH
  local name=$1 v1=$2 v2=$3 d=$4/sync port="" i
  R=ERR
  rm -rf "$d" && mkdir -p "$d/vols" "$d/ostate" "$d/gstate"
  "$ONBOARD" keygen >"$d/key" || { fail "sync-onboard keygen"; return; }
  "$ONBOARD" serve --volumes "$d/vols" --state "$d/ostate" \
    --listen 127.0.0.1:0 --key "$d/key" >"$d/serve.out" 2>"$d/serve.err" &
  SERVER_PID=$!
  # First stdout line: "listening on 127.0.0.1:PORT". Wait up to 30 s.
  for ((i = 0; i < 300; i++)); do
    port=$(sed -n '1s/^listening on [^ ]*:\([0-9]\+\)[[:space:]]*$/\1/p' "$d/serve.out")
    [[ -n $port ]] && break
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  if [[ -z $port ]]; then
    fail "sync-onboard serve did not report a port (see $d/serve.err)"
    cleanup; return
  fi
  # The ground works from one directory that the operator updates in place.
  # `timeout` so a hung push fails the run instead of blocking it forever.
  cp -a "$v1" "$d/src"
  if ! timeout "$PUSH_TIMEOUT" "$GROUND" push "$d/src" --pod "$name" --to "127.0.0.1:$port" --key "$d/key" \
      --state "$d/gstate" --json "${SYNC_RATE[@]}" >"$d/push1.json" 2>"$d/push1.err"; then
    fail "sync-ground push v1 ($name), see $d/push1.err"; cleanup; return
  fi
  rm -rf "$d/src" && cp -a "$v2" "$d/src"
  if ! timeout "$PUSH_TIMEOUT" "$GROUND" push "$d/src" --pod "$name" --to "127.0.0.1:$port" --key "$d/key" \
      --state "$d/gstate" --json "${SYNC_RATE[@]}" >"$d/push2.json" 2>"$d/push2.err"; then
    fail "sync-ground push v2 ($name), see $d/push2.err"; cleanup; return
  fi
  cleanup
  if ! diff -r "$v2" "$d/vols/$name" >"$d/diff.out" 2>&1; then
    fail "sync: volume $name does NOT match v2 (see $d/diff.out):"
    head -20 "$d/diff.out" >&2
    R=MISMATCH; return
  fi
  # diff -r compares contents only; permissions (e.g. bin/ruff's exec bit)
  # are worth knowing about but are not this benchmark's pass criterion.
  if ! diff <(cd "$v2" && find . -printf '%y %m %P\n' | sort) \
      <(cd "$d/vols/$name" && find . -printf '%y %m %P\n' | sort) >"$d/modes.diff"; then
    log "warning: sync: $name contents match v2 but file types/modes differ (see $d/modes.diff)"
  fi
  R=$(python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["wire"]["total"]))' \
    "$d/push2.json") || { fail "no .wire.total in $d/push2.json"; R=ERR; }
}

# --- measure -------------------------------------------------------------------
declare -A RAW ZSTD XDELTA RSYNC RSYNC_PIPE CASYNC CASYNC_CHUNKS SYNC TIMES NFILES
for c in "${CASES[@]}"; do
  v1=$CORPUS/$c/v1 v2=$CORPUS/$c/v2 d=$WORK/$c
  rm -rf "$d" && mkdir -p "$d"
  log "case $c: tars"
  mktar "$v1" "$d/v1.tar"
  mktar "$v2" "$d/v2.tar"
  RAW[$c]=$(tree_bytes "$v2")
  NFILES[$c]="$(find "$v1" -type f | wc -l) -> $(find "$v2" -type f | wc -l) files"
  t=""

  log "case $c: zstd"; s=$(now)
  zstd_case "$d/v1.tar" "$d/v2.tar" "$d"; ZSTD[$c]=$R; t+="zstd $(elapsed "$s")s"

  log "case $c: xdelta3"; s=$(now)
  xdelta_case "$d/v1.tar" "$d/v2.tar" "$d"; XDELTA[$c]=$R; t+=", xdelta3 $(elapsed "$s")s"

  log "case $c: rsync"; s=$(now)
  rsync_case "$v1" "$v2" "$d"; RSYNC[$c]=$R; RSYNC_PIPE[$c]=$R2
  t+=", rsync $(elapsed "$s")s (2 runs)"

  if ((HAVE_CASYNC)); then
    log "case $c: casync"; s=$(now)
    casync_case "$v1" "$v2" "$d"; CASYNC[$c]=$R; CASYNC_CHUNKS[$c]=$R2
    t+=", casync $(elapsed "$s")s"
  fi

  if ((HAVE_SYNC)); then
    log "case $c: sync"; s=$(now)
    sync_case "$c" "$v1" "$v2" "$d"; SYNC[$c]=$R
    t+=", sync $(elapsed "$s")s"
  else
    SYNC[$c]=n/a
  fi
  TIMES[$c]=$t
done

# --- report --------------------------------------------------------------------
hdr="| case | raw v2 | zstd -19 --long=27 --patch-from | xdelta3 -9 | rsync -z (wire) |"
sep="|---|---:|---:|---:|---:|"
((HAVE_CASYNC)) && { hdr+=" casync (new chunks + index) |"; sep+="---:|"; }
hdr+=" sync (wire) | sync / zstd |"; sep+="---:|---:|"
echo
echo "$hdr"
echo "$sep"
for c in "${CASES[@]}"; do
  row="| $c | ${RAW[$c]} | ${ZSTD[$c]} | ${XDELTA[$c]} | ${RSYNC[$c]} |"
  ((HAVE_CASYNC)) && row+=" ${CASYNC[$c]} |"
  row+=" ${SYNC[$c]} | $(ratio "${SYNC[$c]}" "${ZSTD[$c]}") |"
  echo "$row"
done
echo
echo "Bytes. binary = ruff 0.6.8 -> 0.6.9 (bin/ruff), tree = pip 24.0 -> 24.1 (unpacked wheel)."
for c in "${CASES[@]}"; do
  echo "- $c: ${NFILES[$c]}; v2.tar $(fsize "$WORK/$c/v2.tar") bytes;" \
    "rsync pipe count ${RSYNC_PIPE[$c]} (--stats ${RSYNC[$c]});" \
    "${CASYNC_CHUNKS[$c]:-casync not run}"
  echo "  time: ${TIMES[$c]}"
done
[[ -n $SYNC_NOTE && $HAVE_SYNC == 0 ]] && echo "- sync: n/a: $SYNC_NOTE"
((FAILED)) && echo "- FAILED checks (ERR/MISMATCH cells): see the 'run: FAILED' messages on stderr"
((HAVE_CASYNC)) || echo "- casync: not installed, column left out"
echo
echo "Versions:"
echo "- $(zstd --version)"
echo "- $(xdelta3 -V 2>&1 | head -1)"
echo "- $(rsync --version | head -1)"
# Which compressor -z ends up using between two rsync >= 3.2 (a dry run, so
# the debug output does not perturb the measured runs above).
echo "  rsync -z negotiated: $(rsync "${RSYNC_OPTS[@]}" --debug=nstr -n \
  -e "$HERE/lib/fake-rsh" "$CORPUS/tree/v2/" "fakehost:$WORK/tree/rsync-dest/" 2>&1 |
  sed -n 's/^Client negotiated compress: //p')"
((HAVE_CASYNC)) && echo "- $(casync --version | head -1) (Debian $(dpkg-query -W -f='${Version}' casync 2>/dev/null || echo '?'))"
echo "- $(tar --version | head -1)"
if ((HAVE_SYNC)); then
  echo "- sync-onboard/sync-ground: $(date -u -r "$GROUND" +%FT%TZ) build," \
    "git $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet 2>/dev/null || echo '+dirty')"
fi

if ((FAILED)); then
  echo "run: one or more checks FAILED (see messages above)" >&2
  exit 1
fi
