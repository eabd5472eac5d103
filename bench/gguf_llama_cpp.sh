#!/usr/bin/env bash
# GGUF export against llama.cpp's own quantization on SmolLM2-135M (issue 22; the table is in
# docs/benchmarks.md, "GGUF export against llama.cpp"). Not part of CI: it needs the benchmark
# model (scripts/fetch_smollm2.sh), a llama.cpp build and about 30 CPU-minutes.
#
#   ours:      quantd-bench methods --grid q4_0 (gptq and rtn on llama.cpp's Q4_0 block grid, fp16
#              scales, 16 x 512 calibration tokens of wiki.valid.tokens.txt), written as GGUF by
#              artifact::ExportGguf (= quantctl fetch --format gguf);
#   llama.cpp: F16 of the same weights (llama-quantize --allow-requantize of the Q4_1 GGUF the HF
#              directory was converted from: both round d*q+m to fp16), then Q4_0 without and
#              with an importance matrix from the same calibration text (llama-imatrix -c 512
#              --chunks 16), embedding as llama-quantize chooses and forced to F16 like ours;
#   perplexity: bench/llama_cpp/llama_ppl.cc under llama.cpp for every file, with quantd's
#              protocol (first 4,096 tokens of wiki.test.txt, no BOS, windows of 512, all 4,095
#              targets), plus llama-perplexity's own protocol (--chunks 8) for reference.
# llama.cpp: the source llama-cpp-python vendors (pip download --no-binary :all: llama-cpp-python),
# built with cmake: LLAMA_SRC (source) and LLAMA_BUILD (build dir with bin/llama-quantize,
# bin/llama-imatrix, bin/llama-perplexity and the static libraries).
set -euo pipefail

CACHE="${QUANTD_CACHE:-$HOME/.cache/quantd}"
LLAMA_SRC="${LLAMA_SRC:-$CACHE/llama/llama_cpp_python-0.3.36/vendor/llama.cpp}"
LLAMA_BUILD="${LLAMA_BUILD:-$CACHE/llama/build}"
DATA="${QUANTD_DATA:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data}"
BENCH="${QUANTD_BENCH:-./build/quantd-bench}"
OUT="${OUT:-$CACHE/bench-gguf}"
HF="$CACHE/smollm2-135m/hf"
ORIG="$CACHE/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf"
CALIB="$DATA/wikitext2/wiki.valid.tokens.txt"
EVAL="$DATA/wikitext2/wiki.test.txt"
BIN="$LLAMA_BUILD/bin"
mkdir -p "$OUT"

for f in "$HF/config.json" "$ORIG" "$CALIB" "$EVAL" "$BIN/llama-quantize" "$BIN/llama-imatrix" \
         "$BIN/llama-perplexity" "$BENCH"; do
  [ -e "$f" ] || { echo "gguf_llama_cpp: missing $f" >&2; exit 1; }
done

# 1. Ours: Hessians once, then rtn and gptq variants on the Q4_0 grid (a: act order with static
#    groups, m: MSE clip of each block's scale, d0.1: damping 0.1), each exported to GGUF.
if [ ! -s "$OUT/q4_0/gptq-4.gguf" ]; then
  "$BENCH" methods --model "$HF" --calib "$CALIB" --eval "$EVAL" --calib-seqs 16 \
    --eval-tokens 512 --configs rtn/0,gptq/0,gptq/0/am,gptq/0/ad0.1,gptq/0/amd0.1 --grid q4_0 \
    --save "$OUT/q4_0" --gguf 1 > "$OUT/q4_0.jsonl"
fi

# 1b. The Hessian-weighted grid choice (QuantSpec.hessian_scale, option h; docs/benchmarks.md):
#     gptq + act order + h, gptq + h, and rtn + h (the control: imatrix's idea without feedback).
if [ ! -s "$OUT/q4_0/gptq-4-ah.gguf" ]; then
  "$BENCH" methods --model "$HF" --calib "$CALIB" --eval "$EVAL" --calib-seqs 16 \
    --eval-tokens 128 --configs gptq/0/ah,rtn/0/h,gptq/0/h --grid q4_0 \
    --save "$OUT/q4_0" --gguf 1 > "$OUT/q4_0_hscale.jsonl"
fi

# 2. llama.cpp's files.
[ -s "$OUT/llama-f16.gguf" ] || "$BIN/llama-quantize" --allow-requantize "$ORIG" "$OUT/llama-f16.gguf" F16 >/dev/null 2>&1
[ -s "$OUT/imatrix.gguf" ] || "$BIN/llama-imatrix" -m "$OUT/llama-f16.gguf" -f "$CALIB" -c 512 --chunks 16 \
  -o "$OUT/imatrix.gguf" > "$OUT/imatrix.log" 2>&1
q() {  # q OUTNAME TYPE [llama-quantize options...]
  local name=$1 type=$2
  shift 2
  [ -s "$OUT/$name.gguf" ] || "$BIN/llama-quantize" "$@" "$OUT/llama-f16.gguf" "$OUT/$name.gguf" "$type" \
    > "$OUT/$name.log" 2>&1
}
q llama-q4_0 Q4_0
q llama-q4_0-imat Q4_0 --imatrix "$OUT/imatrix.gguf"
q llama-q4_0-imat-f16emb Q4_0 --imatrix "$OUT/imatrix.gguf" --token-embedding-type f16
q llama-q4_1-imat Q4_1 --imatrix "$OUT/imatrix.gguf"
q llama-iq4_nl-imat IQ4_NL --imatrix "$OUT/imatrix.gguf"

# 3. Perplexity with quantd's protocol through llama.cpp, and llama-perplexity's own.
PPL="$OUT/llama_ppl"
if [ ! -x "$PPL" ] || [ "$(dirname "$0")/llama_cpp/llama_ppl.cc" -nt "$PPL" ] ||
   [ "$(dirname "$0")/llama_cpp/llama_util.h" -nt "$PPL" ]; then
  libs=$(find "$LLAMA_BUILD" -name 'libllama.a' -o -name 'libggml*.a' | sort -r | tr '\n' ' ')
  g++ -O2 -std=c++17 -I"$LLAMA_SRC/include" -I"$LLAMA_SRC/ggml/include" \
    "$(dirname "$0")/llama_cpp/llama_ppl.cc" -Wl,--start-group $libs -Wl,--end-group \
    -fopenmp -lpthread -ldl -o "$PPL"
fi
printf '| file | bytes | ppl (quantd protocol, llama.cpp) | llama-perplexity --chunks 8 |\n|---|---|---|---|\n'
for f in llama-f16 q4_0/rtn-4 q4_0/gptq-4 q4_0/gptq-4-am q4_0/gptq-4-ad0.1 q4_0/gptq-4-amd0.1 \
         q4_0/gptq-4-ah q4_0/rtn-4-h q4_0/gptq-4-h \
         llama-q4_0 llama-q4_0-imat llama-q4_0-imat-f16emb llama-q4_1-imat llama-iq4_nl-imat; do
  g="$OUT/$f.gguf"
  [ -s "$g" ] || continue
  ours=$("$PPL" "$g" "$EVAL" 4096 512 2>/dev/null | sed -n 's/.*"ppl": \([0-9.]*\).*/\1/p')
  theirs=$("$BIN/llama-perplexity" -m "$g" -f "$EVAL" -c 512 --chunks 8 -t 2 2>&1 |
           sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p')
  printf '| %s | %s | %s | %s |\n' "$f" "$(stat -c %s "$g")" "$ours" "$theirs"
done
