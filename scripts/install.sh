#!/usr/bin/env bash
# Install pbxwarden from this checkout into ./.venv on a Debian machine, as root or as a
# user with sudo: the few Debian packages the build needs (only those missing), then pip,
# which compiles the SIP core to C with mypyc (a few minutes; pip shows its progress).
# Afterwards: `. .venv/bin/activate && pbxwarden init && pbxwarden serve`.
set -euo pipefail
cd "$(dirname "$0")/.."

# python3-venv: Debian's python3 has no ensurepip without it; gcc and libc6-dev (only
# recommended by gcc) and python3-dev (Python.h) build the compiled core.
need=()
for pkg in python3 python3-venv python3-dev gcc libc6-dev; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed"; then
    need+=("$pkg")
  fi
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    as_root=(env)
  elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo env)
  else
    echo "install.sh: Debian packages ${need[*]} are missing; run this as root or with sudo" >&2
    exit 1
  fi
  echo "installing Debian packages: ${need[*]}"
  "${as_root[@]}" apt-get update
  "${as_root[@]}" DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    "${need[@]}"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
echo "installing pbxwarden into .venv: compiling the SIP core takes a few minutes, while pip"
echo "shows 'Building wheel for pbxwarden (pyproject.toml): started'"
.venv/bin/python -m pip install '.[fast]'
.venv/bin/python -c 'from pbxwarden import _core; print("pbxwarden installed; SIP core:", _core.mode())'
