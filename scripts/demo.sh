#!/usr/bin/env bash
# The main job on its embedded default: the engine demo on MNIST from the data directory
# (FHEPRUNE_DATA, or ../shared/data beside the repository). Extra arguments go to the CLI.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "tenseal>=0.3.14"
mkdir -p results
exec .venv/bin/python -m fheprune demo --out results/engine_demo.json "$@"
