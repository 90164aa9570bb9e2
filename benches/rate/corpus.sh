#!/usr/bin/env bash
# The link-rate sweep's corpus: a real source tree and its next release, from PyPI.
#
#   benches/rate/corpus.sh [DIR]        (default: benches/rate/.corpus)
#
# Result:
#   DIR/tree/v1/...   Django 5.0.6's source distribution, unpacked (the top folder stripped):
#                     6,772 files, 43.7 MB of file content (57 MB by `du -sb`, folders counted):
#                     2,774 .py, 1,271 .po and 1,260 .mo translations, 646 .txt docs, 360 .html
#                     templates, JavaScript, CSS, images, GIS test data.
#   DIR/tree/v2/...   Django 5.0.7 (the next release, a security fix): the small update.
#                     31 files changed, 3 added (34 of 6,775, 0.5%): the fixes, their tests,
#                     release notes, version strings.
#   DIR/sdists/*.tar.gz   the downloaded source distributions (cache)
#
# Why this: "a 56 MB source tree of 6,700 files" with its realistic small update, and an
# sdist is the whole tree as its authors publish it (code, tests, docs, translations). PyPI is
# one of the registries we reach; `pip download --no-binary :all:` fetches sdists by name.
#
# Reproducibility (as benches/compare/corpus.sh):
#   * versions are pinned and each sdist's sha256 is hard-coded; a mismatch aborts.
#   * a verified sdist is not downloaded again, and a version already unpacked from the same
#     sdist (a stamp with its sha256 beside vN/) is not unpacked again.
#   * files keep the mtimes and modes the tarball records (owner: whoever unpacks), so the trees
#     are the same on every machine.
set -euo pipefail
umask 022

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DIR=${1:-$HERE/.corpus}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
SDISTS=$DIR/sdists
mkdir -p "$SDISTS"

# name  version  file  sha256  slot
SDIST_TABLE=(
  "Django 5.0.6 Django-5.0.6.tar.gz ff1b61005004e476e0aeea47c7f79b85864c70124030e95146315396f1e7951f v1"
  "Django 5.0.7 Django-5.0.7.tar.gz bd4505cae0b9bd642313e8fb71810893df5dc2ffcacaa67a33af2d5cd61888f2 v2"
)

die() { echo "corpus: ERROR: $*" >&2; exit 1; }
sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

fetch() { # NAME VERSION FILE SHA -> $SDISTS/FILE, verified
  local name=$1 version=$2 file=$3 want=$4 got
  if [[ ! -f $SDISTS/$file ]]; then
    echo "corpus: downloading $name==$version (sdist)" >&2
    python3 -m pip download --quiet --disable-pip-version-check --no-deps \
      --no-binary :all: --dest "$SDISTS" "$name==$version" ||
      die "pip download $name==$version failed"
    [[ -f $SDISTS/$file ]] || die "pip did not produce $file (got: $(ls "$SDISTS"))"
  fi
  got=$(sha256_of "$SDISTS/$file")
  if [[ $got != "$want" ]]; then
    echo "corpus: ERROR: sha256 mismatch for $file" >&2
    echo "corpus:   expected $want" >&2
    echo "corpus:   got      $got" >&2
    die "(delete the file to download it again if it is a partial download)"
  fi
}

place() { # FILE SHA SLOT -> $DIR/tree/SLOT
  local file=$1 sha=$2 slot=$3
  local dest=$DIR/tree/$slot stamp=$DIR/tree/.$slot.stamp tmp
  mkdir -p "$DIR/tree"
  if [[ -d $dest && -f $stamp && $(cat "$stamp") == "$sha" ]]; then
    return 0
  fi
  echo "corpus: unpacking $file -> tree/$slot" >&2
  rm -f "$stamp"
  tmp=$(mktemp -d "$dest.tmp.XXXXXX")
  tar -xzf "$SDISTS/$file" -C "$tmp" --strip-components=1 --no-same-owner
  # The stripped top folder's place: mktemp's mode and the time of now would differ per run.
  chmod 755 "$tmp"
  touch -r "$tmp/PKG-INFO" "$tmp"
  rm -rf "$dest"
  mv "$tmp" "$dest"
  echo "$sha" >"$stamp"
}

command -v python3 >/dev/null || die "python3 missing"
for row in "${SDIST_TABLE[@]}"; do
  read -r name version file sha slot <<<"$row"
  fetch "$name" "$version" "$file" "$sha"
  place "$file" "$sha" "$slot"
done

for slot in v1 v2; do
  d=$DIR/tree/$slot
  files=$(find "$d" -type f | wc -l)
  bytes=$(find "$d" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')
  printf 'corpus: tree %s: %5d files, %10d bytes\n' "$slot" "$files" "$bytes"
done
