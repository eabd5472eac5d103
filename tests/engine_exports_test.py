#!/usr/bin/env python3
"""Engine exports checked by independent readers (issue 22): GGUF by gguf-py, compressed-tensors
by the compressed-tensors package.

Runs the real service: quantd with one local worker quantizes the bundled stories260K onto each
GGUF grid (`--grid q4_0|q4_1|q5_0|q5_1|q8_0`, gptq and rtn), `quantctl fetch --format gguf`
writes model.gguf and `--format hf --dtype f32` the same version's dequantized weights. gguf-py
(the `gguf` package llama.cpp maintains) reads the GGUF, dequantizes every tensor, and after a
numpy inverse of llama.cpp's Q/K row permutation the linears must equal our f32 weights:
bit-exactly for Q4_0/Q5_0/Q8_0, within fp32 rounding of d*q + m for Q4_1/Q5_1 (rows of 172
columns, not whole blocks, are F32 and exact). Then the refusals: a quip-sharp version and a
per-channel gptq version are refused at fetch --format gguf with FAILED_PRECONDITION.

compressed-tensors (when a venv with it, torch and safetensors exists: $QUANTD_CT_VENV, default
~/.cache/quantd/ct-venv): `--format compressed-tensors` of gptq 4-bit groups of 32 (asymmetric,
packed zero points), gptq-sym 4-bit per channel with act order and rtn 8-bit groups of 32;
compressed-tensors' own PackedQuantizationCompressor.decompress must give our f32 weights within
2^-10 per element (fp16 scales and fp16 output).

gguf-py comes from PyPI: the test uses the first venv with `gguf` and `numpy` among
$QUANTD_GGUF_VENV, ~/.cache/quantd/hf-venv and ~/.cache/quantd/llama/venv, else exits 77
(CTest: skipped) with the command that creates one. The compressed-tensors part is skipped with a
message when its venv is absent.
"""
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from local_quantd import (CACHE, NP_SAFETENSORS, LocalQuantd, dirs, hf_venv, log,  # noqa: E402
                          skip, venv_python, verdict)


def gguf_python():
    venvs = [os.environ.get("QUANTD_GGUF_VENV", ""), hf_venv(), os.path.join(CACHE, "llama/venv")]
    return venv_python(venvs, "gguf, numpy") or skip(
        "no venv with gguf-py + numpy (looked in $QUANTD_GGUF_VENV, ~/.cache/quantd/hf-venv, "
        "~/.cache/quantd/llama/venv); create one with: python3 -m venv ~/.cache/quantd/llama/venv && "
        "~/.cache/quantd/llama/venv/bin/pip install numpy gguf")


# Runs inside the venv: gguf-py's dequantization of model.gguf against our f32 HF export.
COMPARE = NP_SAFETENSORS + r"""
import json, sys
import numpy as np
import gguf
gguf_file, hf_dir, exact = sys.argv[1], sys.argv[2], sys.argv[3] == "1"

ours = safetensors(hf_dir + "/model.safetensors")
cfg = json.load(open(hf_dir + "/config.json"))
r = gguf.GGUFReader(gguf_file)
names = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
         "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
         "ffn_down": "mlp.down_proj"}
def unpermute(w, n_head):
    # convert_hf_to_gguf.py permute(): w.reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2)
    rows, cols = w.shape
    return w.reshape(n_head, rows // n_head // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)
types, worst, checked = {}, 0.0, 0
for t in r.tensors:
    parts = t.name.split(".")
    if parts[0] != "blk" or parts[2] not in names: continue
    w = gguf.dequantize(t.data, t.tensor_type).reshape(int(t.shape[1]), int(t.shape[0]))
    if parts[2] == "attn_q": w = unpermute(w, cfg["num_attention_heads"])
    if parts[2] == "attn_k": w = unpermute(w, cfg["num_key_value_heads"])
    ref = ours["model.layers.%s.%s.weight" % (parts[1], names[parts[2]])]
    types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    if exact or t.tensor_type.name == "F32":
        assert np.array_equal(w.astype(np.float32), ref), (t.name, float(np.abs(w - ref).max()))
    else:
        worst = max(worst, float(np.abs(w - ref).max() / np.abs(ref).max()))
    checked += 1
tok = r.fields["tokenizer.ggml.tokens"]
print("gguf-py: %d linears %s; worst |delta|/max|w| = %.3g; %d tokens" % (
    checked, types, worst, len(tok.data)))
sys.exit(0 if checked == 35 and worst < 1e-6 else 1)
"""


# Runs inside the compressed-tensors venv: its decompressor against our f32 HF export.
CT_COMPARE = r"""
import json, sys, torch
from safetensors.torch import load_file
from compressed_tensors.quantization import QuantizationConfig
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
ct_dir, hf_dir = sys.argv[1], sys.argv[2]
cfg = json.load(open(ct_dir + "/config.json"))["quantization_config"]
scheme = QuantizationConfig.model_validate(cfg).config_groups["group_0"]
sd, ref = load_file(ct_dir + "/model.safetensors"), load_file(hf_dir + "/model.safetensors")
prefixes = sorted({k[:-len(".weight_packed")] for k in sd if k.endswith(".weight_packed")})
worst = 0.0
for p in prefixes:
    local = {k[len(p) + 1:]: v for k, v in sd.items() if k.startswith(p + ".")}
    w = PackedQuantizationCompressor.decompress(local, scheme)["weight"].float()
    r = ref[p + ".weight"].float()
    worst = max(worst, ((w - r).abs() / (r.abs() + 1e-12)).max().item())
dense = [k for k in cfg["ignore"] if k != "lm_head"]
print("compressed-tensors: %d packed linears, worst per-element |delta|/|w| = %.3g, %d dense" % (
    len(prefixes), worst, len(dense)))
sys.exit(0 if len(prefixes) + len(dense) == 35 and worst <= 2 ** -10 + 1e-6 else 1)
"""


def ct_python():
    v = os.environ.get("QUANTD_CT_VENV", os.path.join(CACHE, "ct-venv"))
    py = venv_python([v], "compressed_tensors, torch, safetensors")
    if py is None:
        log(f"SKIP (compressed-tensors part): no venv with compressed-tensors + torch at {v}")
    return py


def main():
    src, bindir = dirs()
    py = gguf_python()
    with LocalQuantd(bindir, input_root=os.path.join(src, "examples"), prefix="quantd-exports-") as q:
        return run_checks(q, src, py, q.tmp)


def run_checks(q, src, py, tmp):
    ex = os.path.join(src, "examples")
    run = q.run

    def submit(name, method, *flags):  # stories260K, 16 calibration sequences
        q.submit_stories260k(ex, name, method, *flags)

    failures = []
    for grid, method in (("q4_0", "gptq"), ("q4_1", "gptq"), ("q5_0", "rtn"), ("q5_1", "gptq"),
                         ("q8_0", "gptq")):
        name = f"g-{grid}"
        submit(name, method, "--grid", grid)
        models = run("models", name).stdout
        if f"gguf-{grid}" not in models:
            failures.append(f"`quantctl models` does not list gguf-{grid}:\n{models}")
        out, hf = os.path.join(tmp, name), os.path.join(tmp, name + "-hf")
        log(run("fetch", name, "-o", out, "--format", "gguf").stdout.strip().splitlines()[-1])
        run("fetch", name, "-o", hf, "--format", "hf", "--dtype", "f32")
        exact = "0" if grid.endswith("_1") else "1"
        r = subprocess.run([py, "-c", COMPARE, os.path.join(out, "model.gguf"), hf, exact])
        log(f"{grid} ({method}): {'ok' if r.returncode == 0 else 'FAIL'}")
        if r.returncode != 0:
            failures.append(f"gguf-py on {grid} ({method})")
    ct = ct_python()
    if ct:
        for name, method, flags in (
                ("ct-g32", "gptq", ("--bits", "4", "--group-size", "32")),
                ("ct-sym-ao", "gptq", ("--grid", "gptq-sym", "--bits", "4", "--act-order")),
                ("ct-8", "rtn", ("--bits", "8", "--group-size", "32"))):
            submit(name, method, *flags)
            out, hf = os.path.join(tmp, name), os.path.join(tmp, name + "-hf")
            log(run("fetch", name, "-o", out, "--format", "compressed-tensors").stdout
                .strip().splitlines()[-1])
            run("fetch", name, "-o", hf, "--format", "hf", "--dtype", "f32")
            r = subprocess.run([ct, "-c", CT_COMPARE, out, hf])
            log(f"compressed-tensors {name}: {'ok' if r.returncode == 0 else 'FAIL'}")
            if r.returncode != 0:
                failures.append(f"compressed-tensors {name}")
    # Refusals, before anything is downloaded.
    submit("plain-gptq", "gptq", "--bits", "4")
    submit("qs2", "quip-sharp", "--bits", "2")
    for name, why in (("plain-gptq", "one grid per output channel"),
                      ("qs2", "no engine format reads")):
        out = os.path.join(tmp, name)
        if not q.fetch_refused(name, out, "gguf", why) or os.path.exists(os.path.join(out, ".quantd-native", "model.safetensors")):
            failures.append(f"refusal {name}: not refused as FAILED_PRECONDITION naming {why!r}, "
                            "or downloaded first")
    return verdict(failures)


if __name__ == "__main__":
    sys.exit(main())
