"""FSDP2 on the CPU (gloo): tuneforge.distributed.fsdp.shard really shards (each of 2 ranks holds half of every
parameter) and trains like one process with the same global batch. `tuneforge train` still refuses `fsdp` on the CPU
(see distributed/fsdp.py for why), which test_distributed.py checks."""

import json
import os
import shutil
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


RUN_TOLERANCE = 1e-4  # absolute, per-step loss and saved weights, `tuneforge train` 2 ranks vs 1 (float32; seen: < 1e-6)
RESUME_TOLERANCE = 1e-6  # absolute: a resumed FSDP run vs the uninterrupted one (same ranks, same reductions)


def train_args(model_dir, data_dir, out, *extra):
    return [f"model_name_or_path={model_dir}", "dataset=my_alpaca", f"dataset_dir={data_dir}", f"output_dir={out}",
            "template=chatml", "cutoff_len=64", "max_steps=4", "logging_steps=1", "learning_rate=1e-2", "lora_rank=4",
            "disable_tqdm=true", f"cache_dir={os.path.join(str(out), '..', 'cache')}", "allocator=system", *extra]


def train_two(model_dir, data_dir, out, *extra, **env):
    env = {**{k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")},
           "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **env}
    cmd = [sys.executable, "-m", "tuneforge.cli", "train", *train_args(model_dir, data_dir, out, "nproc_per_node=2",
                                                                      "per_device_train_batch_size=2", *extra)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout + proc.stderr


def train_one(model_dir, data_dir, out, *extra):
    """The reference: one process (in this one) with the whole global batch."""
    from tuneforge import config, run

    flat = dict(a.split("=", 1) for a in train_args(model_dir, data_dir, out, "per_device_train_batch_size=4", *extra))
    run.train(config.load(None, [f"{k}={v}" for k, v in flat.items()]))


def step_losses(out) -> dict[int, float]:
    with open(os.path.join(out, "trainer_log.jsonl")) as fh:
        return {r["step"]: r["loss"] for r in map(json.loads, fh) if "loss" in r}


def weights(out, adapter: bool) -> dict:
    from safetensors.torch import load_file

    return load_file(os.path.join(out, "adapter_model.safetensors" if adapter else "model.safetensors"))


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def run_and_check(tiny_model_dir, data_dir, tmp_path, method, fsdp):
    """A 2-process FSDP run through `tuneforge train` beside a 1-process one with the same global batch: shards,
    losses, saved weights, artifacts and events written once. Returns the 2-process output folder."""
    one, two, shapes = tmp_path / "one", tmp_path / "two", tmp_path / "shapes"
    shapes.mkdir()
    log = train_two(tiny_model_dir, data_dir, two, f"finetuning_type={method}", f"fsdp={fsdp}", "save_steps=2",
                    TUNEFORGE_TEST_SHARD_SHAPES=str(shapes))
    train_one(tiny_model_dir, data_dir, one, f"finetuning_type={method}", "save_strategy=no")
    # each rank held half of every parameter while it trained (dim 0 split in two)
    for r in (0, 1):
        held = json.load(open(shapes / f"shards-rank{r}.json"))
        assert held and all(v["local"] == [-(-v["full"][0] // 2), *v["full"][1:]] for v in held.values()), held
    a, b = step_losses(one), step_losses(two)
    assert sorted(b) == [1, 2, 3, 4] and max(abs(a[s] - b[s]) for s in a) < RUN_TOLERANCE, (a, b)
    adapter = method == "lora"
    saved = weights(two, adapter)
    assert max_diff(saved, weights(one, adapter)) < RUN_TOLERANCE
    assert max_diff(weights(two / "checkpoint-4", adapter), saved) == 0.0  # the checkpoint holds the same gathered weights
    # written once: one started/finished pair, one line per step, one `done`
    kinds = [json.loads(line)["event"] for line in open(two / "events.jsonl")]
    assert kinds.count("started") == 1 and kinds.count("finished") == 1 and kinds[-1] == "finished"
    assert [json.loads(line)["step"] for line in open(two / "trainer_log.jsonl") if '"loss"' in line] == [1, 2, 3, 4]
    assert log.count("done: train_loss=") == 1 and "FSDP2: 2 decoder layers and the root sharded over 2" in log
    # the saved folder loads as it is
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir if adapter else str(two), dtype=torch.float32)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(two))
        loaded = model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].weight
        assert torch.equal(loaded, saved["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"])
    else:
        assert torch.equal(model.model.layers[1].mlp.down_proj.weight, saved["model.layers.1.mlp.down_proj.weight"])
    return two


def test_tuneforge_train_with_fsdp_lora_shards_trains_like_one_process_and_saves_the_adapter_once(tiny_model_dir, data_dir,
                                                                                                   tmp_path):
    run_and_check(tiny_model_dir, data_dir, tmp_path, "lora", "full_shard")


def test_tuneforge_train_with_fsdp_full_offload_trains_like_one_process_and_resumes_exactly(tiny_model_dir, data_dir, tmp_path):
    """Full fine-tuning (every weight and the whole optimizer state sharded, offloaded to the CPU); then a run that
    starts from a copy of its checkpoint-2 with `auto` ends like it: the remaining losses and the final weights."""
    whole = run_and_check(tiny_model_dir, data_dir, tmp_path, "full", "full_shard offload")
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(whole / "checkpoint-2", resumed / "checkpoint-2")
    log = train_two(tiny_model_dir, data_dir, resumed, "finetuning_type=full", "fsdp=full_shard offload", "save_steps=2",
                    "resume_from_checkpoint=auto")
    assert "loaded into the shards" in log
    a, b = step_losses(whole), step_losses(resumed)
    assert sorted(b) == [3, 4] and max(abs(a[s] - b[s]) for s in b) < RESUME_TOLERANCE, (a, b)
    assert max_diff(weights(whole, False), weights(resumed, False)) < RESUME_TOLERANCE
