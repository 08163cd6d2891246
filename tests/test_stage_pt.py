"""Stage pt (continued pre-training): plain text packed into cutoff_len blocks where every document attends only to
itself, EOS between documents, counts and real block lengths in the stats, the cache, bad rows, .txt files, and a
short run with every registered method."""

import json
import logging
import os

import pytest
import torch

from conftest import make_tokenizer, write_json
from tuneforge import config, methods, run, stages
from tuneforge.data import text
from tuneforge.data.errors import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Documents of varied length; the last is longer than the cutoff_len the tests use (64), so it is split.
DOCS = [f"Document {i}: the capital of France is Paris. " + "Who are you? I am Forge. " * (i % 4) for i in range(12)]
DOCS.append("A long one: " + "system user assistant hello world a b c d e f g. " * 12)
CUTOFF = 64
UNPACKED_ROWS = len(DOCS) + 2  # one row per document, the long one (178 tokens with its EOS) in 3 pieces


def write_jsonl(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


@pytest.fixture
def text_dir(tmp_path):
    """A dataset folder with the documents registered LLaMA-Factory style (`columns: {prompt: text}`)."""
    d = tmp_path / "data"
    write_jsonl(d / "docs.jsonl", [{"text": t} for t in DOCS])
    write_json(str(d / "dataset_info.json"), {"docs": {"file_name": "docs.jsonl", "columns": {"prompt": "text"}}})
    return str(d)


def pt_config(model_dir, data_dir, tmp_path, **kw):
    flat = {"model_name_or_path": model_dir, "stage": "pt", "dataset": "docs", "dataset_dir": data_dir,
            "output_dir": str(tmp_path / "run"), "cutoff_len": CUTOFF, "cache_dir": str(tmp_path / "cache"),
            "per_device_train_batch_size": 2, **kw}
    return config.resolve(config.from_flat(flat), quiet=True)


def build(cfg, tokenizer=None):
    return stages.get("pt").build_data(cfg, tokenizer or make_tokenizer())


def documents_of(block) -> list[list[int]]:
    """A block's documents, cut where its position ids restart."""
    ids, pos = block["input_ids"], block["position_ids"]
    starts = [i for i, p in enumerate(pos) if p == 0] + [len(ids)]
    return [ids[a:b] for a, b in zip(starts, starts[1:])]


# ---------------------------------------------------------------- documents stay apart

@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_a_document_has_the_same_logits_packed_with_others_as_alone(tiny_model_dir, text_dir, tmp_path, attn):
    """sdpa runs the packed SDPA per document; eager gets transformers' block-diagonal mask from the position ids."""
    from tuneforge.stages.common import load_model

    cfg = pt_config(tiny_model_dir, text_dir, tmp_path, attn_implementation=attn)
    assert cfg.data.packing  # resolved on for stage pt with LoRA
    datasets, _, collator = build(cfg)
    blocks = sorted(datasets["train"], key=lambda b: -len(documents_of(b)))[:2]  # the two blocks with most documents
    assert len(documents_of(blocks[1])) >= 2
    batch = collator(blocks)
    model = load_model(cfg, tiny_model_dir).eval()
    with torch.no_grad():
        packed = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
        offset, compared = 0, 0
        for block in blocks:
            for doc in documents_of(block):
                alone = model(input_ids=torch.tensor([doc])).logits[0]
                assert (packed[offset:offset + len(doc)] - alone).abs().max().item() < 1e-5
                offset, compared = offset + len(doc), compared + 1
        assert offset == packed.shape[0] and compared >= 4
        # the same row without the per-document positions and boundaries is a different computation: the check above can fail
        joined = model(input_ids=batch["input_ids"]).logits[0]
        assert (joined - packed).abs().max().item() > 1e-3


def test_eos_ends_every_document_and_the_text_round_trips(tiny_model_dir, text_dir, tmp_path):
    tok = make_tokenizer()
    datasets, _, collator = build(pt_config(tiny_model_dir, text_dir, tmp_path), tok)
    docs = [d for b in datasets["train"] for d in documents_of(b)]
    ends = [d for d in docs if d[-1] == tok.eos_token_id]
    assert len(ends) == len(DOCS) and all(tok.eos_token_id not in d[:-1] for d in docs)  # one EOS, at each document's end
    assert {t.strip() for t in DOCS[:-1]} <= {tok.decode(d[:-1]) for d in ends}
    long_doc = len(tok(DOCS[-1])["input_ids"]) + 1
    pieces = [d for d in docs if d[-1] != tok.eos_token_id]  # the long document's pieces but its last, which ends it
    assert len(pieces) == -(-long_doc // CUTOFF) - 1 >= 1 and all(len(p) == CUTOFF for p in pieces)
    batch = collator(list(datasets["train"])[:2])
    labels, ids, pos = batch["labels"][0], batch["input_ids"][0], batch["position_ids"][0]
    assert torch.equal(labels[pos != 0], ids[pos != 0])  # loss on every token ...
    assert (labels[pos == 0] == -100).all()  # ... but a document's first, which nothing before it predicts


def test_blocks_stay_within_cutoff_len_and_the_stats_hold_their_real_lengths(tiny_model_dir, text_dir, tmp_path):
    tok = make_tokenizer()
    datasets, stats, _ = build(pt_config(tiny_model_dir, text_dir, tmp_path), tok)
    lengths = [len(b["input_ids"]) for b in datasets["train"]]
    assert max(lengths) <= CUTOFF and len(lengths) < len(DOCS)  # several documents share a block
    assert stats["train_longest"] == sorted(lengths, reverse=True)
    tokens = sum(len(tok(t.strip())["input_ids"]) + 1 for t in DOCS)  # every token kept, plus one EOS a document
    pieces = sum(len(documents_of(b)) for b in datasets["train"])
    assert stats["train_tokens"] == sum(lengths) == tokens
    assert stats["train_supervised_tokens"] == tokens - pieces
    assert (stats["train_documents"], stats["train_examples"], stats["train_documents_split"]) == (len(DOCS), len(lengths), 1)
    assert stats["datasets"]["docs"] == {"rows": len(DOCS), "documents": len(DOCS), "empty": 0, "skipped": 0,
                                         "first_skipped": None}


def test_the_memory_check_reads_the_packed_blocks(tiny_model_dir, text_dir, tmp_path):
    from tuneforge.run.memory_check import largest_batch

    cfg = pt_config(tiny_model_dir, text_dir, tmp_path)
    _, stats, _ = build(cfg)
    batch = largest_batch(cfg, stats)
    assert (batch.rows, batch.seq, batch.longest) == (1, sum(stats["train_longest"][:2]), stats["train_longest"][0])


def test_without_packing_each_row_is_one_document_padded(tiny_model_dir, text_dir, tmp_path):
    cfg = pt_config(tiny_model_dir, text_dir, tmp_path, packing=False)
    datasets, stats, collator = build(cfg)
    assert all(len(documents_of(b)) == 1 for b in datasets["train"])
    assert stats["train_examples"] == UNPACKED_ROWS
    batch = collator(list(datasets["train"])[:2])
    assert batch["input_ids"].shape[0] == 2 and "position_ids" not in batch and batch["attention_mask"].sum() < batch["input_ids"].numel()


def test_val_size_holds_out_whole_documents(tiny_model_dir, text_dir, tmp_path):
    datasets, stats, _ = build(pt_config(tiny_model_dir, text_dir, tmp_path, val_size=3))
    train = {tuple(d) for b in datasets["train"] for d in documents_of(b)}
    held = {tuple(d) for b in datasets["eval"] for d in documents_of(b)}
    assert stats["eval_documents"] == 3 and stats["train_documents"] == len(DOCS) - 3
    assert held and not train & held


def test_tokenizing_reports_progress_over_the_training_documents(tiny_model_dir, text_dir, tmp_path):
    calls = []
    stages.get("pt").build_data(pt_config(tiny_model_dir, text_dir, tmp_path, val_size=3), make_tokenizer(),
                                lambda done, total: calls.append((done, total)))
    assert calls and calls[-1] == (len(DOCS) - 3, len(DOCS) - 3)


# ---------------------------------------------------------------- cache

def test_the_cache_is_hit_on_the_second_build_and_missed_when_cutoff_len_changes(tiny_model_dir, text_dir, tmp_path, monkeypatch):
    loads = []
    real = text.load_documents
    monkeypatch.setattr(text, "load_documents", lambda *a: loads.append(1) or real(*a))
    first, _, _ = build(pt_config(tiny_model_dir, text_dir, tmp_path))
    second, _, _ = build(pt_config(tiny_model_dir, text_dir, tmp_path))
    assert len(loads) == 1 and second["train"]["input_ids"] == first["train"]["input_ids"]
    other, stats, _ = build(pt_config(tiny_model_dir, text_dir, tmp_path, cutoff_len=32))
    assert len(loads) == 2 and max(stats["train_longest"]) <= 32


def test_editing_a_txt_file_in_a_folder_misses_the_cache(tiny_model_dir, tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text("first document\nsecond document\n")
    cfg = pt_config(tiny_model_dir, str(tmp_path), tmp_path, dataset="corpus")
    _, stats, _ = build(cfg)
    (folder / "b.txt").write_text("third document\n")
    _, again, _ = build(cfg)
    assert (stats["train_documents"], again["train_documents"]) == (2, 3)


# ---------------------------------------------------------------- files and bad rows

def test_a_txt_file_is_one_document_a_line_and_blank_lines_are_counted(tiny_model_dir, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("The first document.\n\nThe second document.\n   \nThe third.\n")
    datasets, stats, _ = build(pt_config(tiny_model_dir, str(tmp_path), tmp_path, dataset=str(path)))
    assert stats["datasets"][str(path)] == {"rows": 5, "documents": 3, "empty": 2, "skipped": 0, "first_skipped": None}
    assert stats["train_documents"] == 3


def test_an_unregistered_jsonl_with_a_text_column_works(tiny_model_dir, tmp_path):
    path = write_jsonl(tmp_path / "plain.jsonl", [{"text": "one"}, {"text": "two", "source": "x"}])
    _, stats, _ = build(pt_config(tiny_model_dir, str(tmp_path), tmp_path, dataset=path))
    assert stats["train_documents"] == 2


def test_bad_rows_are_reported_and_empty_documents_counted(tiny_model_dir, tmp_path, caplog):
    rows = [{"text": "a good document"}, {"text": 42}, {"text": ""}, {"other": "no text here"}, {"text": ["a", "list"]}]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    with caplog.at_level(logging.WARNING):
        _, stats, _ = build(pt_config(tiny_model_dir, str(tmp_path), tmp_path, dataset=path))
    assert stats["datasets"][path] == {"rows": 5, "documents": 1, "empty": 2, "skipped": 2,
                                       "first_skipped": "row 1: `text` must be text, not int (42)"}
    assert "skipped 2 of 5 rows whose `text` is not text; first: row 1" in caplog.text
    with pytest.raises(DataError, match=r"row 1: `text` must be text, not int \(42\) \(strict: true"):
        build(pt_config(tiny_model_dir, str(tmp_path), tmp_path, dataset=path, strict=True))


def test_a_dataset_with_no_usable_text_names_the_dataset_and_the_column(tiny_model_dir, tmp_path):
    d = tmp_path / "data"
    write_jsonl(d / "empty.jsonl", [{"body": ""}, {"body": "  "}, {"body": 3}])
    write_json(str(d / "dataset_info.json"), {"blank": {"file_name": "empty.jsonl", "columns": {"prompt": "body"}}})
    with pytest.raises(DataError, match=r"dataset `blank` has no usable text in column `body`: 3 rows, 2 empty, 1 not text") as e:
        build(pt_config(tiny_model_dir, str(d), tmp_path, dataset="blank"))
    assert e.value.key == "dataset"


def test_a_missing_text_column_or_a_conversation_dataset_is_refused_with_the_fix(tiny_model_dir, text_dir, tmp_path):
    path = write_jsonl(tmp_path / "alpaca.jsonl", [{"instruction": "q", "output": "a"}])
    with pytest.raises(DataError, match=r"has no column `text` \(the default for stage pt\).*columns: \{prompt: <column>\}"):
        build(pt_config(tiny_model_dir, str(tmp_path), tmp_path, dataset=path))
    write_json(os.path.join(text_dir, "dataset_info.json"), {"docs": {"file_name": "docs.jsonl", "formatting": "sharegpt"}})
    with pytest.raises(DataError, match="is a sharegpt conversation dataset; stage pt reads plain text"):
        build(pt_config(tiny_model_dir, text_dir, tmp_path))


# ---------------------------------------------------------------- runs

@pytest.mark.parametrize("method", sorted(methods.METHODS))
def test_pt_trains_two_steps_with_every_method(method, tiny_model_dir, text_dir, tmp_path):
    extra = {"lisa_layers": 1} if method == "lisa" else {}
    cfg = pt_config(tiny_model_dir, text_dir, tmp_path, finetuning_type=method, max_steps=2, logging_steps=1,
                    save_strategy="no", learning_rate=1e-2, disable_tqdm=True, allocator="system", **extra)
    metrics = run.train(cfg)
    with open(tmp_path / "run" / "trainer_log.jsonl") as fh:
        losses = [json.loads(line)["loss"] for line in fh if '"loss"' in line]
    assert len(losses) == 2 and all(0 < x < 20 for x in losses)
    assert metrics["dataset_supervised_tokens"] > 0
    if not methods.get(method).packs:  # prefix/prompt tuning: one document a row, so virtual tokens precede each
        assert not cfg.data.packing and metrics["train_examples"] == UNPACKED_ROWS


def test_the_llamafactory_pt_recipe_runs_with_only_the_model_changed(tiny_model_dir, tmp_path, monkeypatch):
    """examples/pt_lora.yaml (stage pt, do_train, finetuning_type, dataset, cutoff_len, max_samples, val_size ...) on the
    tiny model; output, cache and length shortened."""
    from tuneforge.cli import main

    monkeypatch.chdir(ROOT)
    rc = main(["train", "examples/pt_lora.yaml", f"model_name_or_path={tiny_model_dir}", f"output_dir={tmp_path}/out",
               f"cache_dir={tmp_path}/cache", "max_steps=2", "logging_steps=1", "disable_tqdm=true"])
    assert rc == 0 and os.path.isfile(tmp_path / "out" / "adapter_model.safetensors")
    with open(tmp_path / "out" / "all_results.json") as fh:
        results = json.load(fh)
    assert results["eval_loss"] > 0 and results["train_examples"] < 300  # documents packed into fewer blocks


def test_a_base_model_without_a_chat_template_trains_pt(tmp_path):
    """Plain text needs no chat template: `template: auto` on a tokenizer without one is fine for pt (not for sft)."""
    from conftest import make_model_dir, make_tokenizer
    from tuneforge import config
    from tuneforge.stages.common import load_tokenizer

    import os

    folder = make_model_dir(tmp_path / "base")
    os.remove(os.path.join(folder, "chat_template.jinja"))
    make_tokenizer(chat_template=None).save_pretrained(folder)
    cfg = config.load(None, {"model_name_or_path": folder, "stage": "pt", "dataset": "x", "output_dir": "o"})
    assert not load_tokenizer(cfg, folder).chat_template
    with pytest.raises(Exception, match="no chat template"):
        load_tokenizer(config.load(None, {"model_name_or_path": folder, "dataset": "x", "output_dir": "o"}), folder)
