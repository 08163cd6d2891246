"""End to end on the real SmolLM2-135M-Instruct: the rm recipe learns a preference that cannot be read off a reply's
length (every question appears with "answer in one word" and with "answer in a full sentence", the two replies
swapped), so the untrained score head ranks held-out pairs at chance and the trained one clearly above it; the saved
folder loads back and ranks replies to new questions by their instruction."""

import os
import time

import pytest

from tuneforge import config, run
from tuneforge.models.reward import load_reward_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.e2e
STEPS = 20  # of 4 pairs: 80 of the 131 training pairs


@pytest.fixture(scope="module")
def rm_run(tmp_path_factory):
    """(output folder, held-out accuracy before training, metrics after) of the recipe cut to STEPS steps."""
    out = str(tmp_path_factory.mktemp("rm") / "run")
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        start = time.perf_counter()
        prepared = run.build(config.load("examples/rm_lora.yaml", [f"output_dir={out}", f"max_steps={STEPS}", "disable_tqdm=true"]))
        before = prepared.trainer.evaluate()["eval_accuracy"]
        metrics = run.train_and_save(prepared)
        print(f"rm: held-out accuracy {before:.3f} -> {metrics['eval_accuracy']:.3f} in {time.perf_counter() - start:.1f}s")
    finally:
        os.chdir(cwd)
    return out, before, metrics


def test_held_out_pair_accuracy_rises_from_chance_to_clearly_above_it(rm_run):
    _, before, metrics = rm_run
    assert before < 0.7, before  # length alone does not separate the pairs
    assert metrics["eval_accuracy"] >= 0.85, metrics


def test_saved_reward_model_ranks_replies_to_new_questions_by_their_instruction(rm_run):
    out, _, _ = rm_run
    rm = load_reward_model(out)
    new = [("What is the capital of Brazil?", "Brasilia.", "The capital of Brazil is Brasilia."),
           ("What colour is a fire truck?", "Red.", "A fire truck is red."),
           ("How many toes are on one foot?", "5", "There are five toes on one foot.")]

    def prefers_short(instruction: str, question: str, short: str, sentence: str) -> bool:
        ask = [{"role": "user", "content": instruction.format(q=question)}]
        short_score, sentence_score = rm.score([ask + [{"role": "assistant", "content": short}],
                                                ask + [{"role": "assistant", "content": sentence}]])
        return short_score > sentence_score

    assert all(prefers_short("{q} Answer in one word.", *row) for row in new)
    assert not any(prefers_short("Answer in a full sentence: {q}", *row) for row in new)
