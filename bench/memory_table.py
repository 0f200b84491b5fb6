"""Memory a tuned-lens run needs per device for Llama 3 1B / 8B / 70B, computed from the model configs.

    python bench/memory_table.py [--seq-len 2048] [--chunk-tokens 512] [--optimizer sgd]

COMPUTED, NOT MEASURED (no such GPU here). The numbers are the sizes of the tensors a run holds, from
each model's Hugging Face ``config.json`` (hidden size, layers, MLP width, heads, KV heads, vocabulary,
tied embeddings), copied below:

- frozen model: every parameter in bfloat16 (``--dtype bfloat16``), spread over ``K`` devices
  (``--n-devices K``; blocks split evenly, so a device holds about 1/K of them);
- lens training state on ln_final's device: ``n_layers`` translators ``d x d + d`` in float32, their
  gradients and the optimiser's buffers (SGD-Nesterov: 1, Adam: 2);
- the residual streams of one micro-batch, every lens layer, in bfloat16 (one sequence of ``seq_len``);
- the vocabulary products: the model's ``W_U`` transposed once (bfloat16) plus three ``[chunk, vocab]``
  float32 blocks (logits, target, gradient);
- the frozen forward's largest transient: one layer's attention scores for one sequence (eager attention).

Under ``torchrun`` every rank holds all of this for its own copy; CUDA's context (~0.5 GiB) and allocator
slack come on top.
"""

from __future__ import annotations

import argparse

GiB = 2**30
# from the models' Hugging Face config.json files (meta-llama/Llama-3.2-1B, Llama-3.1-8B, Llama-3.1-70B)
CONFIGS = {
    "Llama-3.2-1B": dict(d=2048, layers=16, mlp=8192, heads=32, kv_heads=8, vocab=128256, tied=True),
    "Llama-3.1-8B": dict(d=4096, layers=32, mlp=14336, heads=32, kv_heads=8, vocab=128256, tied=False),
    "Llama-3.1-70B": dict(d=8192, layers=80, mlp=28672, heads=64, kv_heads=8, vocab=128256, tied=False),
}


def n_params(c: dict) -> int:
    head = c["d"] // c["heads"]
    attn = 2 * c["d"] * c["d"] + 2 * c["d"] * c["kv_heads"] * head
    block = attn + 3 * c["d"] * c["mlp"] + 2 * c["d"]
    return c["layers"] * block + c["vocab"] * c["d"] * (1 if c["tied"] else 2) + c["d"]


def parts(c: dict, seq_len: int, chunk: int, buffers: int) -> dict[str, float]:
    """Bytes of each part (see the module docstring)."""
    lens = c["layers"] * (c["d"] ** 2 + c["d"])
    return {
        "model": 2 * n_params(c),
        "lens": 4 * lens * (2 + buffers),
        "resid": 2 * (c["layers"] + 1) * seq_len * c["d"],
        "vocab": 2 * c["vocab"] * c["d"] + 3 * 4 * chunk * c["vocab"],
        "attn": 2 * c["heads"] * seq_len * seq_len,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--chunk-tokens", type=int, default=512)
    parser.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    args = parser.parse_args()
    buffers = 1 if args.optimizer == "sgd" else 2
    print(f"COMPUTED from the model configs, not measured; bf16 model, seq {args.seq_len}, chunk {args.chunk_tokens}, "
          f"{args.optimizer} ({buffers} buffer{'s' if buffers > 1 else ''}); GiB\n")
    print("| model | params | bf16 weights | lens state (fp32 + grad + optim) | residuals + vocab blocks + attention "
          "| one device holds it all | per device, K=2 / 4 / 8 (the lens's device) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, c in CONFIGS.items():
        p = parts(c, args.seq_len, args.chunk_tokens, buffers)
        work = p["resid"] + p["vocab"] + p["attn"]
        whole = sum(p.values())
        split = " / ".join(f"{(p['model'] / k + p['lens'] + work) / GiB:.1f}" for k in (2, 4, 8))
        print(f"| {name} | {n_params(c) / 1e9:.2f} B | {p['model'] / GiB:.1f} | {p['lens'] / GiB:.1f} | "
              f"{work / GiB:.1f} | {whole / GiB:.1f} | {split} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
