#!/usr/bin/env bash
# The main job, on loopback: start sync-onboard, push a folder to a pod with sync-ground, change
# the folder (edit, rename, add, delete, chmod), push again, push once more unchanged, list the
# pod's volume, and check that the volume equals the folder.
#
#   scripts/demo.sh            # everything under target/demo/ (removed and re-made each run)
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== building (release)"
cargo build --release -q -p sync-ground -p sync-onboard
BIN=target/release
DEMO=target/demo
rm -rf "$DEMO"
mkdir -p "$DEMO"

# A small application tree: sources, a generated 2 MB data file, a script, a symlink.
APP=$DEMO/my-app
mkdir -p "$APP/src" "$APP/data" "$APP/empty"
for i in $(seq 1 40); do
  printf 'module %d\n%s\n' "$i" "$(seq -s ' ' 1 $((i * 20)))" > "$APP/src/mod$i.py"
done
python3 -c "import random; random.seed(7); open('$APP/data/model.bin','wb').write(random.randbytes(2_000_000))"
printf '#!/bin/sh\necho running\n' > "$APP/run.sh"
chmod +x "$APP/run.sh"
ln -s src/mod1.py "$APP/main.py"

"$BIN/sync-onboard" keygen > "$DEMO/link.key"
"$BIN/sync-onboard" serve --volumes "$DEMO/volumes" --state "$DEMO/onboard-state" \
  --listen 127.0.0.1:0 --key "$DEMO/link.key" > "$DEMO/onboard.out" 2> "$DEMO/onboard.log" &
ONBOARD=$!
trap 'kill $ONBOARD 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  [ -s "$DEMO/onboard.out" ] && break
  sleep 0.05
done
ADDR=$(awk '/^listening on /{print $3; exit}' "$DEMO/onboard.out")
echo "== sync-onboard listening on $ADDR"

push() { "$BIN/sync-ground" push "$APP" --pod demo --to "$ADDR" --key "$DEMO/link.key" --state "$DEMO/ground-state" "$@"; }

echo "== first push"
push
echo "== change the tree: edit 100 bytes of the 2 MB file, rename a module, add, delete, chmod"
python3 - "$APP/data/model.bin" <<'PY'
import sys
p = sys.argv[1]
b = bytearray(open(p, 'rb').read())
b[1_000_000:1_000_100] = bytes(100)
open(p, 'wb').write(b)
PY
mv "$APP/src/mod7.py" "$APP/src/renamed.py"
echo "print('new')" > "$APP/src/new.py"
rm "$APP/src/mod9.py"
chmod +x "$APP/src/mod3.py"
echo "== second push"
push
echo "== third push (nothing changed)"
push
echo "== sync-ground ls"
"$BIN/sync-ground" ls --pod demo --to "$ADDR" --key "$DEMO/link.key" --state "$DEMO/ground-state" | head -8
echo "   ..."
if diff -r "$APP" "$DEMO/volumes/demo" > /dev/null; then
  echo "== the pod's volume equals the local folder"
else
  echo "== MISMATCH between the local folder and the volume" >&2
  exit 1
fi
