"""Multiple choice: the CSV layouts (MMLU without a header, C-Eval and CMMLU with one), task_dir/task resolution,
the MMLU prompt, accuracy from a fake model whose answers we choose, letter scoring against a brute-force
log-probability, and clear errors for bad inputs."""

import csv
import json
import os

import pytest
import torch

from tuneforge.evaluate import choice
from tuneforge.evaluate.choice import TaskError


def write_csv(path, rows, header=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        if header:
            w.writerow(header)
        w.writerows(rows)
    return str(path)


GEO = [["Q1 capital?", "Dun", "Pell", "Skar", "Bran", "A"], ["Q2 river?", "Orr", "Sable", "Keld", "Wythe", "B"]]
CUS = [["Q3 drink?", "tea", "mead", "beer", "milk", "C"], ["Q4 game?", "bolt", "ball", "ring", "chess", "D"]]
DEV = [["D1 ocean?", "Grey", "Amber", "Silent", "Cold", "A"], ["D2 road?", "Skar", "Pell", "Bran", "Tir", "C"]]


@pytest.fixture
def mmlu(tmp_path):
    """An MMLU-layout task folder (no header rows) with dev and test splits and a mapping.json."""
    root = tmp_path / "evaluation" / "mini"
    write_csv(root / "test" / "geo_test.csv", GEO)
    write_csv(root / "test" / "customs_test.csv", CUS)
    write_csv(root / "dev" / "geo_dev.csv", DEV)
    write_csv(root / "dev" / "customs_dev.csv", DEV)
    (root / "mapping.json").write_text(json.dumps({"geo": {"name": "geography", "category": "STEM"},
                                                   "customs": {"name": "customs", "category": "Humanities"}}))
    return str(root)


def test_mmlu_layout_without_header(mmlu):
    task = choice.load_task(None, mmlu, "test", n_shot=2)
    assert task.name == "mini" and sorted(task.questions) == ["customs", "geo"]
    q = task.questions["geo"][1]
    assert (q.question, q.choices, q.answer) == ("Q2 river?", ["Orr", "Sable", "Keld", "Wythe"], "B")
    assert len(task.dev["geo"]) == 2 and task.category("geo") == "STEM" and task.subject_name("geo") == "geography"


def test_task_under_task_dir_llamafactory_style(mmlu):
    parent = os.path.dirname(mmlu)
    task = choice.load_task("mini_test", parent, "dev", n_shot=0)  # the task name's split wins over `split`
    assert task.split == "test" and task.name == "mini" and len(task.questions["customs"]) == 2
    assert choice.load_task("mini", parent, "dev", n_shot=0).split == "dev"


def test_ceval_header_and_validation_alias(tmp_path):
    header = ["id", "question", "A", "B", "C", "D", "answer", "explanation"]
    write_csv(tmp_path / "ceval" / "val" / "law_val.csv", [["0", "法律题？", "甲", "乙", "丙", "丁", "B", ""]], header)
    task = choice.load_task("ceval_validation", str(tmp_path), "test", n_shot=0)
    q = task.questions["law"][0]
    assert (q.question, q.choices, q.answer, task.split) == ("法律题？", ["甲", "乙", "丙", "丁"], "B", "validation")


def test_cmmlu_header_and_file_without_split_suffix(tmp_path):
    header = ["", "Question", "A", "B", "C", "D", "Answer"]
    write_csv(tmp_path / "cmmlu" / "test" / "anatomy.csv", [["0", "解剖题？", "一", "二", "三", "四", "D"]], header)
    task = choice.load_task("cmmlu_test", str(tmp_path), "test", n_shot=0)
    assert list(task.questions) == ["anatomy"] and task.questions["anatomy"][0].answer == "D"


def test_mmlu_prompt_is_the_standard_one(mmlu):
    task = choice.load_task(None, mmlu, "test", n_shot=1)
    text = choice.prompt(task, task.questions["geo"][0], 1, "en")
    assert text == ("The following are multiple choice questions (with answers) about geography.\n\n"
                    "D1 ocean?\nA. Grey\nB. Amber\nC. Silent\nD. Cold\nAnswer: A\n\n"
                    "Q1 capital?\nA. Dun\nB. Pell\nC. Skar\nD. Bran\nAnswer:")
    assert choice.prompt(task, task.questions["geo"][0], 0, "zh").startswith("以下是中国关于geography考试的单项选择题")


class FakeModel(torch.nn.Module):
    """Logits we choose: after a prompt whose last question is `Qn`, the letter `answers[Qn]` is most likely."""

    def __init__(self, tokenizer, answers: dict[str, str]):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.tok, self.answers = tokenizer, answers
        self.letter_ids = {x: tokenizer(" " + x, add_special_tokens=False)["input_ids"] for x in "ABCD"}

    def forward(self, input_ids, attention_mask):
        logits = torch.zeros(*input_ids.shape, len(self.tok))
        for b in range(input_ids.shape[0]):
            n = int(attention_mask[b].sum())
            text = self.tok.decode(input_ids[b, :n])
            want = self.answers[text.rsplit("Q", 1)[1][:1]]
            for t, tok_id in enumerate(self.letter_ids[want]):
                logits[b, n - 1 - (len(self.letter_ids[want]) - 1) + t, tok_id] = 5.0  # every step of the wanted letter
        return type("Out", (), {"logits": logits})()


def test_accuracy_per_subject_category_and_overall_from_controlled_logits(mmlu, tiny_tokenizer):
    task = choice.load_task(None, mmlu, "test", n_shot=0)
    # Q1 (A) right, Q2 (B) wrong, Q3 (C) right, Q4 (D) right
    model = FakeModel(tiny_tokenizer, {"1": "A", "2": "D", "3": "C", "4": "D"})
    res = choice.evaluate_task(model, tiny_tokenizer, task, 0, "en", batch_size=3)
    assert res["accuracy"] == 75.0 and res["questions"] == 4
    assert res["subjects"] == {"customs": {"accuracy": 100.0, "questions": 2}, "geo": {"accuracy": 50.0, "questions": 2}}
    assert res["categories"] == {"Humanities": {"accuracy": 100.0, "questions": 2}, "STEM": {"accuracy": 50.0, "questions": 2}}
    assert [p["prediction"] for p in res["predictions"]] == ["C", "D", "A", "D"]  # customs first (sorted subjects)


def test_letter_scores_equal_a_brute_force_log_probability(tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    prompts = ["a b c\nAnswer:", "hello world, what is 2? 0 1 2 3 4 5 6 7 8\nAnswer:", "x\nAnswer:"]
    got = choice.choice_logprobs(model, tiny_tokenizer, prompts, [4, 4, 4], batch_size=2)
    for text, scores in zip(prompts, got):
        ctx = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
        for j, cont in enumerate(choice.letter_ids(tiny_tokenizer, text, 4)):
            ids = torch.tensor([ctx + cont])
            with torch.no_grad():
                lp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
            want = sum(lp[len(ctx) - 1 + k, t].item() for k, t in enumerate(cont))
            assert scores[j] == pytest.approx(want, abs=1e-4)


def test_missing_task_dir_unknown_task_and_missing_split(mmlu, tmp_path):
    with pytest.raises(TaskError, match="task_dir .* does not exist"):
        choice.load_task(None, str(tmp_path / "nowhere"), "test", 0)
    with pytest.raises(TaskError, match=r"task `mmlu_test`: no folder .*tasks in .*: mini") as e:
        choice.load_task("mmlu_test", os.path.dirname(mmlu), "test", 0)
    assert e.value.key == "task"
    with pytest.raises(TaskError, match="has no `val` folder .*dev, test") as e:
        choice.load_task(None, mmlu, "val", 0)
    assert e.value.key == "split"


def test_malformed_rows_name_the_file_and_line(tmp_path):
    path = write_csv(tmp_path / "t" / "test" / "x_test.csv", GEO + [["Q9 short?", "a", "b", "A"]])
    with pytest.raises(TaskError, match=r"x_test.csv` line 3 has 4 fields, not 6"):
        choice.load_task(None, str(tmp_path / "t"), "test", 0)
    write_csv(path, GEO + [["Q9?", "a", "b", "c", "d", "E"]])
    with pytest.raises(TaskError, match=r"line 3 has answer `E`; it must be one of A, B, C, D"):
        choice.load_task(None, str(tmp_path / "t"), "test", 0)
    header = ["id", "question", "A", "B", "C", "D", "answer"]
    write_csv(path, [["0", "q?", "a", "b", "c", "d", ""]], header)
    with pytest.raises(TaskError, match=r"line 2 has no answer.*use split=val"):
        choice.load_task(None, str(tmp_path / "t"), "test", 0)


def test_n_shot_needs_enough_dev_examples(mmlu, tmp_path):
    with pytest.raises(TaskError, match="fewer than 3 examples for customs, geo; lower n_shot") as e:
        choice.load_task(None, mmlu, "test", 3)
    assert e.value.key == "n_shot"
    write_csv(tmp_path / "nodev" / "test" / "x_test.csv", GEO)
    with pytest.raises(TaskError, match="has no dev folder; set n_shot=0"):
        choice.load_task(None, str(tmp_path / "nodev"), "test", 5)
