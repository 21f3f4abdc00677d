#!/usr/bin/env bash
# Runs every C++ example end to end from the folder they were built in; exits non-zero if any
# fails or any result is off.   examples/run_examples.sh BUILD_DIR
set -euo pipefail
bin="${1:?usage: $0 BUILD_DIR (where the examples were built)}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

"$bin/encrypt_compute_decrypt"
# Three roles exchanging files.
"$bin/model_owner" "$work/model" 8
"$bin/file_client" keygen "$work/model/program.fhp" "$work/client"
"$bin/file_client" encrypt "$work/model/program.fhp" "$work/client" "$work/model/inputs.txt"
mkdir -p "$work/server"
cp "$work/model/program.fhp" "$work/client/evaluation.keys" "$work/server/"
cp -r "$work/client/in" "$work/server/in"
"$bin/run_program" "$work/server/program.fhp" "$work/server/evaluation.keys" \
  "$work/server/in" "$work/server/out" 2
test ! -e "$work/server/secret.key"
cp -r "$work/server/out" "$work/client/out"
"$bin/file_client" decrypt "$work/model/program.fhp" "$work/client" 8 "$work/model/expected.txt" 1e-3
# The server refuses what is not an evaluation-key bundle (here: the client's secret key).
if "$bin/run_program" "$work/server/program.fhp" "$work/client/secret.key" \
     "$work/server/in" "$work/server/out2" 2>"$work/refusal.txt"; then
  echo "run_program accepted a secret key as evaluation keys" >&2
  exit 1
fi
grep -q "takes an evaluation-key bundle" "$work/refusal.txt"
echo "examples: all passed"
