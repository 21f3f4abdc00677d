#!/usr/bin/env bash
# Every test: C++ unit tests (GoogleTest via ctest), the C++ examples in-tree and against the
# installed package, Python tests (pytest), a short fuzzing run of every deserializer, and the
# linters. FUZZ_SECONDS=0 skips fuzzing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "tenseal>=0.3.14" "pytest>=7" "hypothesis>=6.80" "ruff>=0.4" "mypy>=1.8" scipy "torch==2.13.0" matplotlib
# shellcheck disable=SC1091
source .venv/bin/activate

echo "== C++ unit tests"
cmake -S . -B build/tests -G Ninja -DFHEPRUNE_BUILD_TESTS=ON -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build/tests -j "$(nproc)"
ctest --test-dir build/tests --output-on-failure --no-tests=error -j "$(nproc)"

echo "== C++ examples (in-tree build)"
bash examples/run_examples.sh build/tests/examples

echo "== C++ package: install, find_package from a consumer project, examples"
bash scripts/check_install.sh

echo "== Python tests"
python -m pytest -q

echo "== Lint and types"
ruff check src tests benchmarks
mypy

FUZZ_SECONDS="${FUZZ_SECONDS:-10}"
if [ "$FUZZ_SECONDS" != "0" ]; then
  echo "== Fuzzing deserializers (${FUZZ_SECONDS}s per target)"
  bash scripts/fuzz.sh "$FUZZ_SECONDS"
fi
echo "== all tests passed"
