#!/usr/bin/env bash
# Real-size benchmarks (issue 21); heavy, never part of CI. Writes one JSON object per line to
# $OUT/<case>.json, each with the peak RSS (VmHWM / /usr/bin/time "maximum resident set") of
# every process involved. Synthetic checkpoints (quantd-bench synth) are created on first use in
# $REALSIZE_DIR (TinyLlama-1.1B shape: 2.2 GB, Llama-2-7B shape: 13.5 GB).
#
# usage: scripts/bench_realsize.sh CASE...   (default: forward1b eval7b forward7b service1b)
#   forward1b  quantd-bench forward --mode batched on the 1.1B shape, 8 x 512 tokens
#   forward7b  the same on the 7B shape, 2 x 512 tokens
#   eval7b     quantctl eval (layer-streamed) on the 7B shape over 1,024 tokens
#   service1b  quantd + 2 local workers: gptq 4-bit, 4 x 512 calibration tokens, evaluation over
#              1,024 tokens; then quantctl fetch (native and --format hf). Reports the Hessian
#              phase's shard bytes (all shards, and the most on disk at once), the merged
#              Hessians' peak and the coordinator's peak disk use (its data dir without the
#              local workers' caches and the input snapshot, hard links to the benchmark's
#              files) and the workers' caches' peak.
#   service7b  the same with rtn 4-bit on the 7B shape, without calibration data (rtn then
#              captures no Hessians; RTN_CALIB=1 passes the calibration tokens instead)
# env: EVAL_TOKENS (eval7b's token count, default 1024), BUILD (default build), REALSIZE_DIR (default $HOME/.cache/quantd/realsize),
#      OUT (default out/bench_realsize), PORT (default 7370), SHARDS (quantd
#      --max_hessian_shards for the service cases, default 2), STAGE_MB (quantd
#      --hessian_stage_mb, default quantd's), NO_EVAL (service cases: submit without
#      evaluation data, e.g. to measure the 7B quantize/assemble/fetch path on a loaded
#      machine, where each 7B evaluation over 1,024 tokens takes about an hour). Run it under nice with OMP_WAIT_POLICY=passive on a
#      shared machine.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${BUILD:-build}
DATA=${REALSIZE_DIR:-$HOME/.cache/quantd/realsize}
OUT=${OUT:-out/bench_realsize}
PORT=${PORT:-7370}
mkdir -p "$DATA" "$OUT"
CASES=("$@")
[ ${#CASES[@]} -eq 0 ] && CASES=(forward1b eval7b forward7b service1b)

synth() {  # synth SHAPE -> prints the model dir
  local dir="$DATA/$1"
  if [ ! -s "$dir/config.json" ]; then
    "$B/quantd-bench" synth --shape "$1" --out "$dir" >&2
  fi
  echo "$dir"
}

tokens() {  # tokens FILE N VOCAB: N random u16 token ids in [3, VOCAB)
  [ -s "$1" ] || python3 -c "
import random, struct, sys
r = random.Random(int(sys.argv[2]))
open(sys.argv[1], 'wb').write(struct.pack('<%dH' % int(sys.argv[2]), *[r.randrange(3, int(sys.argv[3])) for _ in range(int(sys.argv[2]))]))
" "$1" "$2" "$3"
}

timed() {  # timed CASE CMD...: runs CMD, merges its last JSON line with peak_rss_mib
  local name=$1; shift
  local t; t=$(mktemp)
  local line
  line=$(/usr/bin/time -f '%M %e' -o "$t" "$@" | tail -n 1)
  read -r kib secs < <(tail -n 1 "$t")
  rm -f "$t"
  python3 -c "
import json, sys
d = json.loads(sys.argv[1]) if sys.argv[1].startswith('{') else {'output': sys.argv[1]}
d.update({'case': sys.argv[2], 'peak_rss_mib': round(int(sys.argv[3]) / 1024, 1), 'wall_s': float(sys.argv[4])})
print(json.dumps(d))" "$line" "$name" "$kib" "$secs" | tee "$OUT/$name.json"
}

service() {  # service CASE SHAPE METHOD [nocalib]
  local name=$1 shape=$2 method=$3 calib=(--calib "$DATA/calib_2048.u16")
  local eval=(--eval "$DATA/eval_1024.u16")
  [ "${4:-}" = nocalib ] && calib=()
  [ -n "${NO_EVAL:-}" ] && eval=()
  local model; model=$(synth "$shape")
  tokens "$DATA/calib_2048.u16" 2048 32000
  tokens "$DATA/eval_1024.u16" 1024 32000
  local dd; dd=$(mktemp -d "${TMPDIR:-/tmp}/realsize.XXXXXX")
  local stage=()
  [ -n "${STAGE_MB:-}" ] && stage=(--hessian_stage_mb="$STAGE_MB")
  "$B/quantd" --data_dir="$dd/var" --local_workers=2 --listen=127.0.0.1:$PORT \
    --max_hessian_shards="${SHARDS:-2}" "${stage[@]}" --input_root="$DATA" \
    --metrics_listen=127.0.0.1:$((PORT + 1)) 2>"$dd/quantd.log" &
  local qp=$!
  export QUANTD_ADDR=127.0.0.1:$PORT
  for _ in $(seq 1 100); do "$B/quantctl" jobs >/dev/null 2>&1 && break; sleep 0.2; done
  # Peak RSS of quantd and each worker (VmHWM is a high-water mark: the last sample before a
  # process exits is its peak), the coordinator's peak disk use (data dir minus the local
  # workers' caches), the workers' caches' peak, the Hessian shards (every shard file's size:
  # their sum is the bytes moved; and the most on disk at once) and the merged Hessians' peak,
  # sampled every 2 s.
  (
    set +u  # bash < 4.4 calls an empty associative array unbound
    declare -A hwm shard; disk=0; wdisk=0; shards_now=0; merged=0
    while kill -0 $qp 2>/dev/null; do
      for p in $qp $(pgrep -P $qp || true); do
        v=$(awk '/VmHWM/ {print $2}' /proc/$p/status 2>/dev/null || true)
        [ -n "$v" ] && hwm[$p]=$v
      done
      # The input snapshot is hard links to the user's files (no new disk): not counted.
      t=$(du -sk --exclude=inputs --exclude=worker-cache "$dd/var" 2>/dev/null | cut -f1 || echo 0)
      w=$(du -sk "$dd/var/worker-cache" 2>/dev/null | cut -f1 || echo 0)
      [ "${t:-0}" -gt "$disk" ] && disk=$t
      [ "${w:-0}" -gt "$wdisk" ] && wdisk=$w
      now=0
      while read -r f sz; do
        [ -z "$f" ] && continue
        now=$((now + sz))
        [ "${shard[$f]:-0}" -lt "$sz" ] && shard[$f]=$sz
      done < <(stat -c '%n %s' "$dd"/var/jobs/*/results/hessian_* 2>/dev/null || true)
      [ "$now" -gt "$shards_now" ] && shards_now=$now
      m=$(du -sb "$dd"/var/jobs/*/hessians 2>/dev/null | awk '{s += $1} END {printf "%.0f", s}' || true)
      [ "${m:-0}" -gt "$merged" ] && merged=$m
      total=0; for f in "${!shard[@]}"; do total=$((total + shard[$f])); done
      { for p in "${!hwm[@]}"; do echo "$p ${hwm[$p]}"; done; echo "disk $disk"; echo "wdisk $wdisk"
        echo "shards_total $total"; echo "shards_peak $shards_now"; echo "shard_files ${#shard[@]}"
        echo "merged_peak $merged"; } > "$dd/rss.tmp" && mv "$dd/rss.tmp" "$dd/rss.txt"
      sleep 2
    done
  ) &
  local sp=$!
  local t0=$SECONDS
  # Submitting a 7B model hashes and snapshots 13.5 GB, which on a loaded machine can outlast
  # quantctl's 120 s RPC deadline (exit 4) while quantd goes on to create the job: submitting
  # again with the same request id attaches to that job.
  local rid; rid="bench-$name-$(date +%s)"
  for _ in 1 2 3 4 5 6; do
    local rc=0
    "$B/quantctl" submit "$model" "${calib[@]}" "${eval[@]}" --request-id "$rid" \
      --calib-seq-len 512 --method "$method" --bits 4 --name "$name" --wait >> "$dd/submit.txt" 2>&1 || rc=$?
    [ "$rc" -ne 4 ] && break
  done
  local job_s=$((SECONDS - t0))
  "$B/quantctl" jobs --json > "$dd/jobs.json" 2>/dev/null || true
  rm -rf "$dd/fetch" "$dd/fetch_hf"
  timed "$name.fetch_native" "$B/quantctl" fetch "$name" -o "$dd/fetch" > /dev/null
  rm -rf "$dd/fetch"  # the hf export is the bigger of the two; one at a time on a small disk
  timed "$name.fetch_hf" "$B/quantctl" fetch "$name" -o "$dd/fetch_hf" --format hf > /dev/null
  rm -rf "$dd/fetch_hf"
  kill $qp; wait $qp 2>/dev/null || true
  wait $sp 2>/dev/null || true
  cp "$dd/quantd.log" "$OUT/$name.quantd.log" 2>/dev/null || true
  cp "$dd/jobs.json" "$OUT/$name.jobs.json" 2>/dev/null || true
  python3 - "$dd" "$name" "$qp" "$job_s" <<'PY' | tee "$OUT/$name.json"
import json, sys
dd, name, qp, job_s = sys.argv[1:5]
rss, extra = {}, {}
for line in open(dd + "/rss.txt"):
    k, v = line.split()
    if k in ("disk", "wdisk", "shards_total", "shards_peak", "shard_files", "merged_peak"):
        extra[k] = int(v)
    else:
        rss["quantd" if k == qp else "worker_" + k] = round(int(v) / 1024, 1)
status = open(dd + "/submit.txt").read().strip().splitlines()
print(json.dumps({"case": name, "job_seconds": int(job_s), "status": status[-1] if status else "",
                  "peak_rss_mib": rss,
                  "coordinator_peak_disk_mib": round(extra.get("disk", 0) / 1024),
                  "worker_caches_peak_disk_mib": round(extra.get("wdisk", 0) / 1024),
                  "hessian_shards": extra.get("shard_files", 0),
                  "hessian_shard_bytes_moved": extra.get("shards_total", 0),
                  "hessian_shard_bytes_peak_on_disk": extra.get("shards_peak", 0),
                  "merged_hessian_bytes_peak": extra.get("merged_peak", 0)}))
PY
  rm -rf "$dd"
}

for c in "${CASES[@]}"; do
  case $c in
    forward1b) timed forward1b "$B/quantd-bench" forward --model "$(synth tinyllama-1.1b)" \
                 --tokens 4096 --context 512 ;;
    forward7b) timed forward7b "$B/quantd-bench" forward --model "$(synth llama2-7b)" \
                 --tokens 1024 --context 512 ;;
    eval7b) n=${EVAL_TOKENS:-1024}
            tokens "$DATA/eval_$n.u16" "$n" 32000
            timed eval7b "$B/quantctl" eval "$(synth llama2-7b)" --data "$DATA/eval_$n.u16" \
              --context 512 --json ;;
    service1b) service service1b tinyllama-1.1b gptq ;;
    service7b) if [ -n "${RTN_CALIB:-}" ]; then service service7b llama2-7b rtn
               else service service7b llama2-7b rtn nocalib; fi ;;
    *) echo "unknown case $c" >&2; exit 2 ;;
  esac
done
