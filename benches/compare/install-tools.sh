#!/usr/bin/env bash
# Install the competitor tools used by run.sh, from Debian's packages.
#
# Idempotent: apt is only touched when a tool's binary is missing, so a second
# run is a no-op (no root, no network needed).
# casync is optional: if this Debian release has no such package we skip it
# and run.sh leaves the casync column out.
set -euo pipefail

REQUIRED=(rsync xdelta3 zstd) # binary name == Debian package name
OPTIONAL=(casync)

SUDO=()
if [[ $(id -u) -ne 0 ]]; then SUDO=(sudo); fi
export DEBIAN_FRONTEND=noninteractive

missing() { local t; for t in "$@"; do command -v "$t" >/dev/null 2>&1 || echo "$t"; done; }
have_lists() { compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; }
in_apt() { apt-cache show "$1" >/dev/null 2>&1; }

mapfile -t need < <(missing "${REQUIRED[@]}")
mapfile -t want < <(missing "${OPTIONAL[@]}")

if ((${#need[@]} == 0 && ${#want[@]} == 0)); then
  echo "install-tools: all tools present (${REQUIRED[*]} ${OPTIONAL[*]})"
  exit 0
fi

# If only optional tools are missing and the (already present) package lists
# say they do not exist, do not refresh the lists on every run.
if ((${#need[@]} == 0)) && have_lists; then
  avail=()
  for p in "${want[@]}"; do in_apt "$p" && avail+=("$p"); done
  if ((${#avail[@]} == 0)); then
    echo "install-tools: ${want[*]} not available from apt; skipping (optional)"
    exit 0
  fi
fi

echo "install-tools: missing: ${need[*]} ${want[*]} -> apt-get update"
"${SUDO[@]}" apt-get update -qq

if ((${#need[@]})); then
  "${SUDO[@]}" apt-get install -y --no-install-recommends "${need[@]}"
fi
for p in "${want[@]}"; do
  if in_apt "$p"; then
    # An optional tool failing to install must not break the benchmark.
    "${SUDO[@]}" apt-get install -y --no-install-recommends "$p" ||
      echo "install-tools: could not install $p; continuing without it"
  else
    echo "install-tools: package '$p' does not exist here; skipping (optional)"
  fi
done

for t in "${REQUIRED[@]}" "${OPTIONAL[@]}"; do
  if command -v "$t" >/dev/null 2>&1; then
    echo "install-tools: $t -> $(command -v "$t")"
  elif [[ " ${OPTIONAL[*]} " == *" $t "* ]]; then
    echo "install-tools: $t not installed (optional)"
  else
    echo "install-tools: ERROR: $t still missing" >&2
    exit 1
  fi
done
