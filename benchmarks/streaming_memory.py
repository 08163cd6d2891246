"""Peak RSS of `streaming: true` SFT as the corpus grows: generated alpaca JSON Lines files of the given sizes, each
trained for the same steps (LoRA, SmolLM2-135M, batch 2, cutoff 256, buffer_size 1024) in a fresh process. Flat
means the file's size does not reach memory.

usage: python benchmarks/streaming_memory.py [--sizes-gb 0.01,1,4] [--steps 10] [--dir /tmp/tf-stream]
Prints a table, then one key=value line. The files are written once and kept in --dir (delete them afterwards).
"""

import argparse
import json
import os
import random
import tempfile

from worker import run_train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("river stone lantern orchard copper meadow signal harbor quiet velvet ember canyon whisper ledger "
         "compass tide marble falcon thistle beacon").split()


def write_corpus(path: str, size_gb: float) -> int:
    """An alpaca JSON Lines file of about `size_gb` GB (random word salad); returns its row count."""
    if os.path.exists(path) and os.path.exists(path + ".rows"):
        with open(path + ".rows") as fh:
            return int(fh.read())
    rng, rows, written = random.Random(0), 0, 0
    with open(path + ".part", "w", encoding="utf-8") as fh:
        while written < size_gb * 1e9:
            line = json.dumps({"instruction": " ".join(rng.choices(WORDS, k=rng.randint(8, 40))),
                               "input": "", "output": " ".join(rng.choices(WORDS, k=rng.randint(8, 60)))}) + "\n"
            fh.write(line)
            written += len(line)
            rows += 1
    os.replace(path + ".part", path)
    with open(path + ".rows", "w") as fh:
        fh.write(str(rows))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes-gb", default="0.01,1,4")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "tf-stream"))
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    results = []
    for size in [float(s) for s in args.sizes_gb.split(",")]:
        folder = os.path.join(args.dir, f"{size:g}gb")
        os.makedirs(folder, exist_ok=True)
        rows = write_corpus(os.path.join(folder, "corpus.jsonl"), size)
        with open(os.path.join(folder, "dataset_info.json"), "w") as fh:
            json.dump({"corpus": {"file_name": "corpus.jsonl"}}, fh)
        out = tempfile.mkdtemp(prefix="stream-run-")
        wall, res, steps = run_train(["examples/quickstart_lora_sft.yaml", "dataset=corpus", f"dataset_dir={folder}",
                                      "streaming=true", "buffer_size=1024", f"max_steps={args.steps}", "cutoff_len=256",
                                      "per_device_train_batch_size=2", "gradient_accumulation_steps=1", "logging_steps=1",
                                      "save_strategy=no", "plot_loss=false"], out, ROOT, f"{size:g} GB")
        results.append({"size_gb": size, "rows": rows, "peak_rss_gib": res["peak_rss_gib"], "wall_s": wall,
                        "first_loss": steps[0]["loss"], "last_loss": steps[-1]["loss"]})
        if len(results) == 1:
            print(f"{'corpus':>10} {'rows':>12} {'peak RSS GiB':>13} {'wall s':>8}", flush=True)
        r = results[-1]
        print(f"{r['size_gb']:>8g} GB {r['rows']:>12,} {r['peak_rss_gib']:>13.3f} {r['wall_s']:>8.1f}", flush=True)
    spread = max(r["peak_rss_gib"] for r in results) - min(r["peak_rss_gib"] for r in results)
    print(" ".join(f"rss_{r['size_gb']:g}gb={r['peak_rss_gib']:.3f}" for r in results) + f" rss_spread_gib={spread:.3f}")


if __name__ == "__main__":
    main()
