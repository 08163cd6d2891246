"""Every export checks itself: probe chats go through the trained model (base + adapter) and through what was
written (the merged weights, the GGUF), and the answers, logits, special tokens and chat template are compared.

Logits are compared at every position of the trained model's greedy answer (teacher-forced), relative to the
largest first-token logit. Unquantized exports are held to a tolerance per dtype; a token that differs only where
the trained model's top two were within that tolerance is a near tie, not a mismatch. Quantized GGUFs have their
drift measured and reported, not judged. Tokenizer facts are exact: any difference is a mismatch."""

import json
import os

import numpy as np

from tuneforge import TuneforgeError

PROBES = [
    [{"role": "user", "content": "Who are you?"}],
    [{"role": "system", "content": "You are a concise assistant."}, {"role": "user", "content": "What is 2 + 3? Answer in words."}],
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."},
     {"role": "user", "content": "Now name a fruit and say why you like it."}],
]
# max |logit difference| / max |trained first-token logit| allowed, by the precision of the written weights
# (computed in float32 in every case). Measured on SmolLM2-135M: see the README's export report.
TOLERANCE = {"float32": 1e-4, "f32": 1e-4, "float16": 5e-3, "f16": 5e-3, "bfloat16": 4e-2, "bf16": 4e-2}


def load_probes(path: str) -> list[list[dict]]:
    """Probe chats from a JSON file: a list whose items are a question string or a list of {role, content} messages.

    Raises:
        TuneforgeError: naming export_probe_file when it is missing or not such a list.
    """
    if not path:
        return PROBES
    try:
        with open(path, encoding="utf-8") as fh:
            items = json.load(fh)
    except (OSError, ValueError) as err:
        raise TuneforgeError(f"export_probe_file `{path}` cannot be read as JSON ({err}); give a JSON list of questions or chats") from None
    chats = [[{"role": "user", "content": it}] if isinstance(it, str) else it for it in items] if isinstance(items, list) else None
    if not chats or not all(isinstance(c, list) and c and all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in c)
                            for c in chats):
        raise TuneforgeError(f"export_probe_file `{path}` must be a non-empty JSON list of questions (strings) or chats "
                             f"(lists of {{\"role\", \"content\"}} messages)")
    return chats


def reference(trained, probes: list[list[dict]], max_new_tokens: int) -> list[dict]:
    """The trained model's rendered prompts, prompt ids, greedy answers and teacher-forced logits, one per probe."""
    out = []
    for messages in probes:
        text = trained.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = trained.encode(text)
        answer = trained.greedy(ids, max_new_tokens)
        out.append({"messages": messages, "text": text, "ids": ids, "answer": answer,
                    "logits": trained.logits(ids + answer)[len(ids) - 1:]})
    return out


def compare_logits(ref: list[dict], side, tolerance: float | None, max_new_tokens: int) -> dict:
    """Logit error and greedy agreement of `side` against the trained model over the probes.

    `tolerance` None: measure only (a quantized export). Otherwise `problems` lists each probe whose first-token
    logits or teacher-forced greedy tokens differ beyond it."""
    first_err = all_err = 0.0
    agree = forced = near_ties = first_same = equal_answers = 0
    problems, answers = [], []
    stop_ids = side.stop_ids()
    for n, probe in enumerate(ref, 1):
        want = probe["logits"]
        got = side.logits(probe["ids"] + probe["answer"])[len(probe["ids"]) - 1:]
        picks = got.argmax(-1).tolist()
        scale = max(float(np.abs(want[0]).max()), 1e-6)
        err0 = float(np.abs(got[0] - want[0]).max()) / scale
        first_err, all_err = max(first_err, err0), max(all_err, float(np.abs(got - want).max()) / scale)
        first_same += int(got[0].argmax() == want[0].argmax())
        for j, token in enumerate(probe["answer"]):
            forced += 1
            pick = picks[j]
            if pick == token:
                agree += 1
            elif tolerance is not None and want[j][token] - want[j][pick] <= tolerance * scale:
                near_ties += 1
            elif tolerance is not None:
                problems.append(f"probe {n}: greedy token {j + 1} differs (trained {token}, exported {pick}; the trained "
                                f"model preferred its token by {(want[j][token] - want[j][pick]) / scale:.2e} of the logit scale)")
        if tolerance is not None and err0 > tolerance:
            problems.append(f"probe {n}: first-token logits differ by {err0:.2e} of the logit scale (tolerance {tolerance:.0e})")
        # teacher-forced picks that all match (and the same stop) are the greedy answer; generate only otherwise
        same = picks[:-1] == probe["answer"] and (picks[-1] in stop_ids or len(probe["answer"]) >= max_new_tokens)
        answer = probe["answer"] if same else side.greedy(probe["ids"], max_new_tokens)
        equal_answers += int(answer == probe["answer"])
        answers.append(answer)
    return {"first_token_max_logit_error": round(first_err, 7), "max_logit_error": round(all_err, 7),
            "first_token_argmax_agreement": f"{first_same}/{len(ref)}", "greedy_answers_equal": f"{equal_answers}/{len(ref)}",
            "greedy_token_agreement": round(agree / forced, 4) if forced else 1.0, "near_ties": near_ties,
            "tolerance": tolerance, "problems": problems, "answers": answers}


def compare_tokenizer(ref: list[dict], trained, written, encoder=None, stop_ids=None) -> list[str]:
    """Exact differences between the trained tokenizer and the written one: chat template (source and rendered text),
    special tokens, end-of-turn/stop ids, and the ids each probe prompt encodes to (through `encoder`'s tokenizer)."""
    problems = []
    if (trained.tokenizer.chat_template or "") != (written.tokenizer.chat_template or ""):
        problems.append("the chat template differs from the trained tokenizer's")
    for name, (want, got) in ((n, (trained.specials()[n], written.specials()[n])) for n in trained.specials()):
        if want != got:
            problems.append(f"{name} differs: trained `{want[0]}` (id {want[1]}), exported `{got[0]}` (id {got[1]})")
    want_stop, got_stop = trained.stop_ids(), stop_ids if stop_ids is not None else written.stop_ids()
    if want_stop != got_stop:
        problems.append(f"end-of-turn/stop token ids differ: trained {want_stop}, exported {got_stop}")
    encoder = encoder or written
    for n, probe in enumerate(ref, 1):
        try:
            text = written.tokenizer.apply_chat_template(probe["messages"], tokenize=False, add_generation_prompt=True)
        except Exception as err:  # a template that fails to render is a difference too
            text = f"<render failed: {err}>"
        if text != probe["text"]:
            problems.append(f"probe {n}: the chat template renders different text ({text[:80]!r}... vs {probe['text'][:80]!r}...)")
        elif encoder.encode(text) != probe["ids"]:
            problems.append(f"probe {n}: the prompt encodes to different token ids")
    return problems


def summarize(ref: list[dict], sides: dict, tokenizer, fmt: dict) -> dict:
    """The report: what was exported, each side's measurements and problems, and a verdict line."""
    problems = [f"{name}: {p}" for name, side in sides.items() for p in side["problems"]]
    probes = [{"messages": p["messages"], "trained_answer": tokenizer.decode(p["answer"], skip_special_tokens=True),
               **{f"{name}_answer": tokenizer.decode(side["answers"][i], skip_special_tokens=True) for name, side in sides.items()}}
              for i, p in enumerate(ref)]
    for side in sides.values():
        side.pop("answers")
    last = list(sides)[-1]
    s = sides[last]
    measured = (f"{s['greedy_answers_equal']} greedy answers equal the trained model's, greedy-token agreement "
                f"{s['greedy_token_agreement']:.0%}, max logit error {s['max_logit_error']:.1e} of the logit scale")
    if problems:
        verdict = f"FAIL {problems[0]}" + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else "")
    elif s["tolerance"] is None:
        verdict = f"OK {last} (quantized, drift measured): {measured}"
    else:
        verdict = f"OK {last}: {measured} (tolerance {s['tolerance']:.0e})"
    return {"verdict": verdict, "passed": not problems, **fmt, "sides": sides, "problems": problems, "probes": probes}


def write_report(report: dict, folder: str) -> str:
    path = os.path.join(folder, "export_report.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2, ensure_ascii=False)
        fh.write("\n")
    return path
