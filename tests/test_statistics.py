"""The EER against s3prl's formula, and the bootstrap intervals and paired tests."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from tera.downstream.bootstrap import (
    Items,
    draw_units,
    interval,
    paired_difference,
    read_items,
    write_items,
)
from tera.downstream.metrics import equal_error_rate, error_rate, rank_trials, token_errors
from tera.errors import UserError

from .trials import speaker_trials, trial_interval


def eer(labels, scores, weights=None) -> float:
    """`equal_error_rate` of one trial list, `weights` (if any) given in trial order."""
    ranked = rank_trials(labels, scores)
    if weights is not None:
        weights = np.asarray(weights, dtype=float)[None, ranked.order]
    return float(equal_error_rate(ranked, weights)[0])


def s3prl_eer(labels, scores) -> float:
    """s3prl's `sv_voxceleb1/utils.py` EER, written out here as the independent reference."""
    from scipy.interpolate import interp1d
    from scipy.optimize import brentq
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores, pos_label=1)
    with warnings.catch_warnings():  # interp1d divides by zero on vertical ROC steps
        warnings.simplefilter("ignore")
        return brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0)


def random_trials(rng, n):
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    scores = rng.normal(size=n) + rng.uniform(0, 3) * labels
    if rng.random() < 0.5:  # coarse scores: many ties, within and across the classes
        scores = np.round(scores * rng.integers(1, 4))
    return labels, scores


def test_equal_error_rate_agrees_with_s3prl_on_random_trial_sets():
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(500):
        labels, scores = random_trials(rng, int(rng.integers(2, 400)))
        worst = max(worst, abs(eer(labels, scores) - s3prl_eer(labels, scores)))
    assert worst < 1e-6


@pytest.mark.parametrize("labels, scores, expected", [
    ([0, 0, 1, 1], [0.3, 0.0, 0.1, 0.2], 0.5),  # the old function extrapolated to 1.0 here
    ([1, 1, 1, 0, 0, 0], [0.9, 0.8, 0.3, 0.7, 0.2, 0.1], 1 / 3),
    ([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1], 0.0),  # separated
    ([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9], 1.0),  # inverted
    ([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5], 0.5),  # all tied: the diagonal
    ([1, 0], [0.2, 0.7], 1.0),
    ([1, 1, 0, 0, 0, 0], [0.9, 0.4, 0.4, 0.4, 0.1, 0.0], 0.25),  # a tie across the classes
])
def test_equal_error_rate_edge_cases(labels, scores, expected):
    assert eer(labels, scores) == pytest.approx(expected, abs=1e-12)
    assert s3prl_eer(labels, scores) == pytest.approx(expected, abs=1e-9)


def test_equal_error_rate_refuses_what_has_no_eer():
    assert np.isnan(eer([1, 1], [0.1, 0.2]))
    with pytest.raises(ValueError, match="both target and non-target"):
        Items("eer", {"enrol": ["a", "b"], "test": ["c", "d"], "label": [1, 1],
                      "score": [0.1, 0.2], "enrol_speaker": ["s", "s"],
                      "test_speaker": ["s", "s"]}).value()
    with pytest.raises(ValueError, match="finite"):
        rank_trials([1, 0], [0.1, float("nan")])
    with pytest.raises(ValueError, match="0 .non-target. or 1"):
        rank_trials([1, 2], [0.1, 0.2])


def test_weights_count_a_trial_that_many_times():
    rng = np.random.default_rng(1)
    for _ in range(50):
        labels, scores = random_trials(rng, 60)
        weights = rng.integers(0, 4, len(labels))
        weights[:2] = 1
        repeated = np.repeat(np.arange(len(labels)), weights)
        assert eer(labels, scores, weights) == pytest.approx(
            s3prl_eer(labels[repeated], scores[repeated]), abs=1e-9)


# --- per-item statistics ---------------------------------------------------------------------


def test_items_give_the_metrics_of_the_whole_set(tmp_path):
    references, hypotheses = ["a b c", "d e", "f"], ["a x c", "d e e", ""]
    errors = [token_errors(r.split(), h.split()) for r, h in zip(references, hypotheses)]
    words = Items("error_rate", {"id": ["u1", "u2", "u3"], "errors": errors,
                                 "length": [3, 2, 1]})
    assert words.value() == error_rate(errors, [3, 2, 1])[0] == 0.5
    phones = Items("error_rate", {"id": ["a", "b"], "errors": [2, 0], "length": [4, 4]})
    assert phones.value() == 0.25
    labels, scores = random_trials(np.random.default_rng(2), 40)
    trials = Items("eer", {"enrol": [f"e{i}" for i in range(40)],
                           "test": [f"t{i}" for i in range(40)], "label": labels,
                           "score": scores, "enrol_speaker": ["s1"] * 40,
                           "test_speaker": ["s1" if y else "s2" for y in labels]})
    assert trials.value() == pytest.approx(eer(labels, scores))
    # a file round trip keeps every row, in the same order (sorted by the row's key)
    for items in (words, trials):
        write_items(tmp_path / "x_items.tsv", items)
        back = read_items(tmp_path / "x_items.tsv")
        assert back.kind == items.kind and back.keys() == items.keys()
        for name, column in items.columns.items():
            assert np.array_equal(back.columns[name], column), name
    (tmp_path / "bad.tsv").write_text("id\tsomething\nu1\t1\n")
    with pytest.raises(UserError, match="bad.tsv: not an items file"):
        read_items(tmp_path / "bad.tsv")
    with pytest.raises(UserError, match="no per-item statistics"):
        read_items(tmp_path / "missing.tsv")


def accuracy_items(correct, prefix="u") -> Items:
    return Items("accuracy", {"id": [f"{prefix}{i:05d}" for i in range(len(correct))],
                              "correct": np.asarray(correct, dtype=int)})


def test_accuracy_intervals_cover_the_truth_and_shrink_with_the_test_set():
    # 200 test sets of 300 items from a system right 70 % of the time: a 95 % interval
    # should hold 0.7 about 95 % of the time
    rng = np.random.default_rng(3)
    held = 0
    for _ in range(200):
        items = accuracy_items(rng.random(300) < 0.7)
        record = interval([items], resamples=400)
        assert record["low"] <= items.value() <= record["high"]
        held += record["low"] <= 0.7 <= record["high"]
    assert 0.88 <= held / 200 <= 0.99
    small = interval([accuracy_items(rng.random(100) < 0.7)])
    large = interval([accuracy_items(rng.random(1600) < 0.7)])
    ratio = (small["high"] - small["low"]) / (large["high"] - large["low"])
    assert 3.0 < ratio < 5.5  # width ~ 1 / sqrt(n): 4x
    assert small["unit"] == "utterance" and small["resamples"] == 1000 and small["level"] == 0.95


def test_trials_are_resampled_by_speaker():
    rng = np.random.default_rng(4)
    items = speaker_trials(rng, speakers=5, per_speaker=3)
    draws = np.array([[2, 0, 1, 3, 1]])  # how many times each of the 5 speakers is drawn
    weights = items.weights(draws)[0]
    speaker = {f"s{i}": draws[0, i] for i in range(5)}
    for w, a, b in zip(weights, items.columns["enrol_speaker"], items.columns["test_speaker"]):
        assert w == (speaker[a] if a == b else speaker[a] * speaker[b])
    assert draw_units(items, 7).shape == (7, 5) and (draw_units(items, 7).sum(1) == 5).all()
    # with speaker effects, resampling speakers sees a spread that independent trials hide
    items = speaker_trials(rng)
    by_speaker = interval([items])
    by_trial = trial_interval(items)
    assert by_speaker["low"] <= items.value() <= by_speaker["high"]
    assert by_speaker["unit"] == "speaker" and by_speaker["units"] == 40
    assert by_speaker["high"] - by_speaker["low"] > 1.3 * (by_trial[1] - by_trial[0])


def test_paired_differences():
    rng = np.random.default_rng(5)
    truth = rng.random(600) < 0.6
    better = accuracy_items(truth | (rng.random(600) < 0.25))  # right wherever truth is
    worse = accuracy_items(truth)
    gain = paired_difference([better], [worse])
    assert gain["difference"] == pytest.approx(better.value() - worse.value())
    assert gain["significant"] and 0 < gain["low"] <= gain["difference"] <= gain["high"]
    assert gain["p_value"] < 0.01
    same = paired_difference([worse], [worse])
    assert same["difference"] == same["low"] == same["high"] == 0.0 and not same["significant"]
    # pairs of equally good systems (independent errors): about 5 % found different
    found = sum(paired_difference([accuracy_items(rng.random(300) < 0.6)],
                                  [accuracy_items(rng.random(300) < 0.6)],
                                  resamples=400)["significant"] for _ in range(100))
    assert found <= 12
    # seeds: the mean of the runs, resampled together
    seeds = paired_difference([better, worse], [worse])
    assert seeds["difference"] == pytest.approx(gain["difference"] / 2)
    with pytest.raises(ValueError, match="same test items"):
        paired_difference([better], [accuracy_items(truth, prefix="v")])


def test_seeds_that_disagree_widen_the_interval():
    """Two training runs ten points apart: the interval of their mean holds that spread, and
    a gain smaller than it is not called significant, however many test items there are."""
    rng = np.random.default_rng(8)
    truth = rng.random(2000) < 0.5
    high = accuracy_items(truth | (rng.random(2000) < 0.2))   # about 60 %
    low = accuracy_items(truth & (rng.random(2000) < 0.8))    # about 40 %
    middle = accuracy_items(truth | (rng.random(2000) < 0.06))  # about 53 %
    one_test_set = interval([middle])
    two_seeds = interval([high, low])
    assert two_seeds["high"] - two_seeds["low"] > 4 * (one_test_set["high"] - one_test_set["low"])
    assert two_seeds["low"] < 0.45 and two_seeds["high"] > 0.55
    assert np.mean([high.value(), low.value()]) == pytest.approx(
        (two_seeds["low"] + two_seeds["high"]) / 2, abs=0.03)
    # middle beats the mean of the two seeds by ~3 points on 2000 items: within their spread
    assert not paired_difference([middle], [high, low])["significant"]
    # one seed alone: the same gap is significant (one test set's interval)
    assert paired_difference([middle], [low])["significant"]
    # seeds that agree do not widen it
    again = accuracy_items(truth | (rng.random(2000) < 0.06))
    agreeing = interval([middle, again])
    assert agreeing["high"] - agreeing["low"] < 1.5 * (one_test_set["high"] - one_test_set["low"])



def test_a_voxceleb1_h_sized_interval_fits_in_bounded_memory():
    """579,818 trials over 1,251 speakers must fit in 2 GB of address space; here a tenth
    of the list (57,982 trials, 125 speakers) gets a tenth of it on top of what the
    interpreter and numpy take before any work (weighting 200 resamples at once needs ~0.8 GB)."""
    import os
    import subprocess
    import sys

    from tests.paths import REPO

    script = """
import resource
from tests.trials import trial_list
status = open("/proc/self/status").read()
before = int(status.split("VmSize:")[1].split()[0]) * 1024
limit = before + 2 * 2**30 // 10
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from tera.downstream.bootstrap import interval
record = interval([trial_list(57_982, 125)])
print(record["units"], record["resamples"], record["low"] < record["high"])
"""
    path = os.pathsep.join([str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")])
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": path}, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["125", "1000", "True"]
