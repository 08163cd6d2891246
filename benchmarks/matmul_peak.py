"""The machine's fp32 matrix-multiply peak (GFLOP/s with torch's threads) and a model's training FLOPs per token.

usage: python benchmarks/matmul_peak.py      prints the peak and one key=value line
MFU in the benchmarks = real tokens/s x FLOPs per token / this peak.
"""

import json
import os
import time

import torch


def measure_peak(n: int = 2048, seconds: float = 3.0, dtype=torch.float32) -> float:
    """Best GFLOP/s of an n x n x n matmul over a few seconds (after a warm-up)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    c = torch.empty(n, n, dtype=dtype)
    for _ in range(3):
        torch.mm(a, b, out=c)
    best, end = 0.0, time.time() + seconds
    while time.time() < end:
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def lora_flops_per_token(model_dir: str) -> float:
    """~4 x parameters: forward (2N) plus the input-gradient half of backward (2N); the frozen base needs no
    weight gradients (the adapters' own FLOPs and attention scores are small at r 8 and 256 tokens)."""
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    h, i, layers, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    kv = h * cfg.get("num_key_value_heads", cfg["num_attention_heads"]) // cfg["num_attention_heads"]
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * i
    params = layers * per_layer + v * h  # the (tied) LM head is a matmul over the vocabulary
    return 4.0 * params


if __name__ == "__main__":
    peak = measure_peak()
    print(f"fp32 matmul peak: {peak:.0f} GFLOP/s on {torch.get_num_threads()} threads")
    print(f"matmul_peak_gflops={peak:.1f} threads={torch.get_num_threads()}")
