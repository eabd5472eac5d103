#!/usr/bin/env bash
# Checks the lock annotations with clang's -Wthread-safety, as errors: every member marked
# ABSL_GUARDED_BY(mu) is touched only with mu held, every ..._LOCKS_REQUIRED function is called
# with its lock held (GCC, the default compiler, ignores the annotations). Builds the three
# binaries, which contain all the locking code except the CUDA device (CUDA is off here), into
# build-clang/. Exits non-zero on the first violation.
set -euo pipefail
cd "$(dirname "$0")/.."
B="${QUANTD_CLANG_BUILD_DIR:-$PWD/build-clang}"
QUANTD_CLANG=1 bash scripts/install_deps.sh
if [ ! -f "$B/build.ninja" ]; then
  CC=clang CXX=clang++ cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS="-Werror=thread-safety" -DQUANTD_CUDA=OFF -DQUANTD_BUILD_TESTS=OFF >/dev/null
fi
ninja -C "$B" quantd quantd-worker quantctl
echo "thread-safety: clean"
