#!/usr/bin/env bash
# One large file, pushed and pulled in three versions, next to rsync -z and zstd --patch-from:
# wire bytes, seconds, and the peak memory of each end.
#
#   bash benches/large/run.sh                 # 2 GiB; about an hour with the competitors
#   SIZE=512M bash benches/large/run.sh       # the size today's figures were measured at first
#   SHAPE=tree bash benches/large/run.sh      # a folder of 256 files that total 2 GiB
#
# Environment knobs:
#   SIZE=2G            the file's size, or the folder's total (K, M, G: powers of 1024)
#   SHAPE=file         file: one file, big.bin; tree: a folder, tree/, of FILES files
#   FILES=256          the tree's files (SIZE / FILES bytes each)
#   DIRECTIONS="push pull"
#   TOOLS="sync rsync zstd"   which columns to run (zstd runs in the push table only: its figures
#                      do not depend on the direction; and for a file only: it takes no folder)
#   ZSTD_LEVEL=19      level of the zstd --patch-from column (--long=31, -T0)
#   SYNC_BUILD, SYNC_BIN_DIR   as in benches/compare (lib/common.sh)
#   TIMEOUT=3600       seconds allowed per transfer
#   EXTRA="--rate 9600bit"   flags for sync-ground push and pull (the rate sets the engine's
#                      effort: the default is the narrow uplink's, level 19)
#
# Versions (benches/src/bin/large-file.rs, seeded: the same bytes on every run):
#   new        4 in 10 of its 1 MiB blocks random bytes, the rest sensor log lines
#   scattered  1% of the bytes changed: a 4 KiB run of new bytes in every 400 KiB
#   insert     scattered, with 1 MiB of new bytes inserted at 1 MiB
# Each is pushed (or pulled) on top of the one before, as a file that keeps changing is. In a
# tree, every file has its own blocks and scattered changes, and the 1 MiB goes into the first.
#
# Columns (per version and tool):
#   wire      bytes on the link, both directions. sync: `.wire.total` of `sync-ground --json`
#             (TCP payload, handshake and encryption included). rsync -z: every byte on the pipe
#             between the client and `rsync --server` (lib/count-rsh.py). zstd: the patch's size
#             (no transport at all).
#   s         wall seconds of the transfer (sync: the whole sync-ground command, apply included).
#   ground    peak RSS of the ground process, MiB (GNU time's maximum resident set size; for rsync
#             the largest process of the transfer, both ends included; for zstd the compressor).
#   onboard   sync-onboard's VmHWM over the step, MiB (reset before it through
#             /proc/PID/clear_refs), for its receive, verify and apply, or its pull encoding.
#
# Every result is checked byte for byte (cmp) against the version it is to hold.
set -euo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
WORK=${WORK:-$HERE/.work}
SIZE=${SIZE:-2G}
SHAPE=${SHAPE:-file}
FILES=${FILES:-256}
[[ $SHAPE == file || $SHAPE == tree ]] || { echo "large: SHAPE is file or tree" >&2; exit 2; }
read -r -a DIRECTIONS <<<"${DIRECTIONS:-push pull}"
TOOLS=" ${TOOLS:-sync rsync zstd} "
ZSTD_LEVEL=${ZSTD_LEVEL:-19}
TIMEOUT=${TIMEOUT:-3600}
read -r -a EXTRA <<<"${EXTRA---rate 9600bit}"
SYNC_BUILD=${SYNC_BUILD:-auto}
VERSIONS=(new scattered insert)
COMPARE=$REPO/benches/compare

log() { echo "large: $*" >&2; }
die() { echo "large: ERROR: $*" >&2; exit 1; }
FAILED=0
fail() { echo "large: FAILED: $*" >&2; FAILED=1; }

for t in rsync zstd python3 timeout cmp /usr/bin/time; do
  command -v "$t" >/dev/null || die "$t missing; run benches/compare/install-tools.sh"
done

# shellcheck source=../compare/lib/common.sh
. "$COMPARE/lib/common.sh"
rm -rf "$WORK" && mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
build_sync "$WORK/cargo-build.log" || die "$SYNC_NOTE"
GEN=${SYNC_BIN_DIR:-$REPO/target/release}/large-file
if [[ ! -x $GEN || $SYNC_BUILD == force ]]; then
  (cd "$REPO" && cargo build --release -p sync-benches --bin large-file) >>"$WORK/cargo-build.log" 2>&1 ||
    die "cargo build of large-file failed (see $WORK/cargo-build.log)"
fi
cleanup() { stop_server; }
trap cleanup EXIT

mib() { awk -v k="$1" 'BEGIN {printf "%.0f", k / 1024}'; } # KiB -> MiB
timed() { # OUT CMD... -> runs CMD under GNU time; T=seconds, M=peak MiB
  local out=$1
  shift
  local rc=0
  /usr/bin/time -f '%e %M' -o "$out.time" timeout "$TIMEOUT" "$@" || rc=$?
  # GNU time writes "Command exited with non-zero status N" first when it did.
  read -r T M < <(tail -1 "$out.time") || true
  M=$(mib "${M:-0}")
  return $rc
}
# The bench's content in DIR: big.bin, or the folder tree/ (written in place, as a pod or a
# user rewrites its files).
DATA=big.bin
[[ $SHAPE == tree ]] && DATA=tree
generate() { # VERSION DIR
  if [[ $SHAPE == tree ]]; then
    "$GEN" "$SIZE" "$1" "$2/tree" --files "$FILES"
  else
    "$GEN" "$SIZE" "$1" "$2/big.bin.tmp" && mv "$2/big.bin.tmp" "$2/big.bin"
  fi
}
same() { # A B: the same bytes (a file) or the same files (a tree)
  if [[ $SHAPE == tree ]]; then diff -rq "$1" "$2" >/dev/null; else cmp -s "$1" "$2"; fi
}
hwm_reset() { echo 5 >"/proc/$SERVER_PID/clear_refs"; }
hwm() { awk '/^VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$SERVER_PID/status"; }

# --- the satellite ------------------------------------------------------------------------
VOLS=$WORK/vols
mkdir -p "$WORK/gstate"
start_onboard "$WORK" || die "sync-onboard serve did not report its address (see $WORK/serve.err)"
log "sync-onboard listening on $ADDR; $SHAPE, $SIZE"

ROWS=()
row() { ROWS+=("$(printf '%-5s %-10s %-6s %15s %9s %8s %8s' "$@")"); printf '%-5s %-10s %-6s %15s %9s %8s %8s\n' "$@" >&2; }

# --- push: the ground's folder changes, the pod's volume follows -----------------------------
push_dir() {
  local src=$WORK/push/src dest=$WORK/push/rsync-dest prev=$WORK/push/prev.bin v
  mkdir -p "$src" "$dest"
  for v in "${VERSIONS[@]}"; do
    log "push: $v"
    generate "$v" "$src"
    if [[ $TOOLS == *" sync "* ]]; then
      hwm_reset
      if timed "$WORK/push-$v" "$GROUND" push "$src" --pod large --to "$ADDR" --key "$WORK/key" \
          --state "$WORK/gstate" --json "${EXTRA[@]}" >"$WORK/push-$v.json" 2>"$WORK/push-$v.err"; then
        same "$src/$DATA" "$VOLS/large/$DATA" || fail "push $v: the volume differs"
        row push "$v" sync "$(json_field "$WORK/push-$v.json" wire.total)" "$T" "$M" "$(hwm)"
      else
        fail "push $v: sync-ground failed (see $WORK/push-$v.err)"
        tail -3 "$WORK/push-$v.err" >&2
        row push "$v" sync ERR "$T" "$M" "$(hwm)"
      fi
    fi
    if [[ $TOOLS == *" rsync "* ]]; then
      COUNT_FILE=$WORK/push-$v.rsync.count timed "$WORK/push-$v.rsync" rsync -a -z --no-whole-file \
        -e "$COMPARE/lib/count-rsh.py" "$src/" "fakehost:$dest/" >/dev/null
      same "$src/$DATA" "$dest/$DATA" || fail "push $v: rsync's copy differs"
      row push "$v" "rsync" "$(awk '{print $1 + $2}' "$WORK/push-$v.rsync.count")" "$T" "$M" -
    fi
    if [[ $TOOLS == *" zstd "* && $SHAPE == file ]]; then
      local from=()
      [[ -f $prev ]] && from=(--patch-from="$prev")
      timed "$WORK/push-$v.zstd" zstd -q -f "-$ZSTD_LEVEL" --long=31 -T0 "${from[@]}" \
        "$src/big.bin" -o "$WORK/push/patch.zst"
      local zt=$T zm=$M
      zstd -q -f -d --long=31 "${from[@]}" "$WORK/push/patch.zst" -o "$WORK/push/check.bin" &&
        cmp -s "$src/big.bin" "$WORK/push/check.bin" || fail "push $v: zstd's round trip differs"
      row push "$v" "zstd" "$(fsize "$WORK/push/patch.zst")" "$zt" "$zm" -
      rm -f "$WORK/push/check.bin" "$WORK/push/patch.zst"
      cp "$src/big.bin" "$prev"
    fi
  done
  rm -rf "$WORK/push"
}

# --- pull: the pod's volume changes, the ground's copy follows -----------------------------
pull_dir() {
  local vol=$VOLS/results copy=$WORK/pull/copy rcopy=$WORK/pull/rsync-copy v
  mkdir -p "$vol" "$copy" "$rcopy"
  for v in "${VERSIONS[@]}"; do
    log "pull: $v"
    generate "$v" "$vol"
    sleep 2.1 # older than the scan's 2 s "still being written" window
    if [[ $TOOLS == *" sync "* ]]; then
      hwm_reset
      if timed "$WORK/pull-$v" "$GROUND" pull --pod results --into "$copy" --to "$ADDR" \
          --key "$WORK/key" --state "$WORK/gstate" --json "${EXTRA[@]}" \
          >"$WORK/pull-$v.json" 2>"$WORK/pull-$v.err"; then
        same "$vol/$DATA" "$copy/$DATA" || fail "pull $v: the copy differs"
        local w=$(($(json_field "$WORK/pull-$v.json" wire.sent) + $(json_field "$WORK/pull-$v.json" wire.received)))
        row pull "$v" sync "$w" "$T" "$M" "$(hwm)"
      else
        fail "pull $v: sync-ground failed (see $WORK/pull-$v.err)"
        tail -3 "$WORK/pull-$v.err" >&2
        row pull "$v" sync ERR "$T" "$M" "$(hwm)"
      fi
    fi
    if [[ $TOOLS == *" rsync "* ]]; then
      COUNT_FILE=$WORK/pull-$v.rsync.count timed "$WORK/pull-$v.rsync" rsync -a -z --no-whole-file \
        -e "$COMPARE/lib/count-rsh.py" "fakehost:$vol/" "$rcopy/" >/dev/null
      same "$vol/$DATA" "$rcopy/$DATA" || fail "pull $v: rsync's copy differs"
      row pull "$v" "rsync" "$(awk '{print $1 + $2}' "$WORK/pull-$v.rsync.count")" "$T" "$M" -
    fi
  done
  rm -rf "$WORK/pull" "$vol"
}

for d in "${DIRECTIONS[@]}"; do
  case $d in
    push) push_dir ;;
    pull) pull_dir ;;
    *) die "unknown direction $d" ;;
  esac
done

echo
what="large file of $SIZE"
[[ $SHAPE == tree ]] && what="folder of $FILES files, $SIZE in all"
echo "$what ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?'))"
printf '%-5s %-10s %-6s %15s %9s %8s %8s\n' dir version tool "wire bytes" s "ground" "onboard"
printf '%s\n' "${ROWS[@]}"
echo "(ground, onboard: peak RSS in MiB)"
if ((FAILED)); then
  echo "large: some results were wrong (FAILED above)" >&2
  exit 1
fi
