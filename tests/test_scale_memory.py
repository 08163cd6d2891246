"""The estimator's per-process figures for several processes (memory/sharding.py): what DDP and FSDP/ZeRO-3 hold
beyond their share, as measured on 2-process runs (benchmarks/scale_memory.py)."""

import dataclasses

import pytest

from tuneforge.memory import EstimateInput, estimate_shape, load_shape
from tuneforge.memory.footprint import BYTES

LLAMA3_8B = load_shape("llama3-8b")
X = dict(finetuning_type="full", batch=1, seq=512, dtype="bfloat16", device="cuda")


def test_ddp_keeps_gradient_buckets_the_size_of_the_gradients():
    one = estimate_shape(LLAMA3_8B, EstimateInput(**X))
    ddp = estimate_shape(LLAMA3_8B, EstimateInput(**X, world_size=4, sharding="ddp"))
    assert ddp.gradients == one.gradients and ddp.overhead - one.overhead == pytest.approx(one.gradients)
    assert "DDP gradient buckets" in ddp.detail["overhead"]
    # one process: no buckets
    assert estimate_shape(LLAMA3_8B, EstimateInput(**X, world_size=1, sharding="ddp")).overhead == one.overhead


@pytest.mark.parametrize("sharding", ["fsdp", "zero3"])
def test_sharded_weights_hold_the_root_and_two_layers_gathered_and_the_loss_takes_the_plain_path(sharding):
    from tuneforge.memory.estimate import LOSS_BUFFERS
    from tuneforge.models.heads import CHUNK_BYTES

    one = estimate_shape(LLAMA3_8B, EstimateInput(**X))
    many = estimate_shape(LLAMA3_8B, EstimateInput(**X, world_size=8, sharding=sharding))
    root = LLAMA3_8B.total_params - LLAMA3_8B.layers * LLAMA3_8B.layer_params
    gathered = (2 * LLAMA3_8B.layer_params + root) * BYTES["bfloat16"]
    assert many.weights == pytest.approx(one.weights / 8 + gathered)
    plain = LOSS_BUFFERS * 512 * LLAMA3_8B.vocab * 4 - 2 * min(CHUNK_BYTES, 512 * LLAMA3_8B.vocab * 4)
    unsharded = gathered  # full fine-tuning: the gathered units' gradients, whole until reduce-scattered (bf16)
    assert many.overhead - one.overhead == pytest.approx(plain + unsharded + 0.02 * (
        many.weights + many.gradients + many.optimizer - one.weights - one.gradients - one.optimizer))
    assert "plain loss buffers" in many.detail["overhead"] and "FSDP2 on the CPU" not in many.detail["overhead"]
    # a head the fused loss never takes: its plain buffers are counted already, nothing is added
    other = dataclasses.replace(LLAMA3_8B, model_type="gemma2")
    a = estimate_shape(other, EstimateInput(**X, world_size=8, sharding=sharding))
    assert "plain loss buffers" not in a.detail["overhead"]


def test_fsdp2_on_the_cpu_adds_its_measured_runtime_per_process():
    from tuneforge.memory.sharding import FSDP_CPU_RUNTIME

    x = dict(finetuning_type="lora", batch=1, seq=256, dtype="float32", device="cpu")
    fsdp = estimate_shape(LLAMA3_8B, EstimateInput(**x, world_size=2, sharding="fsdp"))
    zero3 = estimate_shape(LLAMA3_8B, EstimateInput(**x, world_size=2, sharding="zero3"))
    assert fsdp.overhead - zero3.overhead == pytest.approx(FSDP_CPU_RUNTIME)
    assert "FSDP2 on the CPU (measured) 0.300 GiB" in fsdp.detail["overhead"]
