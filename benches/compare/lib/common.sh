# Shared by run.sh and pull.sh (sourced; they define log, die and fail first).

# --- our tool: release binaries, or $SYNC_BIN_DIR -----------------------------
ONBOARD=${SYNC_BIN_DIR:-$REPO/target/release}/sync-onboard
GROUND=${SYNC_BIN_DIR:-$REPO/target/release}/sync-ground
[[ -n ${SYNC_BIN_DIR:-} ]] && SYNC_BUILD=0
have_sync() { [[ -x $ONBOARD && -x $GROUND ]]; }
# Builds when asked (SYNC_BUILD=force) or when missing (unless SYNC_BUILD=0). Returns non-zero
# with the reason in SYNC_NOTE when a build was needed and failed: a failed rebuild must not
# silently measure stale binaries.
SYNC_NOTE=""
build_sync() { # BUILD_LOG
  if [[ $SYNC_BUILD == force ]] || { [[ $SYNC_BUILD != 0 ]] && ! have_sync; }; then
    if ! command -v cargo >/dev/null; then
      SYNC_NOTE="cargo not found"
      return 1
    fi
    log "building sync-ground and sync-onboard (log: $1)"
    if ! (cd "$REPO" && cargo build --release -p sync-ground -p sync-onboard) >"$1" 2>&1; then
      SYNC_NOTE="cargo build failed (see $1)"
      return 1
    fi
  fi
  have_sync || { SYNC_NOTE="$ONBOARD or $GROUND not built"; return 1; }
}

# --- the satellite's daemon, stopped on any exit ------------------------------
SERVER_PID=""
stop_server() {
  if [[ -n $SERVER_PID ]]; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    # Ten seconds to shut down cleanly; one that ignores SIGTERM must not hang the run.
    for _ in $(seq 100); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
      log "sync-onboard ignored SIGTERM; sending SIGKILL"
      kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
  fi
}

# Starts sync-onboard on 127.0.0.1:0 with volumes in $1/vols, state in $1/ostate and the key in
# $1/key (made here); sets SERVER_PID and ADDR. Returns non-zero if it never said its address.
start_onboard() { # DIR
  local d=$1
  mkdir -p "$d/vols" "$d/ostate"
  "$ONBOARD" keygen >"$d/key" || return 1
  "$ONBOARD" serve --volumes "$d/vols" --state "$d/ostate" \
    --listen 127.0.0.1:0 --key "$d/key" >"$d/serve.out" 2>"$d/serve.err" &
  SERVER_PID=$!
  wait_listening "$d/serve.out" "$SERVER_PID"
}

# Waits for "listening on ADDR" on the first line of OUT while PID runs; sets ADDR.
wait_listening() { # OUT PID
  local i
  ADDR=""
  for ((i = 0; i < 300; i++)); do
    ADDR=$(sed -n '1s/^listening on \([^ ]*:[0-9]\+\)[[:space:]]*$/\1/p' "$1")
    [[ -n $ADDR ]] && return 0
    kill -0 "$2" 2>/dev/null || break
    sleep 0.1
  done
  return 1
}

json_field() { # FILE DOTTED.KEY (true/false for booleans, as JSON writes them)
  python3 -c '
import json, sys
v = json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."):
    v = v[k]
print(json.dumps(v) if isinstance(v, bool) else v)' "$1" "$2"
}

# --- helpers -------------------------------------------------------------------
fsize() { stat -c %s "$1"; }
tree_bytes() { find "$1" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}'; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.1f", b-a}'; }
# Deterministic tar: sorted names, no owner/time noise, so the byte stream depends only on
# file names, modes and contents.
mktar() { # DIR OUT
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$1" -cf "$2" .
}
ratio() { # A B -> A/B with 3 decimals, or n/a
  if [[ $1 =~ ^[0-9]+$ && $2 =~ ^[0-9]+$ && $2 -gt 0 ]]; then
    awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a/b}'
  else
    echo n/a
  fi
}
