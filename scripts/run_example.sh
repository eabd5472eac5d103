#!/usr/bin/env bash
# The main job: build, start quantd with 2 local workers on the embedded defaults, quantize the
# bundled real model (stories260K) to 2 bits with QuIP# (E8P + block LDLQ), fetch it from the
# registry, and print fp vs quantized perplexity of the fetched model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
METHOD=${METHOD:-quip-sharp}
BITS=${BITS:-2}
NAME=stories260K-${METHOD}-${BITS}bit
DATA=$(mktemp -d /tmp/quantd-example.XXXXXX)
OUT=${OUT:-out/$NAME}
./build/quantd --data_dir="$DATA" --local_workers=2 --listen=127.0.0.1:7070 \
  --metrics_listen=127.0.0.1:9464 --input_root="$PWD/examples" 2>"$DATA/quantd.log" &
QUANTD_PID=$!
trap 'kill $QUANTD_PID 2>/dev/null; wait $QUANTD_PID 2>/dev/null || true' EXIT
export QUANTD_ADDR=127.0.0.1:7070
for i in $(seq 1 50); do ./build/quantctl jobs >/dev/null 2>&1 && break; sleep 0.2; done
./build/quantctl submit examples/stories260K \
  --calib examples/tinystories/calib_stories_0_499.u16 \
  --eval examples/tinystories/eval_stories_500_999.u16 \
  --method "$METHOD" --bits "$BITS" --name "$NAME" --wait
rm -rf "$OUT"
./build/quantctl fetch "$NAME" -o "$OUT"
echo "--- perplexity on TinyStories stories 500-999 (512-token windows) ---"
echo -n "fp32 model:      "; ./build/quantctl eval examples/stories260K --data examples/tinystories/eval_stories_500_999.u16
echo -n "fetched ${BITS}-bit: "; ./build/quantctl eval "$OUT" --data examples/tinystories/eval_stories_500_999.u16
