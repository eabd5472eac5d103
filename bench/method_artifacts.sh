#!/usr/bin/env bash
# Refactoring check (not CI): quantize stories260K with every method through the service (quantd +
# 2 local workers) and print the sha256 of each fetched model.safetensors. Run it with the build
# before and after a change that must not move results; the two lists must be identical.
#   bash bench/method_artifacts.sh [BUILD_DIR] > before.txt
# ONLY="quarot4 rtn4" runs just those configurations.
# Configurations: rtn/gptq 4-bit (per channel, and g32 on the q4_0 grid), quip 2, quip-sharp 2,
# qtip 2 (L=10, to keep it short), quarot 4, butterfly 2, and gptq 4 --sequential.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
DATA=$(mktemp -d /tmp/quantd-methods.XXXXXX)
PORT=${PORT:-7171}
"$BUILD"/quantd --data_dir="$DATA/d" --local_workers=2 --listen=127.0.0.1:$PORT \
  --metrics_listen= --input_root="$PWD/examples" 2>"$DATA/quantd.log" &
QUANTD_PID=$!
trap 'kill $QUANTD_PID 2>/dev/null; wait $QUANTD_PID 2>/dev/null || true; rm -rf "$DATA"' EXIT
export QUANTD_ADDR=127.0.0.1:$PORT
for i in $(seq 1 100); do "$BUILD"/quantctl jobs >/dev/null 2>&1 && break; sleep 0.2; done
run() {
  local name=$1; shift
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
  "$BUILD"/quantctl submit examples/stories260K \
    --calib examples/tinystories/calib_stories_0_499.u16 --name "$name" "$@" --wait >/dev/null
  "$BUILD"/quantctl fetch "$name" -o "$DATA/out/$name" >/dev/null
  echo "$name $(sha256sum "$DATA/out/$name/model.safetensors" | cut -d' ' -f1)"
}
run rtn4 --method rtn --bits 4
run gptq4 --method gptq --bits 4
run gptq-q4_0 --method gptq --grid q4_0
run quip2 --method quip --bits 2
run quip-sharp2 --method quip-sharp --bits 2
run qtip2 --method qtip --bits 2 --trellis-l 10
run quarot4 --method quarot --bits 4
run butterfly2 --method butterfly --bits 2
run gptq4-seq --method gptq --bits 4 --sequential
