"""Generation metrics under LLaMA-Factory's names, as percentages averaged over the examples:

- `bleu-4`: sentence BLEU over characters (LLaMA-Factory's unit, which also suits Chinese), with exponential
  smoothing (Chen & Cherry's method 3, as LLaMA-Factory's nltk call) and sacrebleu's effective order, so a
  prediction shorter than four characters that equals its label scores 100 (nltk scores such a match below 30).
- `rouge-1`, `rouge-2`, `rouge-l`: F-measure from Google's rouge-score over jieba tokens (words for English,
  segmented words for Chinese, punctuation its own token; case kept), as LLaMA-Factory segments them.
- `exact_match`: prediction and label equal after stripping surrounding whitespace.
"""

import importlib.util
import logging

from tuneforge import TuneforgeError

SPACE = "\u2581"  # stands for a space character, so sacrebleu keeps it as a token of its own
NAMES = ("bleu-4", "rouge-1", "rouge-2", "rouge-l", "exact_match")


PIP_NAMES = {"sacrebleu": "sacrebleu", "rouge_score": "rouge-score", "jieba": "jieba"}  # module -> pip package


def require() -> None:
    """Raise a TuneforgeError naming the pip command when a metric package is missing."""
    missing = [pip for module, pip in PIP_NAMES.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise TuneforgeError(f"generation metrics need {', '.join(missing)}: pip install 'tuneforge[eval]' (or pip install "
                             f"{' '.join(missing)})", key="predict")


def words(text: str) -> list[str]:
    """jieba's tokens of `text` without the whitespace ones: English words and punctuation, Chinese words."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return [t for t in jieba.lcut(text) if t.strip()]


class _Words:
    """rouge-score's tokenizer interface over `words`."""

    def tokenize(self, text: str) -> list[str]:
        return words(text)


def bleu4(prediction: str, label: str) -> float:
    """Character-level sentence BLEU-4 (0-100)."""
    from sacrebleu.metrics import BLEU

    chars = lambda t: " ".join(SPACE if c.isspace() else c for c in t)  # noqa: E731
    if not prediction or not label:
        return 0.0
    return BLEU(tokenize="none", smooth_method="exp", effective_order=True).sentence_score(chars(prediction), [chars(label)]).score


def rouge(prediction: str, label: str) -> dict[str, float]:
    """ROUGE-1/2/L F-measure (0-100) over jieba tokens; 0 when either side has no token."""
    from rouge_score.rouge_scorer import RougeScorer

    if not words(prediction) or not words(label):
        return {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}
    scores = RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=_Words()).score(label, prediction)
    return {"rouge-1": 100 * scores["rouge1"].fmeasure, "rouge-2": 100 * scores["rouge2"].fmeasure,
            "rouge-l": 100 * scores["rougeL"].fmeasure}


def score(prediction: str, label: str) -> dict[str, float]:
    """Every metric of one prediction against its label."""
    return {"bleu-4": bleu4(prediction, label), **rouge(prediction, label),
            "exact_match": 100.0 * (prediction.strip() == label.strip())}


def average(predictions: list[str], labels: list[str]) -> dict[str, float]:
    """The mean of each metric over the examples, rounded to 4 decimals (as LLaMA-Factory reports them)."""
    require()
    rows = [score(p, l) for p, l in zip(predictions, labels)]
    return {k: round(sum(r[k] for r in rows) / len(rows), 4) if rows else 0.0 for k in NAMES}
