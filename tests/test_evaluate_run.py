"""`tuneforge eval` on a tiny random model: results.json with its provenance, determinism, --compare, predictions,
perplexity against the model's own loss, LLaMA-Factory eval YAMLs, bad inputs before the model loads, and
`eval_before_after` on a training run."""

import json
import math
import os

import pytest
import torch

from conftest import write_json
from test_evaluate_choice import DEV, GEO, CUS, write_csv
from tuneforge import config
from tuneforge.cli import main


@pytest.fixture
def task_dir(tmp_path):
    root = tmp_path / "evaluation" / "mini"
    write_csv(root / "test" / "geo_test.csv", GEO)
    write_csv(root / "test" / "customs_test.csv", CUS)
    write_csv(root / "dev" / "geo_dev.csv", DEV)
    write_csv(root / "dev" / "customs_dev.csv", DEV)
    return str(root)


def eval_args(model, *extra):
    return ["eval", f"model_name_or_path={model}", "template=chatml", *extra]


def test_eval_writes_results_with_provenance_is_deterministic_and_compares(tiny_model_dir, task_dir, tmp_path, capsys):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert main(eval_args(tiny_model_dir, f"task_dir={task_dir}", "n_shot=1", "batch_size=3", f"save_dir={a}")) == 0
    assert main(eval_args(tiny_model_dir, f"task_dir={task_dir}", "n_shot=1", "batch_size=1", f"save_dir={b}")) == 0
    ra, rb = (json.load(open(os.path.join(d, "results.json"))) for d in (a, b))
    assert ra["model"] == tiny_model_dir and ra["adapter"] is None and len(ra["data_sha256"]) == 64
    assert ra["settings"]["n_shot"] == 1 and ra["settings"]["task_dir"] == task_dir
    task = ra["results"]["choice"][0]
    assert task["task"] == "mini" and task["questions"] == 4 and set(task["subjects"]) == {"geo", "customs"}
    assert ra["results"]["choice"] == rb["results"]["choice"]  # another batch size, the same numbers
    assert ra["data_sha256"] == rb["data_sha256"]
    capsys.readouterr()
    assert main(["eval", "--compare", os.path.join(a, "results.json"), b]) == 0
    out = capsys.readouterr().out
    assert "mini_test accuracy" in out and "+0.00" in out and "change" in out


def test_eval_refuses_a_save_dir_holding_files_and_leaves_them(tiny_model_dir, task_dir, tmp_path, capsys):
    d = tmp_path / "kept"
    d.mkdir()
    (d / "mine.txt").write_text("keep me")
    (d / "results.json").write_text("{}")
    assert main(eval_args(tiny_model_dir, f"task_dir={task_dir}", f"save_dir={d}")) == 2
    assert "overwrite_save_dir" in capsys.readouterr().err and (d / "results.json").read_text() == "{}"
    assert main(eval_args(tiny_model_dir, f"task_dir={task_dir}", f"save_dir={d}", "overwrite_save_dir=true", "n_shot=0")) == 0
    assert (d / "mine.txt").read_text() == "keep me" and "choice" in json.loads((d / "results.json").read_text())["results"]


def test_bad_inputs_are_one_line_errors(tiny_model_dir, task_dir, tmp_path, capsys):
    assert main(eval_args(tiny_model_dir)) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
    assert main(eval_args(tiny_model_dir, f"task_dir={tmp_path}/evaluation", "task=mmlu_test")) == 2
    assert "tasks in" in capsys.readouterr().err
    assert main(eval_args(tiny_model_dir, "predict=true")) == 2
    assert "predict needs held-out rows" in capsys.readouterr().err
    assert main(["eval", "--compare", str(tmp_path / "none.json")]) == 2
    assert main(["eval", "--compare", str(tmp_path / "none.json"), str(tmp_path / "other.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_predict_generates_for_the_held_out_rows_and_scores_them(tiny_model_dir, data_dir, tmp_path):
    out = str(tmp_path / "pred")
    assert main(eval_args(tiny_model_dir, "dataset=my_alpaca", f"dataset_dir={data_dir}", "val_size=4", "predict=true",
                          "max_new_tokens=5", f"save_dir={out}")) == 0
    rows = [json.loads(x) for x in open(os.path.join(out, "generated_predictions.jsonl"))]
    assert len(rows) == 4 and all(set(r) == {"prompt", "label", "prediction"} for r in rows)
    assert all(r["prompt"].endswith("<|im_start|>assistant\n") for r in rows)
    gen = json.load(open(os.path.join(out, "results.json")))["results"]["generation"]
    assert gen["examples"] == 4 and {"bleu-4", "rouge-1", "rouge-2", "rouge-l", "exact_match"} <= set(gen)


def test_held_out_rows_are_the_rows_training_holds_out(data_dir):
    from tuneforge.data.pipeline import load_conversations, split
    from tuneforge.evaluate.generation import held_out_rows

    cfg = config.load(None, {"dataset": "my_alpaca", "dataset_dir": data_dir, "val_size": 0.25}, purpose="infer")
    rows, _ = held_out_rows(cfg.data)
    train_eval = split(load_conversations(cfg.data)[0], 0.25, cfg.data.seed)["eval"]
    assert [r["answer"] for r in rows] == [m["messages"][-1]["content"] for m in train_eval]


def test_perplexity_is_exp_of_the_models_own_mean_loss(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    docs = ["hello world a b c", "the capital of France is Paris."]
    write_json(str(tmp_path / "d" / "text.json"), [{"text": t} for t in docs])
    write_json(str(tmp_path / "d" / "dataset_info.json"), {"txt": {"file_name": "text.json", "columns": {"prompt": "text"}}})
    out = str(tmp_path / "ppl")
    assert main(eval_args(tiny_model_dir, "perplexity_dataset=txt", f"dataset_dir={tmp_path}/d", f"save_dir={out}")) == 0
    got = json.load(open(os.path.join(out, "results.json")))["results"]["perplexity"]
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    nll, n = 0.0, 0
    for t in docs:
        ids = torch.tensor([tok(t)["input_ids"] + [tok.eos_token_id]])
        with torch.no_grad():
            loss = model(input_ids=ids, labels=ids).loss.item()
        nll, n = nll + loss * (ids.shape[1] - 1), n + ids.shape[1] - 1
    assert got["tokens"] == n and got["documents"] == 2
    assert got["perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-4)


def test_a_llamafactory_eval_yaml_loads(tmp_path):
    path = tmp_path / "lf_eval.yaml"
    path.write_text("model_name_or_path: smollm2-135m-instruct\nadapter_name_or_path: saves/x\ntrust_remote_code: true\n"
                    "finetuning_type: lora\ntask: mmlu_test\ntemplate: fewshot\nlang: en\nn_shot: 5\n"
                    "save_dir: saves/eval\nbatch_size: 4\n")
    cfg = config.load(str(path), purpose="eval")
    assert (cfg.eval.task, cfg.eval.task_dir, cfg.eval.n_shot, cfg.eval.lang, cfg.eval.batch_size, cfg.eval.save_dir) == \
        ("mmlu_test", "evaluation", 5, "en", 4, "saves/eval")
    assert cfg.data.template == "auto"
    pred = config.load(None, {"predict_with_generate": True, "eval_dataset": "identity_eval"}, purpose="eval")
    assert pred.eval.predict and not pred.ignored


def test_help_keys_lists_the_eval_section(capsys):
    assert main(["train", "--help-keys"]) == 0
    out = capsys.readouterr().out
    assert "# eval" in out
    for key in ("task", "task_dir", "split", "n_shot", "lang", "batch_size", "save_dir", "predict", "eval_before_after"):
        assert f"\n  {key} (" in out
    assert "  n_shot (int; default 5) [LLaMA-Factory]" in out


def test_eval_before_after_on_a_training_run(tiny_model_dir, data_dir, task_dir, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", f"model_name_or_path={tiny_model_dir}", "dataset=my_alpaca", f"dataset_dir={data_dir}", f"output_dir={out}",
               "template=chatml", "cutoff_len=64", "per_device_train_batch_size=2", "max_steps=2", "learning_rate=1e-2",
               "save_strategy=no", "lora_rank=4", "disable_tqdm=true", f"cache_dir={tmp_path}/cache", "allocator=system",
               "eval_before_after=true", f"task_dir={task_dir}", "n_shot=0"])
    assert rc == 0
    before = json.load(open(out / "eval_before" / "results.json"))
    after = json.load(open(out / "eval_after" / "results.json"))
    assert before["adapter"] is None and after["adapter"] == str(out)
    assert before["results"]["choice"][0]["questions"] == after["results"]["choice"][0]["questions"] == 4
    printed = capsys.readouterr().out
    assert "before" in printed and "after" in printed and "mini_test accuracy" in printed
    assert (out / "eval_comparison.txt").read_text().strip() in printed


def test_a_training_problem_is_reported_before_the_first_evaluation(tiny_model_dir, data_dir, task_dir, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", f"model_name_or_path={tiny_model_dir}", "dataset=my_alpaca", f"dataset_dir={data_dir}", f"output_dir={out}",
               "template=chatml", "eval_dataset=my_alpaca", "max_steps=1", "eval_before_after=true", f"task_dir={task_dir}"])
    assert rc == 2 and "eval_dataset" in capsys.readouterr().err
    assert not (out / "eval_before").exists()


@pytest.mark.parametrize("name", ["eval_mmlu_layout.yaml", "identity_predict.yaml"])
def test_eval_recipes_load_and_name_their_command(name, monkeypatch):
    from tuneforge.evaluate import wants

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    monkeypatch.chdir(root)
    path = os.path.join("examples", "eval", name)
    cfg = config.load(path, purpose="eval")
    assert wants(cfg) in (["choice"], ["generation"])
    with open(path) as fh:
        assert fh.readline().startswith(f"# tuneforge eval {path}")
