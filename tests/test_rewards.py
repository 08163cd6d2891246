"""Rewards for GRPO (`reward_funcs`): built-in rules on hand-made completions, Python functions by file or module,
reward-model folders, and every bad spec refused with a message naming the key."""

import json
import os
import re

import pytest

from tuneforge import TuneforgeError
from tuneforge.stages import rewards


def chat(*texts):
    """Completions as GRPOTrainer passes them for chat prompts."""
    return [[{"role": "assistant", "content": t}] for t in texts]


def built(spec):
    (fn,) = rewards.build([spec])
    return fn


def test_exact_match_compares_normalised_text_with_the_answer_column():
    fn = built("exact_match")
    got = fn(prompts=None, completions=chat(" Paris. ", "paris", "The capital is Paris", "Paris"), answer=["Paris"] * 3 + [None])
    assert got == [1.0, 1.0, 0.0, None]  # no reference: no reward (TRL ignores it)
    assert built("exact_match:label")(completions=chat("Yes", "no"), label=["yes", "yes"]) == [1.0, 0.0]


def test_contains_wants_the_reference_as_whole_words():
    fn = built("contains")
    assert fn(completions=chat("3 + 4 = 7.", "It is 17", "SEVEN or 7"), answer=["7", "7", "seven"]) == [1.0, 0.0, 1.0]


def test_regex_searches_the_stripped_completion():
    fn = built(r"regex:^\d+$")
    assert fn(completions=chat(" 42\n", "42 apples", "x\n42")) == [1.0, 0.0, 0.0]
    assert built("regex:<b>.*</b>")(completions=chat("a <b>x\ny</b> c")) == [1.0]  # DOTALL: . spans lines


def test_length_is_highest_at_the_target_word_count():
    fn = built("length:4")
    assert fn(completions=chat("one two three four", "one two", "a b c d e f g h", "")) == [1.0, 0.5, 0.5, 0.0]
    assert fn.__name__ == "length"  # GRPOTrainer logs rewards/length/mean


def test_dataset_columns_named_like_a_rule_option_do_not_override_it():
    assert built("length:2")(completions=chat("a b"), target=["x"]) == [1.0]
    assert built("contains")(completions=chat("7"), answer=["7"], column=["other"]) == [1.0]


def test_plain_text_completions_are_scored_too():
    assert built("length:2")(completions=["a b", "a b c d"]) == [1.0, 0.5]


def test_think_format_is_trls_own_rule():
    fn = built("think_format")
    assert fn(completions=chat("<think>\nhm\n</think>\n4", "4")) == [1.0, 0.0]


REWARD_PY = '''
def short_and_right(prompts, completions, answer, **kwargs):
    return [float(c[0]["content"].strip() == a) - 0.01 * len(c[0]["content"]) for c, a in zip(completions, answer)]


def no_kwargs(completions):
    return [0.0 for _ in completions]


def needs_difficulty(completions, difficulty, **kwargs):
    return [float(d) for d in difficulty]
'''


@pytest.fixture
def reward_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(REWARD_PY)
    return str(path)


def test_a_function_from_a_file_is_called_the_way_grpo_calls_rewards(reward_file):
    assert rewards.check([f"{reward_file}:short_and_right"]) == []
    fn = built(f"{reward_file}:short_and_right")
    got = fn(prompts=[[{"role": "user", "content": "2+2?"}]] * 2, completions=chat("4", "five"), completion_ids=[[1], [2]],
             answer=["4", "4"], trainer_state=None)
    assert got == pytest.approx([0.99, -0.04])


def test_a_function_from_an_installed_module():
    assert rewards.check(["trl.rewards:think_format_reward"]) == []
    fn = built("trl.rewards:think_format_reward")
    assert fn(completions=chat("<think>a</think>b")) == [1.0]


@pytest.mark.parametrize("spec, expected", [
    ("exact_macth", "not a rule.*did you mean `exact_match`"),
    ("regex", "needs a pattern"),
    ("regex:([a-z", "not a valid regular expression"),
    ("length:0", "target word count > 0"),
    ("length:many", "target word count > 0"),
    ("exact_match:not a column", "the argument is a column name"),
    ("think_format:strict", "takes no argument"),
    ("missing/rewards.py:fn", "file `missing/rewards.py` does not exist"),
    ("tuneforge_no_such_module:fn", "cannot import module `tuneforge_no_such_module`"),
])
def test_bad_specs_are_refused_naming_reward_funcs(spec, expected):
    (problem,) = rewards.check([spec])
    assert problem.startswith("reward_funcs: ")
    assert re.search(expected, problem), problem


def test_functions_that_cannot_be_called_as_rewards_are_refused(reward_file, tmp_path):
    (problem,) = rewards.check([f"{reward_file}:short_and_rigth"])
    assert "has no function `short_and_rigth`; did you mean `short_and_right`" in problem
    (problem,) = rewards.check([f"{reward_file}:no_kwargs"])
    assert "must take **kwargs" in problem
    broken = tmp_path / "broken.py"
    broken.write_text("import not_installed_anywhere\n")
    (problem,) = rewards.check([f"{broken}:f"])
    assert "importing" in problem and "ModuleNotFoundError" in problem


def test_an_empty_list_is_refused():
    (problem,) = rewards.check([])
    assert problem.startswith("reward_funcs is empty")


def test_every_bad_spec_is_reported_at_once(reward_file):
    assert len(rewards.check(["nope", f"{reward_file}:no_kwargs", "exact_match"])) == 2


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    """A tiny one-label Llama sequence classifier saved with the tiny tokenizer (what `stage: rm` saves in full)."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from conftest import make_tokenizer

    folder = str(tmp_path_factory.mktemp("rm_full"))
    tok = make_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id)
    LlamaForSequenceClassification(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_a_reward_model_folder_scores_prompt_and_completion(reward_model_dir):
    assert rewards.check([reward_model_dir]) == []
    assert rewards.model_folders([reward_model_dir, "contains"]) == [reward_model_dir]
    fn = built(reward_model_dir)
    prompts = [[{"role": "user", "content": "Who are you?"}]] * 3
    got = fn(prompts=prompts, completions=chat("I am Forge.", "Paris.", "I am Forge."), answer=[None] * 3)
    assert len(got) == 3 and all(isinstance(x, float) for x in got)
    assert got[0] == pytest.approx(got[2]) and got[0] != pytest.approx(got[1])
    assert fn.__name__ == os.path.basename(reward_model_dir)


def test_a_folder_that_is_not_a_reward_model_is_refused(tmp_path):
    causal = tmp_path / "causal"
    os.makedirs(causal)
    (causal / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (problem,) = rewards.check([str(causal)])
    assert problem.startswith("reward_funcs: ") and "not a reward model" in problem and "stage: rm" in problem


def test_columns_the_rewards_read_must_exist_in_the_data(reward_file):
    rewards.check_columns(["exact_match", f"{reward_file}:short_and_right"], ["prompt", "answer", "prompt_ids"])
    with pytest.raises(TuneforgeError, match="`exact_match:label` compares with column `label`") as e:
        rewards.check_columns(["exact_match:label"], ["prompt", "answer"])
    assert e.value.key == "reward_funcs"
    with pytest.raises(TuneforgeError, match="needs `difficulty`, which is neither a dataset column") as e:
        rewards.check_columns([f"{reward_file}:needs_difficulty"], ["prompt", "answer"])
    assert e.value.key == "reward_funcs"
