#!/usr/bin/env bash
# Short fuzzing run of every deserializer (docs/fuzzing.md has long campaigns).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]      (default 20)
#
# Configures and builds the libFuzzer tree build/fuzz if needed (clang; override the compiler
# with FHEPRUNE_FUZZ_CXX, the build parallelism with FHEPRUNE_FUZZ_JOBS, default 2), writes
# fresh seed objects into build/fuzz/corpus/<target>/, then runs each target for the given
# time. The corpus directories keep what the fuzzer finds, so later runs start from there;
# every run also starts from the kept corpus of past campaigns (cpp/fuzz/corpus.tar.xz).
# FHEPRUNE_FUZZ_ARGS adds libFuzzer flags to every run (they override the defaults below).
# Crash inputs go to build/fuzz/artifacts/, logs to build/fuzz/logs/; nothing is written
# outside build/fuzz. Exits non-zero on any finding (crash, sanitizer report, unexpected
# exception, timeout, out-of-memory) and names the file that reproduces it.
set -euo pipefail

seconds="${1:-20}"
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 [SECONDS_PER_TARGET]   (a positive whole number; default 20)" >&2
  exit 2
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/build/fuzz"
jobs="${FHEPRUNE_FUZZ_JOBS:-2}"
targets=(parameters ciphertext keys program)
read -r -a extra_args <<<"${FHEPRUNE_FUZZ_ARGS:-}"

# ---- Configure (once) and build (incremental). ----
if [[ ! -f "$build/CMakeCache.txt" ]]; then
  cxx="${FHEPRUNE_FUZZ_CXX:-clang++}"
  if ! command -v "$cxx" >/dev/null 2>&1; then
    echo "fuzz.sh: $cxx not found; install clang and libclang-rt-dev (or set FHEPRUNE_FUZZ_CXX)" >&2
    exit 2
  fi
  generator=()
  if command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi
  echo "fuzz.sh: configuring $build with $cxx"
  CXX="$cxx" cmake -S "$root" -B "$build" "${generator[@]}" \
    -DFHEPRUNE_BUILD_FUZZERS=ON -DFHEPRUNE_BUILD_TESTS=OFF -DFHEPRUNE_BUILD_EXAMPLES=OFF \
    -DFHEPRUNE_INSTALL=OFF -DFHEPRUNE_NATIVE=OFF \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo
fi
echo "fuzz.sh: building $build (-j$jobs)"
cmake --build "$build" --parallel "$jobs"

# ---- Seed corpora: one valid object of each kind for the fixed small context. ----
seeds="$build/seeds"
mkdir -p "$seeds" "$build/artifacts" "$build/logs"
"$build/make_corpus" "$seeds" >/dev/null
seed_files() {
  case "$1" in
    parameters) echo parameters.bin ;;
    ciphertext) echo plaintext.bin plaintext_level0.bin ciphertext.bin ciphertext_size3.bin ;;
    keys) echo public_key.bin relin_key.bin galois_keys.bin evaluation_keys.bin evaluation_keys_encapsulated.bin secret_key.bin ;;
    program) echo program_tile.bin program_diagonal.bin program_map.bin program_refresh.bin ;;
  esac
}
for t in "${targets[@]}"; do
  mkdir -p "$build/corpus/$t"
  for f in $(seed_files "$t"); do cp -f "$seeds/$f" "$build/corpus/$t/seed-$f"; done
done

# ---- The kept corpus: the minimized inputs of past campaigns (scripts/keep_fuzz_corpus.sh
# writes it), unpacked once per archive version and read, never written, by every run. ----
archive="$root/cpp/fuzz/corpus.tar.xz"
kept="$build/kept"
if [[ -f "$archive" && ( ! -d "$kept" || "$archive" -nt "$kept" ) ]]; then
  rm -rf "$kept" && mkdir -p "$kept"
  tar -xJf "$archive" -C "$kept"
  touch "$kept"
fi
kept_dir() { if [[ -d "$kept/$1" ]]; then echo "$kept/$1"; fi; }

# ---- Run. ----
# UBSan already aborts (-fno-sanitize-recover); ask it for a stack trace too.
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"
failed=0
summary=()
for t in "${targets[@]}"; do
  log="$build/logs/fuzz_$t.log"
  echo "fuzz.sh: fuzz_$t for ${seconds}s (log: ${log#"$root"/})"
  rc=0
  # Run from build/fuzz so that nothing the fuzzer might drop lands elsewhere.
  (cd "$build" && "./fuzz_$t" \
      -max_total_time="$seconds" -max_len=1048576 -timeout=10 -rss_limit_mb=2048 \
      -artifact_prefix="$build/artifacts/fuzz_$t-" -print_final_stats=1 \
      "${extra_args[@]}" "$build/corpus/$t" $(kept_dir "$t")) >"$log" 2>&1 || rc=$?
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
  rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)"
  cov="$(grep -Eo 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -n 1 || true)"
  if [[ $rc -eq 0 ]]; then
    summary+=("fuzz_$t: ok, ${execs:-?} execs, ${rate:-?} exec/s, ${cov:-no coverage line}")
  else
    failed=1
    crash="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)"
    summary+=("fuzz_$t: FINDING (exit $rc), crash input: ${crash:-none written, see log}")
    echo "---- last lines of ${log#"$root"/} ----" >&2
    tail -n 60 "$log" >&2
    if [[ -n "$crash" ]]; then
      echo "---- reproduce: $build/fuzz_$t $crash" >&2
    fi
  fi
done

echo "fuzz.sh: summary (${seconds}s per target)"
printf '  %s\n' "${summary[@]}"
exit "$failed"
