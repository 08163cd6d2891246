"""Multiple-choice benchmarks from local files: MMLU's layout (`<task>/{dev,val,test}/<subject>_<split>.csv`, no
header: question, A, B, C, D, answer) and the C-Eval/CMMLU CSVs (a header row naming Question, A..D, Answer; CMMLU's
files have no `_<split>` suffix). Each question is written as the standard MMLU prompt, with `n_shot` solved examples
from the subject's dev split before it, and scored by the log-probability of each choice letter (" A", " B", ...)
after `Answer:`; the highest is the model's answer. Accuracy is reported per subject, per category (when the task
folder has a `mapping.json`: subject -> {"name", "category"}) and over every question."""

import csv
import json
import logging
import os
import string
from dataclasses import dataclass

from tuneforge import TuneforgeError

log = logging.getLogger(__name__)

SPLITS = ("dev", "val", "validation", "test", "train")  # a task name's `_<split>` suffix (mmlu_test, ceval_validation)
SPLIT_FOLDERS = {"validation": ("validation", "val"), "val": ("val", "validation")}
PROMPTS = {  # the standard MMLU prompt and C-Eval's (lang: zh)
    "en": ("The following are multiple choice questions (with answers) about {subject}.\n\n", "Answer:"),
    "zh": ("以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n", "答案："),
}
LETTERS = string.ascii_uppercase


class TaskError(TuneforgeError):
    """A multiple-choice task that cannot be read (folder, file, row), naming the key or the file and line."""

    key = "task_dir"


@dataclass
class Question:
    subject: str
    question: str
    choices: list[str]
    answer: str  # a letter: A, B, ...


@dataclass
class Task:
    """One task's split: its questions per subject, the dev examples for few-shot, and the subject mapping."""

    name: str
    folder: str
    split: str
    questions: dict[str, list[Question]]
    dev: dict[str, list[Question]]
    mapping: dict[str, dict]
    files: list[str]  # every file read, for the data hash

    def subject_name(self, subject: str) -> str:
        return self.mapping.get(subject, {}).get("name") or subject.replace("_", " ")

    def category(self, subject: str) -> str | None:
        return self.mapping.get(subject, {}).get("category")


# ---------------------------------------------------------------- files -> questions

def locate(task: str | None, task_dir: str, split: str) -> tuple[str, str, str]:
    """(task name, task folder, split) from LLaMA-Factory's `task=<name>_<split>` under `task_dir`, a task name under
    `task_dir` with `split`, or (no task) `task_dir` as the task folder itself."""
    name = task
    if task:
        stem, _, suffix = task.rpartition("_")
        if stem and suffix in SPLITS:
            name, split = stem, suffix
        folder = os.path.join(task_dir, name)
        if not os.path.isdir(folder):
            if not os.path.isdir(task_dir):
                raise TaskError(f"task_dir `{task_dir}` does not exist; point task_dir at the folder holding the task folders "
                                f"(or at one task's folder and drop `task`)")
            have = sorted(d for d in os.listdir(task_dir) if os.path.isdir(os.path.join(task_dir, d)))
            raise TaskError(f"task `{task}`: no folder `{folder}`; tasks in `{task_dir}`: {', '.join(have) or 'none'} "
                            f"(task takes <name> or <name>_<split>, e.g. mmlu_test)", key="task")
    else:
        folder = task_dir
        if not os.path.isdir(folder):
            raise TaskError(f"task_dir `{task_dir}` does not exist; give the folder holding dev/, val/ and test/ (MMLU's "
                            f"`data` folder), or its parent with task=<name>_<split>")
        name = os.path.basename(os.path.normpath(folder))
    return name, folder, split


def split_folder(folder: str, split: str) -> str | None:
    """The folder of `split` in a task folder (`validation` and `val` stand for each other), or None."""
    for candidate in SPLIT_FOLDERS.get(split, (split,)):
        path = os.path.join(folder, candidate)
        if os.path.isdir(path):
            return path
    return None


def subject_of(filename: str, split_dir: str) -> str:
    """`abstract_algebra_test.csv` -> abstract_algebra; CMMLU's `anatomy.csv` -> anatomy."""
    stem = os.path.splitext(filename)[0]
    suffix = "_" + os.path.basename(split_dir)
    return stem[: -len(suffix)] if stem.endswith(suffix) else stem


def _header(row: list[str]) -> dict[str, int] | None:
    """Column positions when `row` is a header (C-Eval: id,question,A,B,C,D,answer; CMMLU: ,Question,A,B,C,D,Answer)."""
    names = [c.strip().lower() for c in row]
    if "question" not in names or "answer" not in names or "a" not in names:
        return None
    cols = {"question": names.index("question"), "answer": names.index("answer")}
    for letter in LETTERS:
        if letter.lower() not in names:
            break
        cols[letter] = names.index(letter.lower())
    return cols


def read_csv(path: str, subject: str, need_answers: bool = True) -> list[Question]:
    """The questions of one subject file. No header: question, choices..., answer (MMLU); a header row: its named
    columns (C-Eval, CMMLU).

    Raises:
        TaskError: naming the file and line of a row with the wrong number of fields or an answer that is not one of
            its choice letters.
    """
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            rows = list(csv.reader(fh))
    except UnicodeDecodeError as e:
        raise TaskError(f"`{path}` is not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8") from None
    except csv.Error as e:
        raise TaskError(f"`{path}` is not valid CSV: {e}") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    cols = _header(rows[0]) if rows else None
    body = rows[1:] if cols else rows
    width = len(rows[0]) if rows else 0
    if cols is None:
        if width < 4:
            raise TaskError(f"`{path}` line 1 has {width} fields; an MMLU-layout row is question, A, B, C, D, answer "
                            f"(a C-Eval/CMMLU file starts with a header naming question, A..D and answer)")
        cols = {"question": 0, **{LETTERS[i]: 1 + i for i in range(width - 2)}, "answer": width - 1}
    letters = [k for k in cols if len(k) == 1]
    out = []
    for n, row in enumerate(body, 2 if rows and body is not rows else 1):
        if len(row) != width:
            raise TaskError(f"`{path}` line {n} has {len(row)} fields, not {width} like the first row; quote fields "
                            f"that hold commas (\"...\")")
        answer = row[cols["answer"]].strip().upper()
        if answer not in letters and (need_answers or answer):
            what = "no answer" if not answer else f"answer `{answer}`"
            raise TaskError(f"`{path}` line {n} has {what}; it must be one of {', '.join(letters)}"
                            + (" (C-Eval's test answers are not public: use split=val)" if not answer else ""))
        out.append(Question(subject, row[cols["question"]].strip(), [row[cols[x]].strip() for x in letters], answer))
    return out


def _read_split(split_dir: str, need_answers: bool) -> tuple[dict[str, list[Question]], list[str]]:
    files = sorted(f for f in os.listdir(split_dir) if f.lower().endswith(".csv") and not f.startswith("."))
    subjects, paths = {}, []
    for f in files:
        subject = subject_of(f, split_dir)
        path = os.path.join(split_dir, f)
        subjects[subject] = read_csv(path, subject, need_answers)
        paths.append(path)
    return subjects, paths


def load_task(task: str | None, task_dir: str, split: str, n_shot: int) -> Task:
    """Every subject of one task's split, plus its dev examples when n_shot > 0.

    Raises:
        TaskError: a missing folder or split, a split without CSV files, too few dev examples, a malformed row.
    """
    name, folder, split = locate(task, task_dir, split)
    where = split_folder(folder, split)
    if where is None:
        have = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
        raise TaskError(f"task folder `{folder}` has no `{split}` folder (it has: {', '.join(have) or 'no folders'}); set "
                        f"split (or task=<name>_<split>) to one of them", key="split")
    questions, files = _read_split(where, need_answers=True)
    if not questions:
        raise TaskError(f"`{where}` holds no .csv files; a split folder holds one <subject>_{split}.csv per subject")
    dev: dict[str, list[Question]] = {}
    if n_shot > 0:
        dev_dir = split_folder(folder, "dev")
        if dev_dir is None:
            raise TaskError(f"n_shot {n_shot} takes examples from the dev split, and `{folder}` has no dev folder; set n_shot=0 "
                            f"or add dev/<subject>_dev.csv files", key="n_shot")
        dev, dev_files = _read_split(dev_dir, need_answers=True)
        files += dev_files
        short = sorted(s for s in questions if len(dev.get(s, [])) < n_shot)
        if short:
            raise TaskError(f"n_shot {n_shot}: the dev split has fewer than {n_shot} examples for {', '.join(short[:5])}"
                            f"{' ...' if len(short) > 5 else ''}; lower n_shot", key="n_shot")
    mapping = _mapping(folder)
    return Task(name, folder, split, questions, dev, mapping, files + ([os.path.join(folder, "mapping.json")] if mapping else []))


def _mapping(folder: str) -> dict:
    path = os.path.join(folder, "mapping.json")
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as e:
        raise TaskError(f"`{path}` is not valid JSON: {e}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise TaskError(f"`{path}` must map each subject to {{\"name\": ..., \"category\": ...}}")
    return data


# ---------------------------------------------------------------- questions -> prompts

def format_question(q: Question, answer_word: str, with_answer: bool) -> str:
    lines = [q.question] + [f"{LETTERS[i]}. {c}" for i, c in enumerate(q.choices)]
    return "\n".join(lines) + f"\n{answer_word}" + (f" {q.answer}\n\n" if with_answer else "")


def prompt(task: Task, q: Question, n_shot: int, lang: str) -> str:
    """The MMLU prompt: the subject line, n_shot solved dev examples, then the question ending in `Answer:`."""
    head, answer_word = PROMPTS[lang]
    shots = task.dev.get(q.subject, [])[:n_shot]
    return (head.format(subject=task.subject_name(q.subject)) + "".join(format_question(s, answer_word, True) for s in shots)
            + format_question(q, answer_word, False))


# ---------------------------------------------------------------- scoring

def letter_ids(tokenizer, prompt_text: str, n: int) -> list[list[int]]:
    """The token ids of " A", " B", ... as they continue `prompt_text` (the prompt's tokens stay as they are)."""
    base = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    out = []
    for letter in LETTERS[:n]:
        full = tokenizer(prompt_text + " " + letter, add_special_tokens=False)["input_ids"]
        out.append(full[len(base):] if full[:len(base)] == base else tokenizer(" " + letter, add_special_tokens=False)["input_ids"])
    return out


def choice_logprobs(model, tokenizer, prompts: list[str], n_choices: list[int], batch_size: int) -> list[list[float]]:
    """For each prompt, the log-probability of each choice letter after it. Every (prompt + letter) sequence is scored
    once; a prompt whose letters are single tokens needs one sequence for all of them. Longest first, right-padded,
    in fixed batches: the same inputs give the same numbers."""
    import torch

    requests = []  # (prompt index, context ids, [(choice index, continuation ids)])
    for i, (text, n) in enumerate(zip(prompts, n_choices)):
        ctx = tokenizer(text, add_special_tokens=False)["input_ids"]
        conts = letter_ids(tokenizer, text, n)
        if all(len(c) == 1 for c in conts):
            requests.append((i, ctx, list(enumerate(conts))))
        else:
            requests += [(i, ctx, [(j, c)]) for j, c in enumerate(conts)]
    seqs_all = [ctx + (conts[0][1][:-1] if len(conts) == 1 else []) for _, ctx, conts in requests]
    order = sorted(range(len(requests)), key=lambda r: -len(seqs_all[r]))
    out = [[0.0] * n for n in n_choices]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        batch = [requests[r] for r in order[start:start + batch_size]]
        seqs = [seqs_all[r] for r in order[start:start + batch_size]]
        width = max(len(s) for s in seqs)
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        for row, (i, ctx, conts) in enumerate(batch):
            for j, cont in conts:
                first = len(ctx) - 1  # the position that predicts the continuation's first token
                out[i][j] = sum(logprobs[row, first + k, t].item() for k, t in enumerate(cont))
    return out


def evaluate_task(model, tokenizer, task: Task, n_shot: int, lang: str, batch_size: int) -> dict:
    """Accuracy per subject, per category (if the mapping gives them) and overall (every question counts once), plus
    the per-question predictions."""
    items = [(s, q) for s in sorted(task.questions) for q in task.questions[s]]
    prompts = [prompt(task, q, n_shot, lang) for _, q in items]
    scores = choice_logprobs(model, tokenizer, prompts, [len(q.choices) for _, q in items], batch_size)
    picks = [LETTERS[max(range(len(s)), key=lambda j: (s[j], -j))] for s in scores]
    right = [p == q.answer for p, (_, q) in zip(picks, items)]
    subjects: dict[str, list[bool]] = {}
    categories: dict[str, list[bool]] = {}
    for ok, (s, _) in zip(right, items):
        subjects.setdefault(s, []).append(ok)
        if task.category(s):
            categories.setdefault(task.category(s), []).append(ok)
    pct = lambda xs: round(100.0 * sum(xs) / len(xs), 2)  # noqa: E731
    return {"task": task.name, "split": task.split, "questions": len(items), "accuracy": pct(right),
            "subjects": {s: {"accuracy": pct(v), "questions": len(v)} for s, v in subjects.items()},
            "categories": {c: {"accuracy": pct(v), "questions": len(v)} for c, v in sorted(categories.items())},
            "predictions": [{"subject": s, "answer": q.answer, "prediction": p} for p, (s, q) in zip(picks, items)]}
