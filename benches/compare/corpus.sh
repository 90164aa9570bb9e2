#!/usr/bin/env bash
# Build the benchmark corpus from real, successive releases on PyPI.
#
#   benches/compare/corpus.sh [DIR]        (default: benches/compare/.corpus)
#
# Result:
#   DIR/binary/v1/bin/ruff   ruff 0.6.8 native executable (Rust, ~30 MB)
#   DIR/binary/v2/bin/ruff   ruff 0.6.9 (the next release)
#   DIR/tree/v1/...          pip 24.0 wheel unpacked as-is (hundreds of files)
#   DIR/tree/v2/...          pip 24.1 wheel unpacked as-is
#   DIR/wheels/*.whl         the downloaded wheels (cache)
#
# Why these:
#   * ruff ships its Rust binary inside a manylinux wheel, so a "firmware-like"
#     executable upgrade between two consecutive releases can be fetched with
#     pip alone (the only registries we can reach are package registries).
#   * pip's own wheel is pure Python with vendored libraries: ~500 files, a
#     realistic "upgrade a software package tree" case where most files are
#     unchanged, some are edited, some added and some removed.
#
# Reproducibility:
#   * versions are pinned and every wheel's sha256 is hard-coded (observed on
#     first download); a mismatch aborts, so later runs detect tampering.
#   * pip download gets explicit --platform/--python-version/--implementation/
#     --abi so the same wheel file is selected whatever machine runs this.
#   * already-downloaded (and verified) wheels are not downloaded again, and a
#     version already unpacked from the same wheel is not unpacked again.
#   * unpacked files get the mtime recorded in the zip entry (interpreted as
#     UTC) and fixed permissions, so the trees are bit-for-bit and
#     metadata-for-metadata identical on every machine.
set -euo pipefail
umask 022

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DIR=${1:-$HERE/.corpus}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
WHEELS=$DIR/wheels
mkdir -p "$WHEELS"

# name  version  wheel-filename  sha256
WHEEL_TABLE=(
  "ruff 0.6.8 ruff-0.6.8-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl 6ef0411eccfc3909269fed47c61ffebdcb84a04504bafa6b6df9b85c27e813b0"
  "ruff 0.6.9 ruff-0.6.9-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl a67267654edc23c97335586774790cde402fb6bbdb3c2314f1fc087dee320bfa"
  "pip 24.0 pip-24.0-py3-none-any.whl ba0d021a166865d2265246961bec0152ff124de910c5cc39f1156ce3fa7c69dc"
  "pip 24.1 pip-24.1-py3-none-any.whl a775837439bf5da2c1a0c2fa43d5744854497c689ddbd9344cf3ea6d00598540"
)

# Platform selection passed to pip. ruff's wheel is platform specific; pip's
# is py3-none-any and matches any platform. Pinning these makes the chosen
# file independent of the host.
PIP_PLATFORM=(--platform manylinux_2_17_x86_64 --python-version 3.11
              --implementation cp --abi cp311)

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# fetch NAME VERSION FILE SHA -> ensures $WHEELS/FILE exists with that hash
fetch() {
  local name=$1 version=$2 file=$3 want=$4 got
  if [[ ! -f $WHEELS/$file ]]; then
    echo "corpus: downloading $name==$version" >&2
    python3 -m pip download --quiet --disable-pip-version-check \
      --no-deps --only-binary :all: "${PIP_PLATFORM[@]}" \
      --dest "$WHEELS" "$name==$version"
    if [[ ! -f $WHEELS/$file ]]; then
      echo "corpus: ERROR: pip did not produce $file (got: $(ls "$WHEELS"))" >&2
      exit 1
    fi
  fi
  got=$(sha256_of "$WHEELS/$file")
  if [[ $got != "$want" ]]; then
    echo "corpus: ERROR: sha256 mismatch for $file" >&2
    echo "corpus:   expected $want" >&2
    echo "corpus:   got      $got" >&2
    echo "corpus: (delete the file to re-download if it is a partial download)" >&2
    exit 1
  fi
}

# Give every extracted path the zip entry's timestamp (UTC) -- zipfile -e
# leaves "now", which would make mtimes (and so rsync's quick check and its
# file-list encoding) differ from run to run.
restore_mtimes() { # WHEEL DEST
  python3 - "$1" "$2" <<'PY'
import calendar, os, sys, zipfile
whl, dest = sys.argv[1], sys.argv[2]
newest = 0
with zipfile.ZipFile(whl) as z:
    for info in z.infolist():
        t = calendar.timegm(info.date_time + (0, 0, -1))
        newest = max(newest, t)
        p = os.path.join(dest, info.filename)
        if os.path.lexists(p) and not info.is_dir():
            os.utime(p, (t, t), follow_symlinks=False)
# Wheels carry no directory entries: give every directory the newest time.
for root, dirs, _ in os.walk(dest):
    for d in dirs:
        os.utime(os.path.join(root, d), (newest, newest), follow_symlinks=False)
os.utime(dest, (newest, newest))
PY
}

# unpack_tree WHEEL DEST: whole wheel content, as-is.
unpack_tree() {
  local whl=$1 dest=$2 tmp
  tmp=$(mktemp -d "$dest.tmp.XXXXXX")
  python3 -m zipfile -e "$whl" "$tmp"
  # Deterministic permissions (zipfile ignores the mode bits in the zip).
  find "$tmp" -type d -exec chmod 755 {} +
  find "$tmp" -type f -exec chmod 644 {} +
  restore_mtimes "$whl" "$tmp"
  rm -rf "$dest"
  mv "$tmp" "$dest"
}

# unpack_binary WHEEL NAME VERSION DEST: only the executable, as DEST/bin/NAME.
unpack_binary() {
  local whl=$1 name=$2 version=$3 dest=$4 tmp
  tmp=$(mktemp -d "$dest.tmp.XXXXXX")
  python3 -m zipfile -e "$whl" "$tmp/x"
  restore_mtimes "$whl" "$tmp/x"
  mkdir -p "$tmp/out/bin"
  # wheels put console executables in NAME-VERSION.data/scripts/
  mv "$tmp/x/$name-$version.data/scripts/$name" "$tmp/out/bin/$name"
  chmod 755 "$tmp/out/bin/$name"
  chmod 755 "$tmp/out" "$tmp/out/bin"
  # bin/ and vN/ get the executable's own timestamp
  touch -r "$tmp/out/bin/$name" "$tmp/out/bin" "$tmp/out"
  rm -rf "$dest"
  mv "$tmp/out" "$dest"
  rm -rf "$tmp"
}

# place KIND NAME VERSION FILE SHA vN
place() {
  local kind=$1 name=$2 version=$3 file=$4 sha=$5 slot=$6
  local dest=$DIR/$kind/$slot stamp=$DIR/$kind/.$slot.stamp
  mkdir -p "$DIR/$kind"
  # The stamp lives outside vN/ so that vN/ holds only the release content.
  if [[ -d $dest && -f $stamp && $(cat "$stamp") == "$sha" ]]; then
    return 0
  fi
  echo "corpus: unpacking $file -> $kind/$slot" >&2
  rm -f "$stamp"
  if [[ $kind == binary ]]; then
    unpack_binary "$WHEELS/$file" "$name" "$version" "$dest"
  else
    unpack_tree "$WHEELS/$file" "$dest"
  fi
  echo "$sha" >"$stamp"
}

slot_for() { # which case/slot each pinned wheel goes to
  case "$1 $2" in
    "ruff 0.6.8") echo "binary v1" ;;
    "ruff 0.6.9") echo "binary v2" ;;
    "pip 24.0")   echo "tree v1" ;;
    "pip 24.1")   echo "tree v2" ;;
    *) echo "corpus: no slot for $1 $2" >&2; exit 1 ;;
  esac
}

for row in "${WHEEL_TABLE[@]}"; do
  read -r name version file sha <<<"$row"
  fetch "$name" "$version" "$file" "$sha"
  read -r kind slot < <(slot_for "$name" "$version")
  place "$kind" "$name" "$version" "$file" "$sha" "$slot"
done

# Summary: file counts and sizes, so a reader can see what the cases are.
for kind in binary tree; do
  for slot in v1 v2; do
    d=$DIR/$kind/$slot
    files=$(find "$d" -type f | wc -l)
    bytes=$(find "$d" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')
    printf 'corpus: %-6s %s: %5d files, %10d bytes\n' "$kind" "$slot" "$files" "$bytes"
  done
done
