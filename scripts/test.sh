#!/usr/bin/env bash
# The test command: installs dependencies, builds, runs the default test suite (unit tests and
# the end-to-end service tests). QUANTD_TEST_ARGS adds ctest arguments.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
cd build
ctest --output-on-failure --timeout 900 -j2 ${QUANTD_TEST_ARGS:-}
# Optional fuzzing mode: QUANTD_FUZZ_SECONDS=N runs every libFuzzer target N seconds.
if [ -n "${QUANTD_FUZZ_SECONDS:-}" ]; then
  cd .. && bash scripts/fuzz.sh "$QUANTD_FUZZ_SECONDS"
fi
