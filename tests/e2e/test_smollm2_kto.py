"""End to end on the real SmolLM2-135M-Instruct: examples/kto_lora.yaml, trained on unpaired desirable (helpful) and
undesirable (refusing) replies, raises the desirable-minus-undesirable log-probability margin on held-out questions
(data/dpo_demo_heldout.json: a helpful answer and a refusal for questions never trained on)."""

import json
import os

import pytest

from test_smollm2_dpo import held_out_scores, mean_margin, train

pytestmark = pytest.mark.e2e


def test_kto_raises_the_desirable_minus_undesirable_margin(tmp_path):
    before = held_out_scores()
    out = str(tmp_path / "kto")
    seconds = train("kto_lora.yaml", out)
    after = held_out_scores(out)
    print(f"kto: held-out margin {mean_margin(before):.2f} -> {mean_margin(after):.2f} nats; "
          f"undesirable log-prob {sum(r for _, r in before) / len(before):.2f} -> {sum(r for _, r in after) / len(after):.2f}; "
          f"trained in {seconds:.0f}s")
    assert mean_margin(after) > mean_margin(before) + 5.0  # measured: +8.3 in 6 steps
    assert sum(c > r for c, r in after) >= sum(c > r for c, r in before)
    with open(os.path.join(out, "all_results.json")) as fh:
        assert json.load(fh)["train_loss"] > 0
