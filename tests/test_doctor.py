"""`tuneforge data check`: the dataset doctor reports what training will see, with the tokenizer alone."""

import json

import pytest

from conftest import write_json
from tuneforge.cli import main


def doctor(capsys, model, data, *extra, json_out=False):
    """Run `tuneforge data check` on the tiny model; returns (rc, stdout, stderr)."""
    args = ["data", "check", f"model_name_or_path={model}", f"dataset_dir={data}", "template=chatml", *extra]
    rc = main(args + (["--json"] if json_out else []))
    out, err = capsys.readouterr()
    return rc, out, err


def one_dataset(tmp_path, rows, entry=None):
    d = tmp_path / "d"
    write_json(str(d / "x.json"), rows)
    write_json(str(d / "dataset_info.json"), {"x": {"file_name": "x.json", **(entry or {})}})
    return str(d)


def test_help_prints_usage(capsys):
    assert main(["data", "--help"]) == 0
    assert "usage: tuneforge data check" in capsys.readouterr().out


def test_demo_style_data_is_counted_and_rendered_with_supervised_marks(capsys, tiny_model_dir, data_dir):
    rc, out, err = doctor(capsys, tiny_model_dir, data_dir, "dataset=my_alpaca,my_chat")
    assert rc == 0, err
    assert "== my_alpaca:" in out and "alpaca, 16 rows" in out and "rows: 16 usable, 0 bad" in out
    assert "== my_chat:" in out and "sharegpt, 8 rows" in out and "rows: 8 usable, 0 bad" in out
    # the prompt is shown plain, the reply (with its end-of-turn marker) is supervised
    assert "| <|im_start|>user\n  | Who are you?<|im_end|>" in out
    assert "[[I am Forge.<|im_end|>" in out
    assert "ok: every dataset has usable rows" in out


def test_json_report_parses_with_the_same_facts(capsys, tiny_model_dir, data_dir):
    rc, out, _ = doctor(capsys, tiny_model_dir, data_dir, "dataset=my_alpaca,my_chat", json_out=True)
    report = json.loads(out)
    assert rc == 0 and report["ok"] is True and report["cutoff_len"] == 2048
    by_name = {d["name"]: d for d in report["datasets"]}
    assert by_name["my_alpaca"]["rows"] == 16 and by_name["my_alpaca"]["format"] == "alpaca"
    assert by_name["my_chat"]["file"].endswith("chat.json") and by_name["my_chat"]["usable"] == 8
    assert len(by_name["my_chat"]["examples"]) == 2 and "[[hello<|im_end|>" in by_name["my_chat"]["examples"][0]["text"]


def test_no_model_weights_are_loaded(capsys, monkeypatch, tiny_model_dir, data_dir):
    import transformers

    def refuse(*a, **k):
        raise AssertionError("the doctor must not load model weights")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    rc, _, err = doctor(capsys, tiny_model_dir, data_dir, "dataset=my_alpaca")
    assert rc == 0, err


def test_bad_rows_are_grouped_by_reason_with_row_numbers(capsys, tmp_path, tiny_model_dir):
    rows = [{"instruction": "q", "output": "a"}, {"instruction": "q", "output": ""}, {"instruction": "q", "output": "a"},
            {"instruction": "q", "output": ""}, {"instruction": "q", "output": 5}, {"instruction": "", "output": "a"}]
    rc, out, _ = doctor(capsys, tiny_model_dir, one_dataset(tmp_path, rows), "dataset=x", json_out=True)
    d = json.loads(out)["datasets"][0]
    assert rc == 0 and (d["rows"], d["usable"], d["bad"]) == (6, 2, 4)
    reasons = {g["reason"]: g for g in d["bad_reasons"]}
    assert reasons["`output` is empty"]["count"] == 2
    assert [e["row"] for e in reasons["`output` is empty"]["examples"]] == [1, 3]
    assert [e["row"] for e in reasons["`output` must be text, not int (N)"]["examples"]] == [4]
    assert len(reasons) == 3
    rc, text, _ = doctor(capsys, tiny_model_dir, one_dataset(tmp_path, rows), "dataset=x")
    assert "bad x2: `output` is empty\n    row 1: `output` is empty\n    row 3: `output` is empty" in text


def test_a_reason_shows_its_first_three_examples(capsys, tmp_path, tiny_model_dir):
    rows = [{"instruction": "q", "output": "a"}] + [{"instruction": "q", "output": ""}] * 5
    _, out, _ = doctor(capsys, tiny_model_dir, one_dataset(tmp_path, rows), "dataset=x", json_out=True)
    group = json.loads(out)["datasets"][0]["bad_reasons"][0]
    assert group["count"] == 5 and [e["row"] for e in group["examples"]] == [1, 2, 3]


def test_length_summary_counts_truncation_and_lost_supervision(capsys, tmp_path, tiny_model_dir):
    rows = [{"instruction": "Who are you?", "output": "I am Forge."},  # 20 tokens: fits
            {"instruction": "hi", "output": "a b c d " * 20},  # 94 tokens: truncated, keeps the start of its reply
            {"instruction": "a b c d " * 20, "output": "ok"}]  # 94 tokens: truncated inside the prompt, nothing supervised
    rc, out, _ = doctor(capsys, tiny_model_dir, one_dataset(tmp_path, rows), "dataset=x", "cutoff_len=30", json_out=True)
    n = json.loads(out)["datasets"][0]["lengths"]
    assert rc == 0
    assert (n["min"], n["median"], n["max"]) == (20, 94, 94)
    assert n["truncated"] == 2 and n["no_supervised"] == 1 and n["no_supervised_rows"] == [2]
    _, text, _ = doctor(capsys, tiny_model_dir, one_dataset(tmp_path, rows), "dataset=x", "cutoff_len=30")
    assert "2 of 3 rows truncated at cutoff_len 30, 1 left with no supervised token (rows 2;" in text
    assert "<<cutoff_len: 64 more tokens dropped>>" in text  # the second example is cut where training cuts it


def test_role_tags_found_against_configured_flags_an_unknown_tag(capsys, tmp_path, tiny_model_dir):
    good = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    odd = {"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "hello"}]}
    data = one_dataset(tmp_path, [good, good, odd], {"formatting": "sharegpt"})
    rc, out, _ = doctor(capsys, tiny_model_dir, data, "dataset=x", json_out=True)
    d = json.loads(out)["datasets"][0]
    assert rc == 0 and d["usable"] == 2
    assert d["roles"]["role_field"] == "from" and d["roles"]["found"] == {"human": 3, "gpt": 2, "bot": 1}
    assert d["roles"]["configured"]["gpt"] == "assistant" and d["roles"]["unknown"] == ["bot"]
    assert d["bad_reasons"][0]["examples"][0]["row"] == 2
    _, text, _ = doctor(capsys, tiny_model_dir, data, "dataset=x")
    assert "UNKNOWN role tags: bot" in text


def test_broken_dataset_info_json_exits_2_naming_the_file(capsys, tmp_path, tiny_model_dir):
    d = tmp_path / "d"
    d.mkdir()
    (d / "dataset_info.json").write_text('{"x": {"file_name": "x.json",}')
    rc, _, err = doctor(capsys, tiny_model_dir, str(d), "dataset=x")
    assert rc == 2 and "dataset_info.json` is not valid JSON" in err and "Traceback" not in err


def test_entry_whose_file_is_missing_exits_2_naming_the_file(capsys, tmp_path, tiny_model_dir):
    d = tmp_path / "d"
    write_json(str(d / "dataset_info.json"), {"x": {"file_name": "gone.json"}})
    rc, _, err = doctor(capsys, tiny_model_dir, str(d), "dataset=x")
    assert rc == 2 and "gone.json" in err and "does not exist" in err and "Traceback" not in err


def test_a_dataset_with_no_usable_row_exits_2_after_the_report(capsys, tmp_path, tiny_model_dir, data_dir):
    data = one_dataset(tmp_path, [{"instruction": "q", "output": ""}] * 3)
    write_json(f"{data}/dataset_info.json", {"x": {"file_name": "x.json"}, "ok": {"file_name": f"{data_dir}/chat.json",
                                                                               "formatting": "sharegpt"}})
    rc, out, err = doctor(capsys, tiny_model_dir, data, "dataset=x,ok")
    assert rc == 2 and "Traceback" not in err
    assert "rows: 0 usable, 3 bad" in out and "UNUSABLE: x" in out and "rows: 8 usable" in out
    assert "dataset `x`: none of its 3 rows is usable; first problem: row 0: `output` is empty" in err


@pytest.mark.parametrize("content", ["[{\"instruction\": \"q\",", "not json at all"])
def test_an_unreadable_data_file_exits_2_naming_it(capsys, tmp_path, tiny_model_dir, content):
    d = tmp_path / "d"
    d.mkdir()
    (d / "x.json").write_text(content)
    write_json(str(d / "dataset_info.json"), {"x": {"file_name": "x.json"}})
    rc, out, err = doctor(capsys, tiny_model_dir, str(d), "dataset=x")
    assert rc == 2 and "x.json" in err and "Traceback" not in err


def test_preference_data_shows_the_pair_balance_and_flags_identical_replies_and_length_bias(capsys, tiny_model_dir, tmp_path):
    rows = [{"instruction": f"Question {i}?", "chosen": f"A long, careful and complete answer number {i}.", "rejected": "No."}
            for i in range(10)]
    rows.append({"instruction": "Same?", "chosen": "Yes.", "rejected": "Yes."})
    rows.append({"instruction": "Broken?", "chosen": ["x"], "rejected": "y"})
    data = one_dataset(tmp_path, rows, {"ranking": True, "columns": {"prompt": "instruction", "chosen": "chosen", "rejected": "rejected"}})
    rc, out, err = doctor(capsys, tiny_model_dir, data, "dataset=x", "stage=dpo")
    assert rc == 0, err
    assert "rows: 11 usable, 1 bad" in out and "row 11:" in out
    assert "pairs: 11; chosen longer in 10, rejected longer in 0" in out and "1 with identical replies" in out
    assert "may learn length instead of quality" in out
    assert "chosen:   [[A long, careful and complete answer number 0.]]" in out
    rc, out, _ = doctor(capsys, tiny_model_dir, data, "dataset=x", "stage=dpo", json_out=True)
    balance = json.loads(out)["datasets"][0]["balance"]
    assert balance["pairs"] == 11 and balance["identical_replies"] == 1 and balance["chosen_longer"] == 10


def test_kto_data_shows_desirable_and_undesirable_counts(capsys, tiny_model_dir, tmp_path):
    rows = [{"instruction": f"Q{i}?", "output": f"A{i}.", "kto_tag": True} for i in range(6)]
    data = one_dataset(tmp_path, rows, {"columns": {"prompt": "instruction", "response": "output", "kto_tag": "kto_tag"}})
    rc, out, err = doctor(capsys, tiny_model_dir, data, "dataset=x", "stage=kto")
    assert rc == 0, err
    assert "labels: 6 desirable, 0 undesirable -- only one kind: KTO needs both" in out
    assert "[[A0.]]  (desirable)" in out


def test_plain_text_data_for_pt_shows_documents_and_blocks(capsys, tiny_model_dir, tmp_path):
    rows = [{"text": "hello world " * (8 * (i + 1))} for i in range(6)] + [{"text": ""}, {"text": 5}]
    data = one_dataset(tmp_path, rows, {"columns": {"prompt": "text"}})
    rc, out, err = doctor(capsys, tiny_model_dir, data, "dataset=x", "stage=pt", "cutoff_len=16")
    assert rc == 0, err
    assert "rows: 6 usable, 1 bad" in out and "documents: 6 (1 empty rows skipped)" in out and "row 7:" in out
    assert "blocks of cutoff_len 16" in out and "longer than cutoff_len are split into pieces" in out
