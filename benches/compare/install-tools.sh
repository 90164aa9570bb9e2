#!/usr/bin/env bash
# Install the competitor tools used by run.sh, from Debian's packages.
#
# Idempotent: apt is only invoked for tools whose binary is missing, so a
# second run is a no-op (and does not need root or network).
# casync is optional: if Debian has no such package on this release we skip
# it and run.sh leaves the casync column out.
set -euo pipefail

# binary name -> Debian package
declare -A PKG=(
  [rsync]=rsync
  [xdelta3]=xdelta3
  [zstd]=zstd
  [casync]=casync
)
OPTIONAL=(casync)

is_optional() {
  local t
  for t in "${OPTIONAL[@]}"; do [[ $t == "$1" ]] && return 0; done
  return 1
}

missing=()
for bin in "${!PKG[@]}"; do
  command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
done

if ((${#missing[@]} == 0)); then
  echo "install-tools: all tools present (rsync xdelta3 zstd casync)"
  exit 0
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then SUDO=(sudo); fi

# Only refresh the package lists when we actually have to install something.
echo "install-tools: missing: ${missing[*]} -> apt-get update"
"${SUDO[@]}" apt-get update -qq

required=()
optional=()
for bin in "${missing[@]}"; do
  pkg=${PKG[$bin]}
  if is_optional "$bin"; then
    # apt-cache show fails if the package does not exist for this release.
    if apt-cache show "$pkg" >/dev/null 2>&1; then
      optional+=("$pkg")
    else
      echo "install-tools: optional package '$pkg' not available, skipping"
    fi
  else
    required+=("$pkg")
  fi
done

export DEBIAN_FRONTEND=noninteractive
if ((${#required[@]})); then
  "${SUDO[@]}" apt-get install -y --no-install-recommends "${required[@]}"
fi
if ((${#optional[@]})); then
  # An optional tool failing to install must not break the benchmark.
  "${SUDO[@]}" apt-get install -y --no-install-recommends "${optional[@]}" ||
    echo "install-tools: could not install ${optional[*]}, continuing without"
fi

for bin in "${!PKG[@]}"; do
  if command -v "$bin" >/dev/null 2>&1; then
    echo "install-tools: $bin -> $(command -v "$bin")"
  elif is_optional "$bin"; then
    echo "install-tools: $bin not installed (optional)"
  else
    echo "install-tools: ERROR: $bin still missing" >&2
    exit 1
  fi
done
