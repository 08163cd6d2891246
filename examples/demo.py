"""The quickstart: LoRA-tune the embedded SmolLM2 on data/identity.json, then show answers before and after.

usage: python examples/demo.py [extra key=value overrides for tuneforge train]
Runs `tuneforge train examples/quickstart_lora_sft.yaml` exactly as a user would.
"""

import json
import os
import subprocess
import sys
import textwrap
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CONFIG = os.path.join(HERE, "quickstart_lora_sft.yaml")
OUTPUT = os.path.join(ROOT, "saves", "quickstart")


def answers(adapter=None):
    from tuneforge.infer import answer, load_for_inference

    with open(os.path.join(ROOT, "data", "identity_heldout.json")) as fh:
        questions = json.load(fh)
    model, tok = load_for_inference("smollm2-135m-instruct", adapter)
    return {q: answer(model, tok, q, max_new_tokens=40) for q in questions}


def main() -> int:
    os.chdir(ROOT)
    print("== before fine-tuning (held-out questions, greedy) ==", flush=True)
    before = answers()
    for q, a in before.items():
        print(f"  Q: {q}\n  A: {a}\n", flush=True)
    print("== training: tuneforge train examples/quickstart_lora_sft.yaml ==", flush=True)
    t0 = time.time()
    cmd = [os.path.join(os.path.dirname(sys.executable), "tuneforge"), "train", CONFIG, f"output_dir={OUTPUT}", *sys.argv[1:]]
    rc = subprocess.call(cmd)
    if rc != 0:
        print(f"training failed (exit {rc})", file=sys.stderr)
        return rc
    print(f"   trained in {time.time() - t0:.0f} s; adapter in {OUTPUT}", flush=True)
    after = answers(OUTPUT)
    print("\n== before -> after (questions never seen in training) ==")
    for q in before:
        print(f"Q: {q}")
        print(textwrap.indent(textwrap.fill(f"before: {before[q]}", 100), "  "))
        print(textwrap.indent(textwrap.fill(f"after:  {after[q]}", 100), "  "))
    with open(os.path.join(OUTPUT, "all_results.json")) as fh:
        m = json.load(fh)
    print(f"\ntrain_loss={m['train_loss']:.4f} train_tokens_per_second={m['train_tokens_per_second']} "
          f"peak_rss_gib={m['peak_rss_gib']} loss curve: {os.path.join(OUTPUT, 'training_loss.png')}")
    changed = sum(before[q] != after[q] for q in before)
    print(f"{changed} of {len(before)} answers changed")
    return 0 if changed else 1


if __name__ == "__main__":
    sys.exit(main())
