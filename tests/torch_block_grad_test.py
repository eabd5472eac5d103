#!/usr/bin/env python3
"""Block-wise fine-tuning gradients checked against torch autograd (issue 27, optional tier).

`quantd-bench block-grad` runs one decoder block of a fixture Llama (engine/model/testdata/
rope_llama3: hidden 32, 2 query heads sharing 1 KV head, i.e. GQA, fp16 weights) forward and
backward in fp64 with its norms and every linear's real out/in scales a, b perturbed
(W_eff = diag(a)·W·diag(b)), on a random input x and a random output gradient dy (loss
L = Σ y ⊙ dy), and prints x, dy, the parameters, the RoPE tables it used, y and the gradients
∂L/∂x, ∂L/∂(both norms), ∂L/∂a, ∂L/∂b of all seven linears. The reference is transformers'
own LlamaDecoderLayer loaded from the same directory in float64, its linears' weights replaced
by diag(a)·W·diag(b) built from leaf tensors (torch.func.functional_call), its norm weights by
the perturbed ones, fed the same cos/sin, and differentiated by torch autograd.

Two changes keep the reference in fp64 (the formulas are transformers' own): LlamaRMSNorm casts
its input to float32 whatever its dtype, so its forward is replaced by the same formula in the
input's dtype; attention runs through transformers' sdpa path (the eager one takes the softmax
in float32). Every quantity must agree to 1e-10 relative (max |ours − torch| / max |torch|).

Each of the fixture's two layers is checked, with 24 tokens (two seeds). Then the end-to-end
stage's loss (`quantd-bench block-grad --kl 1`, engine/model/finetune_e2e.h): on 24 random
tokens, every block's norms and a, b, the final norm and the head perturbed, L = Σ_t KL(p_fp ‖ p)
with p_fp the unperturbed model's distribution, which torch computes itself (transformers'
embedding, decoder layers, final norm and head composed, the unperturbed and the perturbed
weights); L and the gradients of all those parameters must agree to the same 1e-10. Needs the venv with
torch + transformers ($QUANTD_HF_VENV, default ~/.cache/quantd/hf-venv); without one it exits
77 (CTest: skipped) unless QUANTD_TEST_TRANSFORMERS=1, which creates it (hf_transformers_test.py).
"""
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from local_quantd import hf_venv_python  # noqa: E402  (exit 77 without the venv)

TOL = 1e-10

# Runs inside the venv, before either check: argv = model dir, our JSON file, tolerance.
PRELUDE = r"""
import json, sys
import torch, transformers
from torch.func import functional_call
model_dir, ours_file, tol = sys.argv[1], sys.argv[2], float(sys.argv[3])
ours = json.load(open(ours_file))
T = lambda v: torch.tensor(v, dtype=torch.float64)
model = transformers.LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float64,
                                                      attn_implementation="sdpa")
def rms_fp64(self, h):  # LlamaRMSNorm's formula, without its cast to float32
    return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))
for mod in model.modules():
    if type(mod).__name__ == "LlamaRMSNorm":
        mod.forward = rms_fp64.__get__(mod)
names = {"q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
         "o_proj": "self_attn.o_proj", "gate_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj",
         "down_proj": "mlp.down_proj"}
cos, sin = T(ours["cos"]), T(ours["sin"])
pos = (torch.cat([cos, cos], -1)[None], torch.cat([sin, sin], -1)[None])
worst, failures, count = 0.0, [], 0
def check(what, ref_t, got):
    global worst, count
    ref_t, got = ref_t.detach(), T(got)
    rel = float((got - ref_t).abs().max() / ref_t.abs().max())
    worst, count = max(worst, rel), count + 1
    if not rel <= tol:
        failures.append(f"{what}: relative {rel:.3g}")
def scaled(layer, lin, a, b):  # diag(a)·W·diag(b) of one linear of `layer`
    return a[:, None] * dict(layer.named_parameters())[names[lin] + ".weight"].detach() * b[None, :]
def finish(what):
    print(f"{what}: {count} quantities, worst relative difference {worst:.3g}")
    for f in failures:
        print("  FAIL", f)
    sys.exit(1 if failures else 0)
"""

# The block check (quantd-bench block-grad).
COMPARE = PRELUDE + r"""
layer = model.model.layers[ours["layer"]]
x = T(ours["x"]).requires_grad_()
attn_norm = T(ours["attn_norm"]).requires_grad_()
ffn_norm = T(ours["ffn_norm"]).requires_grad_()
a = [T(v).requires_grad_() for v in ours["a"]]
b = [T(v).requires_grad_() for v in ours["b"]]
params = {"input_layernorm.weight": attn_norm, "post_attention_layernorm.weight": ffn_norm}
for i, lin in enumerate(ours["linears"]):
    params[names[lin] + ".weight"] = scaled(layer, lin, a[i], b[i])
y = functional_call(layer, params, (x[None],), {"attention_mask": None, "position_embeddings": pos})
y = (y[0] if isinstance(y, tuple) else y)[0]
(y * T(ours["dy"])).sum().backward()
check("y", y, ours["y"])
check("dx", x.grad, ours["grad"]["x"])
check("d attn_norm", attn_norm.grad, ours["grad"]["attn_norm"])
check("d ffn_norm", ffn_norm.grad, ours["grad"]["ffn_norm"])
for i, lin in enumerate(ours["linears"]):
    check(f"d a[{lin}]", a[i].grad, ours["grad"]["a"][i])
    check(f"d b[{lin}]", b[i].grad, ours["grad"]["b"][i])
finish(f"layer {ours['layer']}")
"""

# The end-to-end KL check (quantd-bench block-grad --kl 1).
COMPARE_KL = PRELUDE + r"""
tokens = torch.tensor(ours["tokens"])[None]
head_w = model.lm_head.weight.detach()
def log_probs(layer_params, final_norm, head):
    h = model.model.embed_tokens(tokens)
    for layer, params in zip(model.model.layers, layer_params):
        out = functional_call(layer, params, (h,), {"attention_mask": None, "position_embeddings": pos})
        h = out[0] if isinstance(out, tuple) else out
    h = functional_call(model.model.norm, {"weight": final_norm}, (h,))
    return torch.log_softmax(h[0] @ head.T, -1)
with torch.no_grad():
    ref = log_probs([{} for _ in model.model.layers], model.model.norm.weight.detach(), head_w)
leaves, layer_params = [], []
for i, lj in enumerate(ours["layers"]):
    layer, pj = model.model.layers[i], lj["params"]
    d = {"attn_norm": T(pj["attn_norm"]).requires_grad_(), "ffn_norm": T(pj["ffn_norm"]).requires_grad_(),
         "a": [T(v).requires_grad_() for v in pj["a"]], "b": [T(v).requires_grad_() for v in pj["b"]]}
    leaves.append(d)
    params = {"input_layernorm.weight": d["attn_norm"], "post_attention_layernorm.weight": d["ffn_norm"]}
    for k, lin in enumerate(ours["linears"]):
        params[names[lin] + ".weight"] = scaled(layer, lin, d["a"][k], d["b"][k])
    layer_params.append(params)
final_norm = T(ours["final_norm"]).requires_grad_()
head = T(ours["head"]).requires_grad_()
logq = log_probs(layer_params, final_norm, head)
kl = (ref.exp() * (ref - logq)).sum()
kl.backward()
check("KL", kl, ours["kl"])
check("d final_norm", final_norm.grad, ours["grad"]["final_norm"])
check("d head", head.grad, ours["grad"]["head"])
for i, lj in enumerate(ours["layers"]):
    d, gj = leaves[i], lj["grad"]
    check(f"layer {i} d attn_norm", d["attn_norm"].grad, gj["attn_norm"])
    check(f"layer {i} d ffn_norm", d["ffn_norm"].grad, gj["ffn_norm"])
    for k, lin in enumerate(ours["linears"]):
        check(f"layer {i} d a[{lin}]", d["a"][k].grad, gj["a"][k])
        check(f"layer {i} d b[{lin}]", d["b"][k].grad, gj["b"][k])
finish(f"end-to-end KL {float(kl.detach()):.6g}")
"""


def main():
    src = os.environ.get("QUANTD_SOURCE_DIR", os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    bindir = os.environ.get("QUANTD_BINARY_DIR", os.path.join(src, "build"))
    py = hf_venv_python()
    bench = os.path.join(bindir, "quantd-bench")
    if not os.path.exists(bench):
        bench = os.path.join(bindir, "bench", "quantd-bench")
    model = os.path.join(src, "engine/model/testdata/rope_llama3")
    failed = 0
    with tempfile.TemporaryDirectory(prefix="quantd-blockgrad-") as tmp:
        for layer, seed in ((0, 1), (1, 2)):
            out = os.path.join(tmp, f"ours{layer}.json")
            with open(out, "w") as f:
                r = subprocess.run([bench, "block-grad", "--model", model, "--layer", str(layer),
                                    "--tokens", "24", "--seed", str(seed)], stdout=f, stderr=subprocess.PIPE,
                                   text=True)
            if r.returncode != 0:
                print(f"FAIL: quantd-bench block-grad --layer {layer}: {r.stderr}", flush=True)
                return 1
            c = subprocess.run([py, "-c", COMPARE, model, out, str(TOL)])
            failed |= c.returncode != 0
        out = os.path.join(tmp, "ours_kl.json")
        with open(out, "w") as f:
            r = subprocess.run([bench, "block-grad", "--model", model, "--kl", "1", "--tokens", "24",
                                "--seed", "3"], stdout=f, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            print(f"FAIL: quantd-bench block-grad --kl 1: {r.stderr}", flush=True)
            return 1
        c = subprocess.run([py, "-c", COMPARE_KL, model, out, str(TOL)])
        failed |= c.returncode != 0
    print("FAIL" if failed else "PASS", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
