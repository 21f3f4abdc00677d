#!/usr/bin/env bash
# Installs what fheprune needs on a fresh Debian machine, then builds the package into .venv.
# Safe to run again: it only installs what is missing and rebuilds only what changed.
#   Debian packages: compiler toolchain, CMake, libsodium, GoogleTest, clang (for fuzzing),
#                    valgrind (the constant-time check)
#   Python: a virtual environment in .venv with the package and its test tools
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*" >&2; }

APT_PACKAGES=(build-essential cmake ninja-build pkg-config libsodium-dev libgtest-dev clang
              libclang-rt-14-dev valgrind)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  log "creating virtual environment .venv"
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
pip_quiet() { python -m pip install -q --disable-pip-version-check "$@"; }

# Build requirements are installed once so rebuilds need no isolated environment.
pip_quiet "scikit-build-core>=0.10" "nanobind>=2.4" numpy tqdm
if (($#)); then pip_quiet "$@"; fi

stamp=.venv/.fheprune-build-stamp
newest=$(find CMakeLists.txt pyproject.toml VERSION cpp src -type f -newer "$stamp" 2>/dev/null | head -1 || true)
if [ ! -f "$stamp" ] || [ -n "$newest" ]; then
  log "building and installing fheprune (C++ core + Python package)"
  pip_quiet --no-build-isolation .
  touch "$stamp"
fi
log "ready: $(python -c 'import fheprune; print("fheprune", fheprune.__version__)')"
