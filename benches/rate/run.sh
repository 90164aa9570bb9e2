#!/usr/bin/env bash
# Link-rate sweep: wire bytes and wall time of a source tree's first push and of a small update,
# at each link rate, next to `tar -c | zstd -3 -T0` of the tree and that archive's time on the
# link.
#
#   bash benches/rate/run.sh                  # about 6 minutes on 2 cores; fetches the corpus
#   RATES="100Mbit" bash benches/rate/run.sh  # one rate
#
# Corpus (corpus.sh): Django 5.0.6's source distribution unpacked, 6,772 files, 43.7 MB of file
# content (57 MB with its folders by `du -sb`); the small update is Django 5.0.7, the next
# release: 31 files changed, 3 added.
#
# Environment knobs:
#   RATES="100Mbit 10Mbit 1Mbit 9600bit"   link rates, as sync-ground's --rate writes them
#                      (NUMBER followed by bit, kbit, Mbit or Gbit)
#   THROTTLE_MIN=1Mbit rates at least this go through the throttling proxy
#                      (benches/src/bin/throttle.rs); slower ones would take hours: they run
#                      unthrottled, still told --rate (which sets the engine's effort), and their
#                      time on the link is computed from the wire bytes
#   LATENCY=0          the proxy's one-way latency (20ms, ...)
#   CORPUS=DIR         corpus location (default benches/rate/.corpus)
#   TIMEOUT=1800       seconds allowed per push
#   KEEP=1             keep the work folder (it is kept anyway when something failed)
#   TMPDIR=DIR         where the work folder goes (mktemp; default /tmp). TMPDIR=/dev/shm puts
#                      both ends' state and the volume on tmpfs, where fsync costs nothing: a
#                      diagnostic that shows how much of the time is the disk's
#   STRACE=1           also count each push's fsync and fdatasync calls and their wall seconds
#                      at both ends (strace -f -w -c); its overhead is in that run's times
#   SYNC_BUILD, SYNC_BIN_DIR   as in benches/compare (lib/common.sh)
#
# For each rate, with a new daemon, pod volume and ground state (mktemp):
#   first push   the tree (v1) pushed into the empty pod
#   update       v2's changed and new files copied over the tree as a checkout of the next tag
#                does (`rsync -r --checksum --delete`: the other files keep their times), pushed
#
# Columns:
#   wire B       `.wire.total` of `sync-ground push --json`: every byte on the socket, both
#                directions, handshake and encryption included (measured)
#   wall s       the whole `sync-ground push` (scan, plan, encode, send, the node's apply, the
#                last acknowledgement), measured; through the proxy at throttled rates
#   ground CPU s, onboard CPU s   user + sys of sync-ground (GNU time) and of sync-onboard
#                (/proc/PID/stat before and after), measured: where the time goes
#   link s       wire B × 8 / rate: COMPUTED, the time those bytes take on the link alone
#   tar|zstd B, tar|zstd s   `tar -c | zstd -3 -T0` of the tree: its output's bytes and the
#                pipeline's wall seconds, measured in this run just before the rate's first push
#   its link s   tar|zstd B × 8 / rate: COMPUTED
#   target s     2 × (tar|zstd s + its link s): the first push's wall time must be at most this,
#                and its wire bytes at most tar|zstd B (the issue's target at 100 Mbit/s)
# Every push's result is checked against its version (diff -r of the pod's volume).
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
COMPARE=$REPO/benches/compare
CORPUS=${CORPUS:-$HERE/.corpus}
read -r -a RATES <<<"${RATES:-100Mbit 10Mbit 1Mbit 9600bit}"
THROTTLE_MIN=${THROTTLE_MIN:-1Mbit}
LATENCY=${LATENCY:-0}
TIMEOUT=${TIMEOUT:-1800}
KEEP=${KEEP:-0}
STRACE=${STRACE:-0}
SYNC_BUILD=${SYNC_BUILD:-auto}
POD=rate

log() { echo "rate: $(date +%T) $*" >&2; }
die() { echo "rate: ERROR: $*" >&2; FAILED=1; exit 1; }
FAILED=0
fail() { echo "rate: FAILED: $*" >&2; FAILED=1; }

for t in tar zstd rsync diff python3 timeout /usr/bin/time; do
  command -v "$t" >/dev/null || die "$t missing; run benches/compare/install-tools.sh"
done
[[ $STRACE != 1 ]] || command -v strace >/dev/null || die "STRACE=1 needs strace (apt-get install strace)"

# A rate as sync-ground writes it -> bits per second (decimal units, as sync_core::units).
rate_bits() {
  local n u
  [[ $1 =~ ^([0-9]+(\.[0-9]+)?)(bit|kbit|Mbit|Gbit)$ ]] ||
    die "rate $1: write a number and bit, kbit, Mbit or Gbit (9600bit, 100Mbit)"
  n=${BASH_REMATCH[1]} u=${BASH_REMATCH[3]}
  case $u in
    bit) awk -v n="$n" 'BEGIN {printf "%.0f", n}' ;;
    kbit) awk -v n="$n" 'BEGIN {printf "%.0f", n * 1e3}' ;;
    Mbit) awk -v n="$n" 'BEGIN {printf "%.0f", n * 1e6}' ;;
    Gbit) awk -v n="$n" 'BEGIN {printf "%.0f", n * 1e9}' ;;
  esac
}
((${#RATES[@]})) || die "RATES is empty"
for r in "${RATES[@]}"; do rate_bits "$r" >/dev/null; done
MIN_BITS=$(rate_bits "$THROTTLE_MIN")

# --- corpus, binaries ----------------------------------------------------------------------
"$HERE/corpus.sh" "$CORPUS" >&2 || die "corpus.sh failed"
CORPUS=$(cd "$CORPUS" && pwd)
V1=$CORPUS/tree/v1 V2=$CORPUS/tree/v2
[[ -d $V1 && -d $V2 ]] || die "no tree/v1 and tree/v2 in $CORPUS"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sync-rate.XXXXXX")
# shellcheck source=../compare/lib/common.sh
. "$COMPARE/lib/common.sh"
PROXY_PID=""
stop_proxy() {
  if [[ -n $PROXY_PID ]]; then
    kill -TERM "$PROXY_PID" 2>/dev/null || true
    wait "$PROXY_PID" 2>/dev/null || true
    PROXY_PID=""
  fi
}
cleanup() {
  stop_proxy
  stop_server
  if [[ $KEEP == 1 || $FAILED == 1 ]]; then
    log "work folder kept: $WORK"
  else
    rm -rf "$WORK"
  fi
}
trap 'FAILED=1' ERR
trap cleanup EXIT

build_sync "$WORK/cargo-build.log" || die "$SYNC_NOTE"
THROTTLE=${SYNC_BIN_DIR:-$REPO/target/release}/throttle
if [[ ! -x $THROTTLE || $SYNC_BUILD == force ]] && [[ -z ${SYNC_BIN_DIR:-} ]]; then
  log "building throttle (log: $WORK/cargo-build.log)"
  (cd "$REPO" && cargo build --release -p sync-benches --bin throttle) >>"$WORK/cargo-build.log" 2>&1 ||
    die "cargo build of throttle failed (see $WORK/cargo-build.log)"
fi
[[ -x $THROTTLE ]] || die "$THROTTLE not built"

# Starts the proxy in front of $ADDR at RATE; sets PROXY_PID and ADDR to the proxy's address.
start_proxy() { # DIR RATE
  local d=$1 to=$ADDR
  : >"$d/throttle.out"
  "$THROTTLE" --rate "$2" --latency "$LATENCY" --to "$to" >"$d/throttle.out" 2>"$d/throttle.err" &
  PROXY_PID=$!
  wait_listening "$d/throttle.out" "$PROXY_PID"
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # user + sys, clock ticks
TCK=$(getconf CLK_TCK)
secs_of_ticks() { awk -v t="$1" -v k="$TCK" 'BEGIN {printf "%.1f", t / k}'; }
link_secs() { awk -v b="$1" -v r="$2" 'BEGIN {printf "%.1f", b * 8 / r}'; } # BYTES BITS/S

fsyncs() { # STRACE_SUMMARY -> "N in S s"
  awk '$NF == "fsync" || $NF == "fdatasync" {n += $4; s += $2} END {printf "%d in %.1f s", n, s}' "$1"
}

# One push of $SRC; sets WIRE, WALL, GCPU, OCPU, PROXIED ("" unthrottled) and SYNCS (with
# STRACE=1). Returns non-zero on failure (named in the log).
push() { # DIR NAME RATE
  local d=$1 name=$2 rate=$3 o0 o1 seen=0 i u s tracer="" trace=()
  [[ -n $PROXY_PID ]] && seen=$(grep -c ' closed after ' "$d/throttle.err" || true)
  if [[ $STRACE == 1 ]]; then
    strace -f -w -c -e "trace=fsync,fdatasync" -o "$d/$name.onboard.strace" -p "$SERVER_PID" 2>/dev/null &
    tracer=$!
    sleep 1 # attached to every thread
    trace=(strace -f -w -c -e "trace=fsync,fdatasync" -o "$d/$name.ground.strace")
  fi
  o0=$(cpu_ticks "$SERVER_PID")
  if ! "${trace[@]}" /usr/bin/time -f '%e %U %S' -o "$d/$name.time" timeout "$TIMEOUT" \
      "$GROUND" push "$SRC" --pod "$POD" --to "$ADDR" --key "$d/key" --state "$d/gstate" \
      --json --rate "$rate" >"$d/$name.json" 2>"$d/$name.err"; then
    fail "$rate $name: sync-ground push failed (see $d/$name.err):"
    tail -5 "$d/$name.err" >&2
    [[ -z $tracer ]] || { kill -INT "$tracer"; wait "$tracer" || true; }
    return 1
  fi
  o1=$(cpu_ticks "$SERVER_PID")
  SYNCS=""
  if [[ -n $tracer ]]; then
    kill -INT "$tracer"
    wait "$tracer" || true
    SYNCS="fsync and fdatasync: ground $(fsyncs "$d/$name.ground.strace"), onboard $(fsyncs "$d/$name.onboard.strace")"
  fi
  read -r WALL u s < <(tail -1 "$d/$name.time")
  GCPU=$(awk -v u="$u" -v s="$s" 'BEGIN {printf "%.1f", u + s}')
  OCPU=$(secs_of_ticks $((o1 - o0)))
  WIRE=$(json_field "$d/$name.json" wire.total)
  PROXIED=""
  if [[ -n $PROXY_PID ]]; then # the proxy's own count of the connection, once it has closed
    for ((i = 0; i < 50; i++)); do
      (($(grep -c ' closed after ' "$d/throttle.err" || true) > seen)) && break
      sleep 0.1
    done
    PROXIED=$(grep ' closed after ' "$d/throttle.err" | tail -n +$((seen + 1)) |
      sed 's/.*up \([0-9]*\) B, down \([0-9]*\) B/\1 \2/' | awk '{s += $1 + $2} END {print s + 0}')
  fi
}

check_volume() { # WANT DIR NAME
  if ! diff -r "$1" "$2/vols/$POD" >"$2/$3.diff" 2>&1; then
    fail "$3: the pod's volume differs from what was pushed (see $2/$3.diff)"
    head -5 "$2/$3.diff" >&2
    return 1
  fi
}

# --- measure -------------------------------------------------------------------------------
ROWS=()
NOTES=()
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for rate in "${RATES[@]}"; do
  bits=$(rate_bits "$rate")
  d=$(mktemp -d "$WORK/$rate.XXXXXX")
  SRC=$d/src
  cp -a "$V1" "$SRC"
  log "$rate: copied"

  # The reference, on the same copy the push reads, just before it.
  log "$rate: tar -c | zstd -3 -T0"
  # shellcheck disable=SC2016 # $1 and $2 are the inner shell's arguments
  /usr/bin/time -f '%e' -o "$d/ref.time" \
    bash -c 'set -o pipefail; tar --sort=name -C "$1" -cf - . | zstd -q -3 -T0 -c >"$2"' _ \
    "$SRC" "$d/ref.tar.zst" || die "tar | zstd failed"
  zstd -q -t "$d/ref.tar.zst" || die "zstd -t of the reference failed"
  ref_b=$(fsize "$d/ref.tar.zst")
  ref_s=$(tail -1 "$d/ref.time")
  rm -f "$d/ref.tar.zst"
  ref_link=$(link_secs "$ref_b" "$bits")
  target=$(awk -v a="$ref_s" -v b="$ref_link" 'BEGIN {printf "%.1f", 2 * (a + b)}')

  : >"$d/serve.out" # start_onboard reads it at once; it may be made after its first look
  start_onboard "$d" || die "sync-onboard serve did not report its address (see $d/serve.err)"
  throttled=0
  if ((bits >= MIN_BITS)); then
    throttled=1
    start_proxy "$d" "$rate" || die "throttle did not report its address (see $d/throttle.err)"
  fi
  how=$([[ $throttled == 1 ]] && echo "through the proxy at $rate" || echo "unthrottled, told $rate")
  log "$rate: first push ($how)"

  first_ok=0
  if push "$d" first "$rate" && check_volume "$V1" "$d" "$rate first push"; then
    first_ok=1
    link=$(link_secs "$WIRE" "$bits")
    if ((throttled)); then
      wall=$WALL
      time_ok=$(awk -v w="$WALL" -v t="$target" 'BEGIN {print (w <= t) ? "met" : "MISSED"}')
    else
      wall="$WALL (unthrottled)"
      time_ok="n/a (unthrottled)"
    fi
    bytes_ok=MISSED
    ((WIRE > ref_b)) || bytes_ok=met
    ROWS+=("| $rate | first push | $WIRE | $wall | $GCPU | $OCPU | $link | $ref_b | $ref_s | $ref_link | $target | time $time_ok, bytes $bytes_ok |")
    [[ -n $PROXIED ]] && NOTES+=("$rate first push: the proxy carried $PROXIED B (wire.total $WIRE B)")
    [[ -n $SYNCS ]] && NOTES+=("$rate first push: $SYNCS")
    log "$rate first push: $WIRE B, $WALL s (ground CPU $GCPU s, onboard CPU $OCPU s); tar|zstd $ref_b B, $ref_s s; target $target s"
  else
    ROWS+=("| $rate | first push | ERR | | | | | $ref_b | $ref_s | $ref_link | $target | |")
  fi

  # The small update: as a checkout of the next release leaves the tree.
  rsync -r --checksum --delete "$V2/" "$SRC/" || die "rsync of the update into $SRC failed"
  log "$rate: update"
  if ((!first_ok)); then
    log "$rate: no update without its first push"
    ROWS+=("| $rate | update | not run | | | | | | | | | |")
  elif push "$d" update "$rate" && check_volume "$V2" "$d" "$rate update"; then
    link=$(link_secs "$WIRE" "$bits")
    wall=$WALL
    ((throttled)) || wall="$WALL (unthrottled)"
    ROWS+=("| $rate | update | $WIRE | $wall | $GCPU | $OCPU | $link | | | | | |")
    [[ -n $PROXIED ]] && NOTES+=("$rate update: the proxy carried $PROXIED B (wire.total $WIRE B)")
    [[ -n $SYNCS ]] && NOTES+=("$rate update: $SYNCS")
    log "$rate update: $WIRE B, $WALL s (ground CPU $GCPU s, onboard CPU $OCPU s)"
  else
    ROWS+=("| $rate | update | ERR | | | | | | | | | |")
  fi

  log "$rate: stopping"
  stop_proxy
  stop_server
  if ((!FAILED)); then
    rm -rf "$d"
    log "$rate: removed its folder"
  fi
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# --- report --------------------------------------------------------------------------------
files1=$(find "$V1" -type f | wc -l)
bytes1=$(tree_bytes "$V1")
echo
echo "Link-rate sweep, $(date -u +%F), $(nproc) cores, git $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet 2>/dev/null || echo '+dirty')"
echo "Tree: Django 5.0.6 sdist, $files1 files, $bytes1 B; update: Django 5.0.7 (31 files changed, 3 added)."
echo
echo "| link | push | sync wire B | sync wall s | ground CPU s | onboard CPU s | sync link s (computed) | tar\\|zstd -3 B | tar\\|zstd -3 s | its link s (computed) | target s: 2 × (tar\\|zstd s + link s) | first push: wall ≤ target, wire ≤ tar\\|zstd B |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
printf '%s\n' "${ROWS[@]}"
echo
echo "- Measured: wire B, wall s, CPU s, tar|zstd B and s. Computed: link s = bytes × 8 / rate, and the target."
echo "- Rates below $THROTTLE_MIN ran unthrottled (told --rate, which sets the effort): their wall s is not"
echo "  a time on that link; their link s is the time their measured bytes take on it."
echo "- Throttled rates: throttle proxy, token bucket each way, one-way latency $LATENCY."
[[ $STRACE == 1 ]] && echo "- STRACE=1: the pushes ran under strace; their times include its overhead."
echo "- Load average (1, 5, 15 min) before: $LOAD_BEFORE; after: $LOAD_AFTER."
for n in "${NOTES[@]}"; do echo "- $n"; done
echo "- $(zstd --version); $(tar --version | head -1)"
if ((FAILED)); then
  echo "rate: some results are wrong or missing (FAILED above)" >&2
  exit 1
fi
