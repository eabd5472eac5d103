#!/usr/bin/env python3
"""GGUF exports of the Qwen2, Qwen3, Gemma 2 and Gemma 3 fixtures, run by llama.cpp (issue 23).

For each family fixture of engine/model/testdata/families (tiny random models saved by
transformers; tests/fixtures/make_family_fixtures.py), with the settings llama.cpp's graphs do
not compute edited out of its config.json (Qwen2: use_sliding_window false; Gemma:
query_pre_attn_scalar = head_dim) and a 96-token byte-level BPE tokenizer.json added:
  1. through the service: a gptq 4-bit job on llama.cpp's Q4_0 grid (--grid q4_0), then
     `quantctl fetch --format gguf` and the native artifact;
  2. llama.cpp (bench/llama_cpp/llama_logits.cc, built here against the llama.cpp that
     llama-cpp-python vendors) loads the GGUF and computes the logits of the fixture's prompt;
  3. `quantctl eval --logits-out` computes ours on the native artifact (the same quantized
     weights); rel = max |llama.cpp - ours| / max |ours| must be <= 2e-2 and the prompt's
     perplexities must agree within 1% (llama.cpp's CPU kernels round the activations to Q8_0
     before Q4_0 dot products and use fp16 tables for GELU, so exact agreement is not expected;
     a wrong norm, mask, RoPE base or scale gives rel > 0.1).
Skips (exit 77) when the llama.cpp source or build is missing (LLAMA_SRC, LLAMA_BUILD as in
bench/gguf_llama_cpp.sh).
"""
import array
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_transformers_test import SKIP, log, start_quantd, stop_quantd  # noqa: E402

CACHE = os.environ.get("QUANTD_CACHE", os.path.expanduser("~/.cache/quantd"))
LLAMA_SRC = os.environ.get("LLAMA_SRC", os.path.join(CACHE, "llama/llama_cpp_python-0.3.36/vendor/llama.cpp"))
LLAMA_BUILD = os.environ.get("LLAMA_BUILD", os.path.join(CACHE, "llama/build"))
REL_TOL = 2e-2
PPL_TOL = 0.01

# family -> config.json edits that keep the model within what llama.cpp computes.
FAMILIES = {
    "qwen2": {"use_sliding_window": False},
    "qwen3": {},
    "gemma2": {"query_pre_attn_scalar": 16},
    "gemma3": {"query_pre_attn_scalar": 16},
}


def build_llama_logits(src, out):
    libs = []
    for root, _, files in os.walk(LLAMA_BUILD):
        libs += [os.path.join(root, f) for f in files
                 if f == "libllama.a" or (f.startswith("libggml") and f.endswith(".a"))]
    cmd = (["g++", "-O2", "-std=c++17", f"-I{LLAMA_SRC}/include", f"-I{LLAMA_SRC}/ggml/include",
            os.path.join(src, "bench/llama_cpp/llama_logits.cc"), "-Wl,--start-group"]
           + sorted(libs, reverse=True) + ["-Wl,--end-group", "-fopenmp", "-lpthread", "-ldl", "-o", out])
    return subprocess.run(cmd, capture_output=True, text=True)


def read_f32(path):
    a = array.array("f")
    with open(path, "rb") as f:
        a.frombytes(f.read())
    return a


def prompt_ppl(logits, tokens, vocab):
    nll = 0.0
    for t in range(len(tokens) - 1):
        row = logits[t * vocab:(t + 1) * vocab]
        mx = max(row)
        lse = mx + math.log(sum(math.exp(v - mx) for v in row))
        nll += lse - row[tokens[t + 1]]
    return math.exp(nll / (len(tokens) - 1))


def tokenizer_json():
    vocab = {chr(33 + i): i for i in range(94)}
    vocab["\u0120"] = 94  # byte-level ' '
    vocab["\u010a"] = 95  # byte-level '\n'
    return {"model": {"type": "BPE", "vocab": vocab, "merges": []},
            "decoder": {"type": "ByteLevel"}, "added_tokens": []}


def main():
    src = os.environ.get("QUANTD_SOURCE_DIR", os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    bindir = os.environ.get("QUANTD_BINARY_DIR", os.path.join(src, "build"))
    if not os.path.exists(os.path.join(LLAMA_SRC, "include/llama.h")) or not os.path.isdir(LLAMA_BUILD):
        log(f"SKIP: no llama.cpp source at {LLAMA_SRC} or build at {LLAMA_BUILD}")
        return SKIP
    quantctl = os.path.join(bindir, "quantctl")
    tmp = tempfile.mkdtemp(prefix="quantd-gguf-families-")
    daemon = None
    failures = []
    try:
        tool = os.path.join(tmp, "llama_logits")
        r = build_llama_logits(src, tool)
        if r.returncode != 0:
            failures.append(f"building llama_logits: {r.stderr[-2000:]}")
            return 1
        daemon, addr = start_quantd(bindir, tmp, tmp)
        if addr is None:
            failures.append("quantd did not start")
            return 1
        calib = os.path.join(tmp, "calib.u16")
        with open(calib, "wb") as f:  # ids < vocab 96, uint16 LE: 16 sequences of 64
            f.write(b"".join(((i * 37 + i // 7) % 96).to_bytes(2, "little") for i in range(1024)))
        for fam, edits in FAMILIES.items():
            model = os.path.join(tmp, "models", fam)
            shutil.copytree(os.path.join(src, "engine/model/testdata/families", fam), model)
            cfg = json.load(open(os.path.join(model, "config.json")))
            cfg.update(edits)
            json.dump(cfg, open(os.path.join(model, "config.json"), "w"))
            json.dump(tokenizer_json(), open(os.path.join(model, "tokenizer.json"), "w"))
            tokens_file = os.path.join(model, "tokens.u16")
            name = f"gguf-{fam}"
            r = subprocess.run([quantctl, "--addr", addr, "submit", model, "--calib", calib,
                                "--method", "gptq", "--bits", "4", "--grid", "q4_0", "--name", name,
                                "--calib-seq-len", "64", "--eval-context", "64", "--wait"],
                               capture_output=True, text=True)
            native, gguf = os.path.join(tmp, "native-" + fam), os.path.join(tmp, "gguf-" + fam)
            for args in (["-o", native], ["-o", gguf, "--format", "gguf"]):
                if r.returncode == 0:
                    r = subprocess.run([quantctl, "--addr", addr, "fetch", name] + args,
                                       capture_output=True, text=True)
            if r.returncode != 0:
                failures.append(f"{fam}: submit/fetch: {r.stdout}{r.stderr}")
                continue
            ours, theirs = os.path.join(tmp, fam + "-ours.f32"), os.path.join(tmp, fam + "-llama.f32")
            r = subprocess.run([quantctl, "eval", native, "--data", tokens_file, "--context", "20",
                                "--logits-out", ours], capture_output=True, text=True)
            if r.returncode != 0:
                failures.append(f"{fam}: quantctl eval: {r.stderr.strip()}")
                continue
            r = subprocess.run([tool, os.path.join(gguf, "model.gguf"), tokens_file, theirs],
                               capture_output=True, text=True)
            if r.returncode != 0:
                failures.append(f"{fam}: llama.cpp: {r.stderr[-3000:]}")
                continue
            tokens = list(array.array("H", open(tokens_file, "rb").read()))
            a, b = read_f32(ours), read_f32(theirs)
            vocab = cfg["vocab_size"]
            if len(a) != len(b) or len(a) != len(tokens) * vocab:
                failures.append(f"{fam}: {len(a)} logits from quantd, {len(b)} from llama.cpp")
                continue
            rel = max(abs(x - y) for x, y in zip(a, b)) / max(abs(x) for x in a)
            p_ours, p_llama = prompt_ppl(a, tokens, vocab), prompt_ppl(b, tokens, vocab)
            ok = rel <= REL_TOL and abs(p_llama / p_ours - 1) <= PPL_TOL
            log(f"{fam}: llama.cpp {json.loads(r.stdout)['n_vocab']} logits x {len(tokens)}; "
                f"rel {rel:.3g}; prompt perplexity ours {p_ours:.4f}, llama.cpp {p_llama:.4f}: "
                f"{'ok' if ok else 'MISMATCH'}")
            if not ok:
                failures.append(f"{fam}: rel {rel:.3g} (tol {REL_TOL}), ppl {p_ours:.4f} vs {p_llama:.4f}")
    finally:
        stop_quantd(daemon)
        shutil.rmtree(tmp, ignore_errors=True)
        for f in failures:
            log("FAIL:", f)
        log("PASS" if not failures else "FAIL")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
