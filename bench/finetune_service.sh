#!/usr/bin/env bash
# Fine-tuning through the service (issue 27, docs/benchmarks.md "The KL stage through the
# service"): one quantd with one local worker (1 thread) per case, the cases run side by side.
#   bench/finetune_service.sh OUT_DIR CASE:PORT:EXTRA_SUBMIT_FLAGS...
# e.g. bench/finetune_service.sh /tmp/ftsvc "block:7400:--ft-e2e off" "kl:7410:"
# Env: B (build dir, default build), MODEL (default ~/.cache/quantd/smollm2-135m/hf), CALIB
# (text or tokens; default wiki.valid.tokens.txt), EVAL (token file: the first 4,096 tokens of
# wiki.test.txt), SUBMIT (the common submit flags). Writes OUT_DIR/CASE.{json,log,quantd.log}:
# the final job status, quantctl's output, and the peak RSS (VmHWM) of quantd and its worker.
set -euo pipefail
OUT=$1
shift
B=${B:-build}
MODEL=${MODEL:-$HOME/.cache/quantd/smollm2-135m/hf}
CALIB=${CALIB:-/work/shared/data/wikitext2/wiki.valid.tokens.txt}
EVAL=${EVAL:?EVAL: a token file}
SUBMIT=${SUBMIT:---method qtip --bits 2 --trellis-l 12 --max-calib-seqs 16 --calib-sampling first --finetune}
mkdir -p "$OUT"

run_case() {  # NAME PORT EXTRA...
  local name=$1 port=$2
  shift 2
  local dd="$OUT/$name.var"
  rm -rf "$dd"
  OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive "$B/quantd" --data_dir="$dd" --local_workers=1 \
    --listen=127.0.0.1:$port --metrics_listen=127.0.0.1:$((port + 1)) --allow_any_input_path \
    2>"$OUT/$name.quantd.log" &
  local qp=$!
  export QUANTD_ADDR=127.0.0.1:$port
  for _ in $(seq 1 300); do "$B/quantctl" jobs >/dev/null 2>&1 && break; sleep 0.5; done
  (
    declare -A hwm
    while kill -0 $qp 2>/dev/null; do
      for p in $qp $(pgrep -P $qp || true); do
        v=$(awk '/VmHWM/ {print $2}' /proc/$p/status 2>/dev/null || true)
        [ -n "$v" ] && { [ "${hwm[$p]:-0}" -lt "$v" ] && hwm[$p]=$v; }
      done
      { for p in "${!hwm[@]}"; do echo "$p ${hwm[$p]}"; done; } > "$OUT/$name.rss.tmp" &&
        mv "$OUT/$name.rss.tmp" "$OUT/$name.rss"
      sleep 2
    done
  ) &
  local sp=$!
  local t0=$SECONDS
  # shellcheck disable=SC2086
  "$B/quantctl" submit "$MODEL" --calib "$CALIB" --eval "$EVAL" $SUBMIT "$@" --name "$name" \
    --wait --progress-interval 60 > "$OUT/$name.log" 2>&1 || true
  local secs=$((SECONDS - t0))
  local id; id=$(head -1 "$OUT/$name.log")
  "$B/quantctl" status "$id" > "$OUT/$name.status.txt" 2>&1 || true
  "$B/quantctl" status "$id" --json > "$OUT/$name.status.json" 2>&1 || true
  cp "$dd"/registry/"$name"/1/manifest.json "$OUT/$name.manifest.json" 2>/dev/null || true
  kill $qp 2>/dev/null || true
  wait $qp 2>/dev/null || true
  wait $sp 2>/dev/null || true
  python3 - "$OUT/$name" "$qp" "$secs" <<'PY' | tee "$OUT/$name.json"
import json, sys
base, qp, secs = sys.argv[1:4]
rss = {}
for line in open(base + ".rss"):
    k, v = line.split()
    rss["quantd" if k == qp else "worker"] = round(int(v) / 1024, 1)
try:
    st = json.load(open(base + ".status.json"))
except Exception:
    st = {}
print(json.dumps({"case": base, "job_wall_s": int(secs), "peak_rss_mib": rss,
                  "state": st.get("state"), "fp_ppl": st.get("fp_ppl"),
                  "quant_ppl": st.get("quant_ppl"), "finetune_e2e": st.get("finetune_e2e")}))
PY
}

pids=()
for c in "$@"; do
  IFS=: read -r name port extra <<< "$c"
  # shellcheck disable=SC2086
  run_case "$name" "$port" $extra &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || true; done
