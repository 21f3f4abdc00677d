#!/usr/bin/env bash
# Packaging check for the C++ library, as a new user would meet it:
#   1. configure, build and `cmake --install` fheprune into a temporary prefix, as a static and
#      as a shared library;
#   2. check that only the public headers were installed (no engine internals);
#   3. build examples/ as a separate project against that prefix with find_package(fheprune)
#      (no C++ standard set there: the targets carry it), compiling every installed header on
#      its own;
#   4. run the examples end to end (examples/run_examples.sh);
#   5. add fheprune to a parent project with add_subdirectory: the parent gets the libraries,
#      not the tests or examples.
# Build trees go to build/install-check/; the prefixes are temporary and removed afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

jobs="$(nproc)"
generator=()
if command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi
prefix_root="$(mktemp -d)"
trap 'rm -rf "$prefix_root"' EXIT
internal=(modarith ntt primes thread_pool wire random context_tables kernels simd)

for kind in static shared; do
  shared=OFF
  if [ "$kind" = shared ]; then shared=ON; fi
  build="build/install-check/$kind"
  prefix="$prefix_root/$kind"
  echo "-- $kind library: build and install into a temporary prefix"
  cmake -S . -B "$build/lib" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS="$shared" -DFHEPRUNE_BUILD_TESTS=OFF -DFHEPRUNE_BUILD_EXAMPLES=OFF \
    -DCMAKE_INSTALL_PREFIX="$prefix" >/dev/null
  cmake --build "$build/lib" -j "$jobs" >/dev/null
  cmake --install "$build/lib" >/dev/null

  # lib/ or lib64/, as GNUInstallDirs chooses for the platform.
  config="$(find "$prefix" -path '*/cmake/fheprune/fhepruneConfig.cmake' | head -1)"
  test -n "$config" && test -f "$(dirname "$config")/fhepruneConfigVersion.cmake"
  test -f "$prefix/include/fheprune/version.hpp"
  for name in "${internal[@]}"; do
    if [ -n "$(find "$prefix/include" -name "$name.hpp")" ]; then
      echo "check_install: internal header $name.hpp was installed" >&2
      exit 1
    fi
  done

  echo "-- $kind library: examples as a consumer project (find_package)"
  rm -rf "$build/consumer"
  cmake -S examples -B "$build/consumer" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
  cmake --build "$build/consumer" -j "$jobs" >/dev/null
  bash examples/run_examples.sh "$build/consumer"
done
echo "-- as a subproject (add_subdirectory): only the libraries, no tests or examples"
parent="build/install-check/subproject"
mkdir -p "$parent/src"
cat >"$parent/src/CMakeLists.txt" <<CMAKE
cmake_minimum_required(VERSION 3.21)
project(parent LANGUAGES CXX)
add_subdirectory("$PWD" fheprune)
foreach(target fheprune_tests fheprune_bench fheprune_ct_check encrypt_compute_decrypt)
  if(TARGET \${target})
    message(FATAL_ERROR "a parent project got fheprune's \${target}")
  endif()
endforeach()
add_executable(engine_demo "$PWD/examples/encrypt_compute_decrypt.cpp")
target_link_libraries(engine_demo PRIVATE fheprune::core)
CMAKE
cmake -S "$parent/src" -B "$parent/build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$parent/build" --target engine_demo -j "$jobs" >/dev/null
"$parent/build/engine_demo"

echo "-- check_install: the installed package builds and runs the examples (static and shared)"
