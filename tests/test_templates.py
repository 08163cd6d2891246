"""Training ids equal `apply_chat_template`; the loss covers exactly the assistant replies and their end-of-turn marker."""

import pytest

from conftest import make_tokenizer
from tuneforge.data import DataError, IGNORE_INDEX, apply_template, encode

SYSTEM = [{"role": "system", "content": "You are terse."}]
TURNS = [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "I am Forge."},
         {"role": "user", "content": "And the capital of France?"}, {"role": "assistant", "content": "Paris."}]


def chat_ids(tok, messages):
    out = tok.apply_chat_template(messages, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def supervised_text(tok, ids, labels):
    return [tok.decode([i for i, l in zip(ids, labels) if l != IGNORE_INDEX])]


@pytest.fixture(params=["chatml", "llama3", "alpaca"])
def named_tok(request):
    tok = make_tokenizer(None)
    apply_template(tok, request.param)
    return tok


@pytest.mark.parametrize("messages", [TURNS[:2], TURNS, SYSTEM + TURNS], ids=["one-turn", "multi-turn", "multi-turn+system"])
def test_ids_equal_apply_chat_template_for_named_templates(named_tok, messages):
    ids, labels = encode(named_tok, messages, cutoff_len=4096)
    assert ids == chat_ids(named_tok, messages)
    assert len(labels) == len(ids)


@pytest.mark.parametrize("messages", [TURNS[:2], TURNS, SYSTEM + TURNS], ids=["one-turn", "multi-turn", "multi-turn+system"])
def test_ids_equal_apply_chat_template_for_smollm2(smollm2_dir, messages):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    ids, _ = encode(tok, messages, cutoff_len=4096)
    assert ids == chat_ids(tok, messages)


def test_loss_covers_each_assistant_reply_and_its_end_of_turn_only():
    tok = make_tokenizer("chatml")
    ids, labels = encode(tok, SYSTEM + TURNS, cutoff_len=4096)
    pieces, current = [], []
    for i, l in zip(ids, labels):
        if l != IGNORE_INDEX:
            current.append(i)
        elif current:
            pieces.append(tok.decode(current))
            current = []
    if current:
        pieces.append(tok.decode(current))
    assert pieces == ["I am Forge.<|im_end|>\n", "Paris.<|im_end|>\n"]
    assert tok.convert_tokens_to_ids("<|im_end|>") in [i for i, l in zip(ids, labels) if l != IGNORE_INDEX]


def test_smollm2_supervises_replies_and_im_end(smollm2_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    ids, labels = encode(tok, TURNS, cutoff_len=4096)
    text = tok.decode([i for i, l in zip(ids, labels) if l != IGNORE_INDEX])
    assert text == "I am Forge.<|im_end|>\nParis.<|im_end|>\n"


def test_mask_history_supervises_only_the_last_reply():
    tok = make_tokenizer("chatml")
    ids, labels = encode(tok, TURNS, cutoff_len=4096, mask_history=True)
    assert tok.decode([i for i, l in zip(ids, labels) if l != IGNORE_INDEX]) == "Paris.<|im_end|>\n"


def test_train_on_prompt_supervises_everything():
    tok = make_tokenizer("chatml")
    ids, labels = encode(tok, TURNS, cutoff_len=4096, train_on_prompt=True)
    assert labels == ids


def test_cutoff_truncates_ids_and_labels_together():
    tok = make_tokenizer("chatml")
    full_ids, full_labels = encode(tok, TURNS, cutoff_len=4096)
    ids, labels = encode(tok, TURNS, cutoff_len=20)
    assert ids == full_ids[:20] and labels == full_labels[:20]
    assert all(l in (IGNORE_INDEX, i) for i, l in zip(ids, labels))


def test_auto_template_without_one_is_refused_with_the_fix():
    with pytest.raises(DataError, match="has no chat template of its own; set `template`"):
        apply_template(make_tokenizer(None), "auto")


def test_unknown_template_gets_did_you_mean():
    with pytest.raises(DataError, match="template `chatlm` is unknown; did you mean `chatml`"):
        apply_template(make_tokenizer(None), "chatlm")


def test_llamafactory_template_name_uses_the_tokenizers_own():
    tok = make_tokenizer("chatml")
    assert apply_template(tok, "smollm2") == "tokenizer"


def test_template_that_rewrites_history_is_refused():
    tok = make_tokenizer("{% for m in messages %}{% if loop.last %}{{ m['content'] }}{% else %}X{% endif %}{% endfor %}")
    with pytest.raises(DataError, match="renders earlier turns differently"):
        encode(tok, TURNS, cutoff_len=4096)
