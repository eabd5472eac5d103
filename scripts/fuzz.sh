#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan) into build-fuzz/ and runs each for SECONDS
# (default 30), two at a time. Seeds come from examples/ and engine/format/testdata/; the corpus
# grows in build-fuzz/corpus/<target> across runs. Exits non-zero if any target finds a crash
# (the reproducer is left in build-fuzz/crashes/<target>/).
#   scripts/fuzz.sh [SECONDS]            all targets
#   FUZZ_TARGETS="config_fuzz" scripts/fuzz.sh 60
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-30}"
ROOT="$PWD"
B="${QUANTD_FUZZ_BUILD_DIR:-$ROOT/build-fuzz}"
JOBS="${FUZZ_JOBS:-2}"
TARGETS="${FUZZ_TARGETS:-safetensors_fuzz config_fuzz llama2c_tokenizer_fuzz tokenizer_json_fuzz tokenizer_encode_fuzz gguf_fuzz}"

if [ ! -f "$B/build.ninja" ]; then
  CC=clang CXX=clang++ cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DQUANTD_FUZZ=ON -DQUANTD_BUILD_TESTS=OFF >/dev/null
fi
ninja -C "$B" -j"$JOBS" $(for t in $TARGETS; do echo "fuzz/$t"; done)

# Seed corpora.
S="$B/seeds"
rm -rf "$S" && mkdir -p "$S"/{safetensors_fuzz,config_fuzz,llama2c_tokenizer_fuzz,tokenizer_json_fuzz,tokenizer_encode_fuzz,gguf_fuzz}
cp examples/stories260K/config.json "$S/config_fuzz/"
cp examples/stories260K/tok512.bin "$S/llama2c_tokenizer_fuzz/"
cp engine/tokenizer/testdata/tokenizers/*.tokenizer.json "$S/tokenizer_json_fuzz/"
cp engine/format/testdata/*.gguf "$S/gguf_fuzz/" 2>/dev/null || true
python3 - "$S" <<'PY'
import json, struct, sys
s = sys.argv[1]
def st(header, data):
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data
with open(f"{s}/safetensors_fuzz/small.safetensors", "wb") as f:
    f.write(st({"__metadata__": {"format": "pt"},
                "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
                "b": {"dtype": "BF16", "shape": [3], "data_offsets": [16, 22]}}, bytes(22)))
with open(f"{s}/safetensors_fuzz/empty.safetensors", "wb") as f:
    f.write(st({}, b""))
# The real stories260K header with its data cut off (fails on offsets, exercises the JSON).
with open("examples/stories260K/model.safetensors", "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    with open(f"{s}/safetensors_fuzz/stories260K_header", "wb") as g:
        g.write(struct.pack("<Q", n) + f.read(n))
# Small tokenizer.json seeds (ids < 300, 40 merges): mutations of 4 KB files run far faster.
import glob, os
for f in glob.glob("engine/tokenizer/testdata/tokenizers/*.tokenizer.json"):
    j = json.load(open(f))
    keep = {k: i for k, i in j["model"]["vocab"].items() if i < 300}
    merges = [m for m in j["model"]["merges"]
              if all(x in keep for x in (m if isinstance(m, list) else m.split(" ")))
              and "".join(m if isinstance(m, list) else m.split(" ")) in keep]
    j["model"]["vocab"], j["model"]["merges"] = keep, merges[:40]
    j["added_tokens"] = [t for t in j["added_tokens"] if t["id"] < 300]
    with open(f"{s}/tokenizer_json_fuzz/small_{os.path.basename(f)}", "w") as g:
        g.write(json.dumps(j, ensure_ascii=False, separators=(",", ":")))
corpus = json.load(open("engine/tokenizer/testdata/tokenizers/corpus.json"))
for i, t in enumerate(corpus["texts"][:corpus["hand_written"]]):
    with open(f"{s}/tokenizer_encode_fuzz/t{i:03d}", "w") as f:
        f.write(t)
PY

status=0
run_one() {
  local t="$1"
  mkdir -p "$B/corpus/$t" "$B/crashes/$t"
  local dict=()
  case "$t" in safetensors_fuzz|config_fuzz|tokenizer_json_fuzz) dict=(-dict=fuzz/tokenizer_json.dict) ;; esac
  "$B/fuzz/$t" "$B/corpus/$t" "$S/$t" "${dict[@]}" -max_total_time="$SECS" -max_len=65536 \
    -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 -artifact_prefix="$B/crashes/$t/" \
    >"$B/$t.log" 2>&1
}
pids=()
names=()
for t in $TARGETS; do
  run_one "$t" & pids+=($!); names+=("$t")
  if [ "${#pids[@]}" -ge "$JOBS" ]; then
    wait "${pids[0]}" || status=1
    pids=("${pids[@]:1}")
  fi
done
for p in "${pids[@]}"; do wait "$p" || status=1; done

printf '%-24s %8s %12s %8s\n' target seconds execs crashes
for t in $TARGETS; do
  execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$B/$t.log" | awk '{print $2}' | tail -1 || true)
  crashes=$(find "$B/crashes/$t" -type f | wc -l)
  printf '%-24s %8s %12s %8s\n' "$t" "$SECS" "${execs:-?}" "$crashes"
  [ "$crashes" -eq 0 ] || status=1
done
exit $status
