#!/usr/bin/env bash
# The test command: installs dependencies, builds, runs the default test suite (unit tests and
# the end-to-end service tests).
#   --slow                    also the slow tier (QUANTD_SLOW_TESTS=1: the 50-submission load
#                             test, about a minute); CI runs it (.ci/run)
#   --sanitize=LIST           LIST = address,undefined or thread: build into ./build-<LIST> with
#                             those sanitizers (QUANTD_SANITIZE, CUDA off) and run the suite there
# QUANTD_TEST_ARGS adds ctest arguments; QUANTD_FUZZ_SECONDS=N also runs scripts/fuzz.sh N.
set -euo pipefail
cd "$(dirname "$0")/.."
build=build
for arg in "$@"; do
  case "$arg" in
    --slow) export QUANTD_SLOW_TESTS=1 ;;
    --sanitize=*)
      san="${arg#--sanitize=}"
      build="build-${san//,/-}"
      # TSan builds with clang: it can leave the inline gRPC/protobuf header code uninstrumented
      # like the Debian libraries it belongs to (scripts/tsan_ignorelist.txt), and checks the
      # lock annotations (-Wthread-safety) on the way.
      compilers=()
      if [ "$san" = thread ]; then
        QUANTD_CLANG=1 bash scripts/install_deps.sh
        compilers=(-DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++)
      else
        bash scripts/install_deps.sh
      fi
      cmake -S . -B "$build" -G Ninja "${compilers[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQUANTD_SANITIZE="$san" \
        -DQUANTD_CUDA=OFF >/dev/null
      ninja -C "$build"
      # Uninstrumented system libraries (gRPC, abseil, libgomp) are outside TSan's view.
      export TSAN_OPTIONS="suppressions=$PWD/scripts/tsan.supp ignore_noninstrumented_modules=1 ${TSAN_OPTIONS:-}"
      # libgomp's barriers are invisible to TSan, so every OpenMP region would be reported as a
      # race; under TSan OpenMP runs one thread (the limit also caps num_threads clauses) and
      # TSan checks our own threads: gRPC handlers, the scheduler, leases, worker loops.
      if [ "$san" = thread ]; then export OMP_THREAD_LIMIT=1 OMP_NUM_THREADS=1; fi
      export ASAN_OPTIONS="detect_leaks=1 ${ASAN_OPTIONS:-}"
      export UBSAN_OPTIONS="print_stacktrace=1 halt_on_error=1 ${UBSAN_OPTIONS:-}"
      # Every process's reports go to files (report.<pid>), so that a report in a quantd or
      # quantd-worker process an e2e test started, whose exit status no test checks, still
      # fails the run (below).
      logs="$PWD/$build/sanitizer-logs"
      rm -rf "$logs" && mkdir -p "$logs"
      for v in ASAN_OPTIONS UBSAN_OPTIONS TSAN_OPTIONS; do
        export "$v=${!v:-} log_path=$logs/report"
      done
      ;;
    *) echo "usage: scripts/test.sh [--slow] [--sanitize=address,undefined|thread]" >&2; exit 2 ;;
  esac
done
[ "$build" = build ] && bash scripts/build.sh
cd "$build"
rc=0
ctest --output-on-failure --timeout 900 -j2 ${QUANTD_TEST_ARGS:-} || rc=$?
if [ -n "${logs:-}" ] && [ -n "$(ls -A "$logs")" ]; then
  echo "sanitizer reports in $logs:" >&2
  for f in "$logs"/*; do echo "== $f" >&2; head -60 "$f" >&2; done
  rc=1
fi
[ "$rc" = 0 ] || exit "$rc"
# Optional fuzzing mode: QUANTD_FUZZ_SECONDS=N runs every libFuzzer target N seconds.
if [ -n "${QUANTD_FUZZ_SECONDS:-}" ]; then
  cd .. && bash scripts/fuzz.sh "$QUANTD_FUZZ_SECONDS"
fi
