#!/usr/bin/env bash
# Downlink comparison: bytes for `sync-ground pull` against `rsync -z` to bring
# a ground copy that holds v1 of what a pod wrote up to v2. Both directions are
# counted for both tools.
#
#   SYNC_BUILD=force bash benches/compare/pull.sh
#
# Environment knobs (as run.sh):
#   SYNC_BUILD=0      never run cargo; use target/release binaries if present
#   SYNC_BUILD=force  always run cargo build first (picks up new code)
#   SYNC_BIN_DIR=DIR  take sync-onboard/sync-ground from DIR (never builds)
#   PULL_TIMEOUT=900  seconds allowed per sync-ground pull / rsync run
#   PULL_CASES="sqlite results"  run only these cases (default: all three)
#
# Cases (data from lib/pull-gen.py, seeded: the same bytes on every run):
#   log      a 42 MB training log (timestamp, step, loss, lr, GPU memory...)
#            that grows by 2%, append only.
#   sqlite   an 11 MB SQLite database (150,000 rows, one index,
#            journal_mode=DELETE): 3,000 contiguous rows updated, 1,000
#            inserted, database closed before syncing.
#   results  300 CSV/JSON files of 5-50 KB: 20 rewritten with small edits,
#            6 new, 4 removed (a tenth). Both tools run with --delete here.
#
# Each case: v1 is written into the pod's volume (.work/pull/vols/<case>),
# pulled once by each tool into its own ground copy (not counted), then the
# volume is changed into v2 in place and pulled again (counted).
#
# What each column measures (bytes):
#   v2 size    sum of the case's file sizes in the volume after the change.
#   rsync -z   every byte on the pipe between the rsync client (the ground,
#              receiving) and `rsync --server --sender` (the satellite),
#              counted by lib/count-rsh.py used as --rsh: up = ground ->
#              satellite (the receiver's block checksums, file-list requests),
#              down = satellite -> ground (file list, deltas, literal data
#              compressed by -z). Options: `rsync -rtz` (+ --delete for
#              results), the defaults a user would type, over a remote shell
#              so the delta algorithm and -z are used. No ssh encryption or
#              framing on top (sync's figure includes its own).
#   sync       `.wire.sent` (up) and `.wire.received` (down) of
#              `sync-ground pull --json`: every byte on the TCP socket, both
#              directions, handshake and encryption included.
#   sync/rsync ratio of the totals (target <= 0.5).
#   zstd -19 appended   (log only) `zstd -19` of the appended bytes alone: a
#              floor for any tool that knows the ground holds the prefix.
#   sync/zstd  ratio of sync's total to that (target <= 1.2).
#
# Under the table, per case, a reference that is not a transfer: the size of
# `zstd -19 --long=27 --patch-from=v1.tar v2.tar` (deterministic tars of the
# case's files): what a sender holding the ground's exact v1 could send, no
# protocol. The satellite holds v1 only where it was not overwritten (the log's
# prefix), so for in-place changes it is a floor rsync-style deltas do not
# reach. For results, also `zstd -19` of the new files alone.
#
# Checks: after each counted pull, the sync copy and the rsync copy are
# compared with the volume (diff -r, i.e. v2). Any difference, failed or
# incomplete pull, prints FAILED and exits 1. Missed targets are reported
# (a "MISSED" line under the table) but do not fail the run.
set -euo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
WORK=$HERE/.work/pull # .work/ is git-ignored (benches/compare/.gitignore)
SYNC_BUILD=${SYNC_BUILD:-auto}
PULL_TIMEOUT=${PULL_TIMEOUT:-900}
read -r -a CASES <<<"${PULL_CASES:-log sqlite results}"
GEN=$HERE/lib/pull-gen.py

log() { echo "pull: $*" >&2; }
die() { echo "pull: ERROR: $*" >&2; exit 1; }

for t in rsync zstd python3 timeout diff; do
  command -v "$t" >/dev/null || die "$t missing; run benches/compare/install-tools.sh"
done
python3 -c 'import sqlite3' 2>/dev/null || die "python3 has no sqlite3 module"

rm -rf "$WORK"
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)

# --- our tool, the server, helpers (lib/common.sh) ------------------------------
# shellcheck source=lib/common.sh
. "$HERE/lib/common.sh"
build_sync "$WORK/cargo-build.log" || die "$SYNC_NOTE"

# --- helpers -------------------------------------------------------------------
FAILED=0
fail() { echo "pull: FAILED: $*" >&2; FAILED=1; }
same_tree() { # WHAT A B OUT: diff -r, FAILED on a difference
  if ! diff -r "$2" "$3" >"$4" 2>&1; then
    fail "$1: $3 does NOT match $2 (see $4):"
    head -20 "$4" >&2
    return 1
  fi
}

# --- the satellite: one sync-onboard for all cases ------------------------------
VOLS=$WORK/vols
mkdir -p "$WORK/gstate"
cleanup() { stop_server; }
trap cleanup EXIT
start_onboard "$WORK" || die "sync-onboard serve did not report its address (see $WORK/serve.err)"
log "sync-onboard listening on $ADDR"

# CPU seconds the satellite's daemon has used so far (user + system).
CLK_TCK=$(getconf CLK_TCK)
onboard_cpu() { awk -v hz="$CLK_TCK" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$SERVER_PID/stat"; }

sync_pull() { # CASE N EXTRA... -> pull N of the case into its sync copy; R=json file
  local c=$1 n=$2 d=$WORK/$1
  shift 2
  R=$d/sync-pull$n.json
  if ! timeout "$PULL_TIMEOUT" "$GROUND" pull --pod "$c" --into "$d/sync-copy" \
      --to "$ADDR" --key "$WORK/key" --state "$WORK/gstate" --json "$@" \
      >"$R" 2>"$d/sync-pull$n.err"; then
    fail "sync-ground pull $n ($c) exited non-zero, see $d/sync-pull$n.err"
    tail -5 "$d/sync-pull$n.err" >&2
    return 1
  fi
  if [[ $(json_field "$R" complete) != true ]]; then
    fail "sync-ground pull $n ($c) not complete: $(cat "$R")"
    return 1
  fi
}

rsync_pull() { # CASE N RSH EXTRA... -> rsync pull N of the case into its rsync copy
  local c=$1 n=$2 rsh=$3 d=$WORK/$1
  shift 3
  if ! COUNT_FILE=$d/rsync-pull$n.count timeout "$PULL_TIMEOUT" \
      rsync -rtz --stats "$@" --rsh="$rsh" "fakehost:$VOLS/$c/" "$d/rsync-copy/" \
      >"$d/rsync-pull$n.stats" 2>"$d/rsync-pull$n.err"; then
    fail "rsync pull $n ($c) exited non-zero, see $d/rsync-pull$n.err"
    tail -5 "$d/rsync-pull$n.err" >&2
    return 1
  fi
}
rsync_stat() { # STATS-FILE "Total bytes sent" -> number
  awk -F': ' -v k="$2" '$1 == k {gsub(/[^0-9]/, "", $2); print $2}' "$1"
}

# --- measure -------------------------------------------------------------------
declare -A SIZE RS_UP RS_DOWN RS_STATS SY_UP SY_DOWN SY_SECS ZSTD_APP FACTS TIMES FIRST FLOOR
for c in "${CASES[@]}"; do
  d=$WORK/$c vol=$VOLS/$c
  mkdir -p "$d"
  extra=()
  [[ $c == results ]] && extra=(--delete)
  t=""

  log "case $c: v1"; s=$(now)
  v1facts=$(python3 "$GEN" "$c" v1 "$vol")
  t+="v1 $(elapsed "$s")s"

  # First pulls, not counted: both ground copies now hold v1.
  log "case $c: first pulls (not counted)"; s=$(now)
  cpu=$(onboard_cpu)
  sync_pull "$c" 1 "${extra[@]}" || continue
  t+=", sync pull 1 $(elapsed "$s")s (sync-onboard CPU"
  t+=" $(awk -v a="$cpu" -v b="$(onboard_cpu)" 'BEGIN {printf "%.1f", b - a}')s)"; s=$(now)
  rsync_pull "$c" 1 "$HERE/lib/fake-rsh" "${extra[@]}" || continue
  t+=", rsync pull 1 $(elapsed "$s")s"
  same_tree "$c v1 (sync)" "$vol" "$d/sync-copy" "$d/diff-sync1.out" || continue
  same_tree "$c v1 (rsync)" "$vol" "$d/rsync-copy" "$d/diff-rsync1.out" || continue
  FIRST[$c]="sync $(json_field "$d/sync-pull1.json" wire.total)"
  FIRST[$c]+=", rsync --stats $(($(rsync_stat "$d/rsync-pull1.stats" "Total bytes sent") +
    $(rsync_stat "$d/rsync-pull1.stats" "Total bytes received")))"
  if [[ $c == log ]]; then
    v1len=$(stat -c %s "$vol/logs/train.log")
  fi
  mktar "$vol" "$d/v1.tar"
  (cd "$vol" && find . -type f | sort) >"$d/v1.files"

  log "case $c: v2"; s=$(now)
  v2facts=$(python3 "$GEN" "$c" v2 "$vol")
  t+=", v2 $(elapsed "$s")s"
  FACTS[$c]="v1: $v1facts; v2: $v2facts"
  SIZE[$c]=$(tree_bytes "$vol")

  log "case $c: sync pull 2 (counted)"; s=$(now); cpu=$(onboard_cpu)
  if sync_pull "$c" 2 "${extra[@]}"; then
    t+=", sync pull 2 $(elapsed "$s")s (sync-onboard CPU"
    t+=" $(awk -v a="$cpu" -v b="$(onboard_cpu)" 'BEGIN {printf "%.1f", b - a}')s)"
    SY_UP[$c]=$(json_field "$d/sync-pull2.json" wire.sent)
    SY_DOWN[$c]=$(json_field "$d/sync-pull2.json" wire.received)
    SY_SECS[$c]=$(json_field "$d/sync-pull2.json" seconds)
    [[ $(json_field "$d/sync-pull2.json" wire.total) == $((SY_UP[$c] + SY_DOWN[$c])) ]] ||
      fail "$c: sync wire.total is not sent + received"
    same_tree "$c v2 (sync)" "$vol" "$d/sync-copy" "$d/diff-sync2.out" || SY_UP[$c]=MISMATCH
  fi

  log "case $c: rsync pull 2 (counted)"; s=$(now)
  if rsync_pull "$c" 2 "$HERE/lib/count-rsh.py" "${extra[@]}"; then
    t+=", rsync pull 2 $(elapsed "$s")s"
    read -r RS_UP[$c] RS_DOWN[$c] <"$d/rsync-pull2.count"
    RS_STATS[$c]="$(rsync_stat "$d/rsync-pull2.stats" "Total bytes sent") up /"
    RS_STATS[$c]+=" $(rsync_stat "$d/rsync-pull2.stats" "Total bytes received") down"
    same_tree "$c v2 (rsync)" "$vol" "$d/rsync-copy" "$d/diff-rsync2.out" || RS_UP[$c]=MISMATCH
  fi

  if [[ $c == log ]]; then
    s=$(now)
    tail -c +$((v1len + 1)) "$vol/logs/train.log" >"$d/appended.txt"
    zstd -q -f -19 "$d/appended.txt" -o "$d/appended.txt.zst"
    ZSTD_APP[$c]=$(stat -c %s "$d/appended.txt.zst")
    t+=", zstd -19 $(elapsed "$s")s"
  fi

  s=$(now)
  mktar "$vol" "$d/v2.tar"
  zstd -q -f -19 --long=27 --patch-from="$d/v1.tar" "$d/v2.tar" -o "$d/v2.tar.zst" 2>/dev/null
  FLOOR[$c]="zstd -19 --long=27 --patch-from=v1.tar v2.tar: $(stat -c %s "$d/v2.tar.zst")"
  if [[ $c == results ]]; then
    (cd "$vol" && find . -type f | sort) >"$d/v2.files"
    comm -13 "$d/v1.files" "$d/v2.files" >"$d/new.files"
    FLOOR[$c]+="; zstd -19 of the $(wc -l <"$d/new.files") new files alone:"
    FLOOR[$c]+=" $( (cd "$vol" && xargs -d '\n' cat <"$d/new.files") | zstd -q -19 -c | wc -c)"
  fi
  t+=", patch-from reference $(elapsed "$s")s"
  TIMES[$c]=$t
done
cleanup

# --- report --------------------------------------------------------------------
num() { [[ ${1:-} =~ ^[0-9]+$ ]]; }
MISSED=()
echo
echo "| case | v2 size | rsync -z total (up / down) | sync total (up / down) | sync / rsync | zstd -19 appended | sync / zstd appended |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for c in "${CASES[@]}"; do
  ru=${RS_UP[$c]:-ERR} rd=${RS_DOWN[$c]:-ERR} su=${SY_UP[$c]:-ERR} sd=${SY_DOWN[$c]:-ERR}
  if num "$ru" && num "$rd"; then rt=$((ru + rd)); rcell="$rt ($ru / $rd)"; else rt=ERR rcell=$ru; fi
  if num "$su" && num "$sd"; then st=$((su + sd)); scell="$st ($su / $sd)"; else st=ERR scell=$su; fi
  sr=$(ratio "$st" "$rt")
  zc="—" zr="—"
  if [[ $c == log ]]; then
    zc=${ZSTD_APP[$c]:-ERR}
    zr=$(ratio "$st" "$zc")
    [[ $zr != n/a ]] && awk -v r="$zr" 'BEGIN {exit !(r > 1.2)}' &&
      MISSED+=("$c: sync / zstd appended = $zr > 1.2")
  fi
  [[ $sr != n/a ]] && awk -v r="$sr" 'BEGIN {exit !(r > 0.5)}' &&
    MISSED+=("$c: sync / rsync = $sr > 0.5")
  echo "| $c | ${SIZE[$c]:-ERR} | $rcell | $scell | $sr | $zc | $zr |"
done
echo
echo "Bytes; up = ground -> satellite, down = satellite -> ground. rsync: counted on the pipe"
echo "(lib/count-rsh.py), \`rsync -rtz\` (+ --delete for results), no ssh on top. sync: .wire of"
echo "\`sync-ground pull --json\` (handshake and encryption included; --delete for results)."
for c in "${CASES[@]}"; do
  echo "- $c: ${FACTS[$c]:-?}"
  echo "  reference (not a transfer): ${FLOOR[$c]:-?}"
  echo "  rsync --stats of the counted run: ${RS_STATS[$c]:-?}; first pulls (not counted): ${FIRST[$c]:-?}"
  echo "  time: ${TIMES[$c]:-?} (sync pull 2 reports ${SY_SECS[$c]:-?} s)"
done
if ((${#MISSED[@]})); then
  for m in "${MISSED[@]}"; do echo "- target MISSED: $m"; done
else
  echo "- targets met: sync / rsync <= 0.5 on every case, sync / zstd appended <= 1.2 on log"
fi
echo
echo "Versions: $(rsync --version | head -1); $(zstd --version);"
echo "  rsync -z negotiated: $(rsync -rtz -n --debug=nstr --rsh="$HERE/lib/fake-rsh" \
  "fakehost:$VOLS/results/" "$WORK/results/rsync-copy/" 2>&1 |
  sed -n 's/^Client negotiated compress: //p')"
echo "  sync-onboard/sync-ground: $(date -u -r "$GROUND" +%FT%TZ) build," \
  "git $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet 2>/dev/null || echo '+dirty')"

if ((FAILED)); then
  echo "FAILED: one or more checks failed (see the 'pull: FAILED' messages above)"
  exit 1
fi
