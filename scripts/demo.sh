#!/usr/bin/env bash
# The main job on its embedded default: prune the MNIST MLP with HE-PEx's P4E, compile dense and
# pruned into packed CKKS programs, run both encrypted, and report dense vs pruned (accuracy,
# op counts, latency, memory). MNIST comes from the data directory (FHEPRUNE_DATA, or
# ../shared/data beside the repository). Extra arguments go to `fheprune run`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "torch==2.13.0" matplotlib
mkdir -p results
exec .venv/bin/python -m fheprune run "$@"
