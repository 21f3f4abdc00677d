#!/usr/bin/env bash
# Keeps what fuzzing found: merges the working corpora (build/fuzz/corpus/<target>/) with the
# kept corpus (cpp/fuzz/corpus.tar.xz) into the smallest set of inputs that reaches the same
# coverage (libFuzzer -merge=1), and rewrites the archive. Run it after a campaign
# (docs/fuzzing.md), then commit the archive.
#
#   scripts/keep_fuzz_corpus.sh [CORPUS_ROOT]     (default build/fuzz/corpus)
#
# Needs the fuzz build (scripts/fuzz.sh makes it). Inputs stay valid while the fixed fuzzing
# context (cpp/fuzz/fuzz_util.hpp) and the file format version stay the same.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/build/fuzz"
found="${1:-$build/corpus}"
archive="$root/cpp/fuzz/corpus.tar.xz"
targets=(parameters ciphertext keys program)

for t in "${targets[@]}"; do
  if [[ ! -x "$build/fuzz_$t" ]]; then
    echo "keep_fuzz_corpus.sh: $build/fuzz_$t is missing; run scripts/fuzz.sh first" >&2
    exit 2
  fi
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if [[ -f "$archive" ]]; then
  mkdir -p "$work/old" && tar -xJf "$archive" -C "$work/old"
fi
for t in "${targets[@]}"; do
  mkdir -p "$work/new/$t"
  sources=()
  for d in "$work/old/$t" "$found/$t"; do [[ -d "$d" ]] && sources+=("$d"); done
  if [[ ${#sources[@]} -eq 0 ]]; then continue; fi
  (cd "$work" && "$build/fuzz_$t" -merge=1 -max_len=1048576 -timeout=10 -rss_limit_mb=2048 \
      "$work/new/$t" "${sources[@]}") >"$work/merge_$t.log" 2>&1 || {
    tail -n 30 "$work/merge_$t.log" >&2
    echo "keep_fuzz_corpus.sh: merging $t failed (log above)" >&2
    exit 1
  }
  echo "keep_fuzz_corpus.sh: $t: $(ls "$work/new/$t" | wc -l) inputs kept"
done
# Sorted names, fixed owner and time: the archive changes only when its inputs do.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$work/new" -cf - \
  "${targets[@]}" | xz -9 >"$archive.tmp"
mv "$archive.tmp" "$archive"
echo "keep_fuzz_corpus.sh: wrote ${archive#"$root"/} ($(wc -c <"$archive") bytes)"
