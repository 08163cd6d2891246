"""FSDP2 on the CPU (gloo): tuneforge.distributed.fsdp.shard really shards (each of 2 ranks holds half of every
parameter) and trains like one process with the same global batch. `tuneforge train` still refuses `fsdp` on the CPU
(see distributed/fsdp.py for why), which test_distributed.py checks."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

TOLERANCE = 1e-5  # absolute, per-step loss (float32; FSDP2 averages the gradients with a reduce-scatter)
STEPS = 3

WORKER = textwrap.dedent("""
    import json, sys
    import torch, torch.distributed as td
    from transformers import AutoModelForCausalLM
    from tuneforge.distributed import fsdp
    td.init_process_group("gloo")
    rank, world = td.get_rank(), td.get_world_size()
    model_dir, ids_path, out, offload, replicas = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1", int(sys.argv[5])
    ids = torch.load(ids_path)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    full = {n: tuple(p.shape) for n, p in model.named_parameters()}
    fsdp.shard(model, fsdp.mesh(world, replicas), cpu_offload=offload)
    local = {n: tuple(p.to_local().shape) for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    mine = ids[rank * (len(ids) // world):(rank + 1) * (len(ids) // world)]
    losses = []
    for _ in range(%d):
        loss = model(input_ids=mine, labels=mine).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        mean = loss.detach().clone()
        td.all_reduce(mean)
        losses.append(mean.item() / world)
    state = fsdp.full_state_dict(model)
    json.dump({"full": full, "local": local, "losses": losses,
               "state_shapes": {k: list(v.shape) for k, v in state.items()}}, open(f"{out}/rank{rank}.json", "w"))
    td.destroy_process_group()
""" % STEPS)


def reference_losses(model_dir, ids):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    out = []
    for _ in range(STEPS):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        out.append(loss.item())
    return out


def run_two_ranks(tmp_path, model_dir, ids_path, offload, replicas=1):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    procs = []
    for r in range(2):
        env = {**os.environ, "RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, str(script), model_dir, ids_path, str(tmp_path), "1" if offload else "0",
                                       str(replicas)],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for p in procs:
        out, _ = p.communicate(timeout=180)
        assert p.returncode == 0, out[-3000:]
    return [json.load(open(tmp_path / f"rank{r}.json")) for r in range(2)]


@pytest.mark.parametrize("replicas", [1, 2])
def test_fsdp2_shards_every_parameter_in_half_and_trains_like_one_process(tiny_model_dir, tmp_path, replicas):
    """replicas 1: full sharding over both ranks; 2: hybrid on a (replicate 2 x shard 1) mesh, i.e. each "node" of
    one rank holds everything and the two replicate."""
    import torch

    torch.manual_seed(0)
    ids = torch.randint(5, 300, (4, 16))  # equal lengths: the per-rank token means average to the global one
    torch.save(ids, tmp_path / "ids.pt")
    ranks = run_two_ranks(tmp_path, tiny_model_dir, str(tmp_path / "ids.pt"), offload=False, replicas=replicas)
    for r in ranks:
        for name, shape in r["full"].items():
            split = [-(-shape[0] // 2), *shape[1:]] if replicas == 1 else list(shape)  # dim 0 split across shards
            assert r["local"][name] == split, name
    # the full weights are gathered on rank 0 only (what it saves)
    assert {k: tuple(v) for k, v in ranks[0]["state_shapes"].items()} == {k: tuple(v) for k, v in ranks[0]["full"].items()}
    assert ranks[1]["state_shapes"] == {}
    reference = reference_losses(tiny_model_dir, ids)
    for r in ranks:
        assert max(abs(a - b) for a, b in zip(r["losses"], reference)) < TOLERANCE, (r["losses"], reference)
    assert reference[-1] < reference[0]  # it learns


TRAINER_WORKER = textwrap.dedent("""
    import json, os, sys
    import torch, torch.distributed as td
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments
    model_dir, out = sys.argv[1], sys.argv[2]
    world = int(os.environ.get("WORLD_SIZE", 1))
    torch.manual_seed(0)
    ids = torch.randint(5, 300, (12, 16))
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    args = TrainingArguments(output_dir=out, per_device_train_batch_size=4 // world, max_steps=%d, logging_steps=1,
                             save_strategy="no", report_to="none", use_cpu=True, learning_rate=1e-2, disable_tqdm=True,
                             dataloader_pin_memory=False)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    if world > 1:
        from tuneforge.distributed import fsdp
        args.device  # the process group
        fsdp.prepare_for_trainer(model, fsdp.mesh(world), cpu_offload=True)
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    rank = td.get_rank() if td.is_initialized() else 0
    a = model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].weight
    json.dump({"wrapped": type(trainer.model_wrapped).__name__, "lora_a_local": list(getattr(a, "to_local", lambda: a)().shape),
               "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h]}, open(f"{out}/rank{rank}.json", "w"))
""" % STEPS)


def test_fsdp2_lora_with_cpu_offload_through_the_trainer_trains_like_one_process(tiny_model_dir, tmp_path):
    """prepare_for_trainer: the HF Trainer keeps the FSDP2 model (no DDP around it) and trains LoRA like one process
    with the same global batch (2 x 2 against 4 x 1), with parameters offloaded to the CPU."""
    script = tmp_path / "trainer_worker.py"
    script.write_text(TRAINER_WORKER)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    one = subprocess.run([sys.executable, str(script), tiny_model_dir, str(tmp_path / "one")], env=env, capture_output=True,
                         text=True, timeout=180)
    assert one.returncode == 0, one.stderr[-3000:]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", str(script),
                          tiny_model_dir, str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=180)
    assert two.returncode == 0, two.stderr[-3000:]
    ref = json.load(open(tmp_path / "one" / "rank0.json"))
    for r in range(2):
        got = json.load(open(tmp_path / "two" / f"rank{r}.json"))
        assert got["wrapped"].startswith("FSDP") and got["lora_a_local"] == [2, 32]  # lora_A (4, 32) split in two
        assert max(abs(a - b) for a, b in zip(got["losses"], ref["losses"])) < TOLERANCE, (got["losses"], ref["losses"])
    assert ref["wrapped"] == "PeftModel" and ref["lora_a_local"] == [4, 32]
