"""Generation metrics against values worked out by hand (English and Chinese), and against nltk's BLEU (the one
LLaMA-Factory called) where the two definitions agree."""

import math

import pytest

from tuneforge.evaluate import metrics


def test_rouge_english_by_hand():
    # pred: the cat sat on the mat / label: the cat is on the mat (6 tokens each)
    # unigrams in common: the x2, cat, on, mat = 5 -> P = R = 5/6; bigrams: "the cat", "on the", "the mat" = 3 of 5;
    # longest common subsequence: the cat on the mat = 5
    got = metrics.rouge("the cat sat on the mat", "the cat is on the mat")
    assert got["rouge-1"] == pytest.approx(100 * 5 / 6)
    assert got["rouge-2"] == pytest.approx(100 * 3 / 5)
    assert got["rouge-l"] == pytest.approx(100 * 5 / 6)


def test_rouge_chinese_is_over_jieba_words():
    # jieba: 我/爱/北京/天安门 vs 我/爱/北京 -> unigrams P = 3/4, R = 1; bigrams P = 2/3, R = 1
    assert metrics.words("我爱北京天安门") == ["我", "爱", "北京", "天安门"]
    got = metrics.rouge("我爱北京天安门", "我爱北京")
    f = lambda p, r: 100 * 2 * p * r / (p + r)  # noqa: E731
    assert got["rouge-1"] == pytest.approx(f(3 / 4, 1))
    assert got["rouge-2"] == pytest.approx(f(2 / 3, 1))
    assert got["rouge-l"] == pytest.approx(f(3 / 4, 1))


def test_rouge_keeps_case_and_splits_punctuation():
    assert metrics.words("I am Forge, an AI.") == ["I", "am", "Forge", ",", "an", "AI", "."]
    assert metrics.rouge("forge", "Forge")["rouge-1"] == 0.0
    assert metrics.rouge("", "Forge") == {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}


def test_bleu_is_over_characters_by_hand():
    # abcde vs abcdf: n-gram precisions 4/5, 3/4, 2/3, 1/2; same length so no brevity penalty
    assert metrics.bleu4("abcde", "abcdf") == pytest.approx(100 * (4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25)
    # 我爱北京天安门 vs 我爱北京: precisions 4/7, 3/6, 2/5, 1/4; the prediction is longer: no penalty
    assert metrics.bleu4("我爱北京天安门", "我爱北京") == pytest.approx(100 * (4 / 7 * 3 / 6 * 2 / 5 * 1 / 4) ** 0.25)
    # shorter prediction: brevity penalty exp(1 - 5/4) on precisions 1, 1, 1, 1
    assert metrics.bleu4("abcd", "abcde") == pytest.approx(100 * math.exp(1 - 5 / 4))
    assert metrics.bleu4("5", "5") == pytest.approx(100.0)  # effective order: a short exact match is 100
    assert metrics.bleu4("", "abc") == 0.0


def test_bleu_zero_matches_are_smoothed_like_method3():
    # abcd vs abxd: 1-grams 3/4, 2-grams 1/3 (ab); the first order with no match, 3-grams 0/2, counts as 1/(2*2),
    # the next, 4-grams 0/1, as 1/(4*1)
    want = 100 * (3 / 4 * 1 / 3 * 1 / 4 * 1 / 4) ** 0.25
    assert metrics.bleu4("abcd", "abxd") == pytest.approx(want)


@pytest.mark.parametrize("pred,label", [("the cat sat on the mat", "the cat is on the mat"), ("我是一个人工智能助手", "我是人工智能助手"),
                                        ("I am Forge, built by the Tuneforge Lab.", "I am Forge, an AI assistant built by the Tuneforge Lab.")])
def test_bleu_matches_nltk_method3_on_characters(pred, label):
    nltk = pytest.importorskip("nltk.translate.bleu_score")
    want = 100 * nltk.sentence_bleu([list(label)], list(pred), smoothing_function=nltk.SmoothingFunction().method3)
    assert metrics.bleu4(pred, label) == pytest.approx(want, abs=1e-6)


def test_average_and_exact_match():
    got = metrics.average(["I am Forge.", "no"], [" I am Forge. ", "yes"])
    assert got["exact_match"] == 50.0
    assert set(got) == {"bleu-4", "rouge-1", "rouge-2", "rouge-l", "exact_match"}
    assert got["rouge-1"] == pytest.approx(50.0)


def test_missing_metric_package_names_the_pip_command(monkeypatch):
    import importlib.util

    from tuneforge import TuneforgeError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "rouge_score" else real(name, *a))
    with pytest.raises(TuneforgeError, match=r"pip install 'tuneforge\[eval\]' \(or pip install rouge-score\)"):
        metrics.require()
