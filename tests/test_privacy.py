"""privacy.py: each score against an independent computation on arrays whose answer is known, and a toy pool and a
toy halves pool on the real images through the Makefile (jobs listed for xargs, resumed, scored)."""
import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys

import numpy as np
import pytest
import torch

import report
from conftest import (ARCHIVE, ROOT, assert_clean_error, call, make, make_commands, script_of,
                      write_images)
from data import make_split, subset_indices
from models import sha256_file
from studies import privacy


def reference_epsilon(pos, neg, delta=1e-5):
    """One example's epsilon the way the competition's metric.py builds it, step by step with loops: the peaky check,
    the double-threshold family on the peakier side (window as wide as its range, right bounds 100 per unit from
    its min + width - 2 to its max + 2, 400 left bounds from right - width - 2 to right - width + 2), the single
    thresholds over both, and per threshold: inf when it separates, dropped when only fpr or fnr is 0."""
    pos_diff, neg_diff = pos.max() - pos.min(), neg.max() - neg.min()
    largest, smallest = max(pos_diff, neg_diff), min(pos_diff, neg_diff)
    if smallest / largest < 0.01:
        return 50.0
    rates = []
    peaky, other = (neg, pos) if pos_diff >= neg_diff else (pos, neg)
    width = smallest
    lo, hi = peaky.min() + width - 2.0, peaky.max() + 2.0
    for right in np.linspace(lo, hi, int(np.ceil((hi - lo) * 100))):
        left = np.linspace(right - width - 2.0, right - width + 2.0, 400)[:, None]  # 400 windows at once
        tpr = ((left <= peaky) & (peaky <= right)).mean(1)
        fpr = ((left <= other) & (other <= right)).mean(1)
        rates += zip(*(rate.tolist() for rate in (tpr, 1 - tpr, fpr, 1 - fpr)))  # Python floats
    both = np.concatenate([pos, neg])
    for t in np.linspace(both.min(), both.max(), int(np.ceil((both.max() - both.min()) * 100))):
        rates.append((np.mean(pos >= t), np.mean(pos < t), np.mean(neg >= t), np.mean(neg < t)))
    eps = []
    for tpr, fnr, fpr, tnr in set(rates):  # each distinct rate once (a few dozen): the same max
        if fpr + fnr == 0 and tpr + tnr == 2:
            eps.append(math.inf)
        elif fpr * fnr == 0:
            continue
        else:
            candidates = [math.log(1 - delta - fpr) - math.log(fnr) if 1 - delta - fpr > 0 else math.nan,
                          math.log(1 - delta - fnr) - math.log(fpr) if 1 - delta - fnr > 0 else math.nan]
            defined = [c for c in candidates if not math.isnan(c)]  # np.nanmax: 10x slower
            eps.append(max(0.0, max(defined) if defined else math.nan))
    return min(max(eps), 50.0)


@pytest.mark.parametrize("seed", range(4))
def test_epsilon_equals_the_competitions_construction(seed):
    """Per example, the positive side is the one with the larger median (retrained or unlearned), and the window
    family slides over the peakier side, which is either: the seeds cover both."""
    rng = np.random.default_rng(seed)
    unlearned = rng.normal(0.8, [1.0, 2.0][seed % 2], size=(5, 3))
    retrained = rng.normal(0.0, [2.0, 1.0][seed % 2], size=(5, 3))
    expected = []
    for i in range(3):
        u, r = unlearned[:, i], retrained[:, i]
        pos, neg = (r, u) if np.median(r) > np.median(u) else (u, r)
        expected.append(reference_epsilon(pos, neg))
    assert privacy.example_epsilons(unlearned, retrained) == pytest.approx(expected, abs=1e-9)


def test_epsilon_cases_with_known_answers():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(8, 50))
    quality, eps = privacy.forget_quality(a, a.copy())  # identical distributions: no test beats chance
    assert quality == 1.0 and np.all(eps == 0)
    quality, eps = privacy.forget_quality(a + 100, a)  # perfectly separated: the cap, no points
    assert quality == 0.0 and np.all(eps == 50)
    quality, eps = privacy.forget_quality(0.001 * a, a)  # "peaky": one side's range under 1% of the other's
    assert quality == 0.0 and np.all(eps == 50)


def test_bucket_points_by_hand():
    # 8 models a side: top epsilon ceil(ln 7) = 2, so buckets [0, .5) [.5, 1) [1, 1.5) [1.5, 2) score 1, 1/2, 1/4, 1/8
    eps = [0.0, 0.49, 0.5, 0.99, 1.0, 1.49, 1.5, 1.99, 2.0, 50.0]
    assert privacy.bucket_points(eps, 8).tolist() == [1, 1, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125, 0, 0]
    assert privacy.bucket_points([0.0, 0.7, 1.2], 3).tolist() == [1, 0.5, 0]  # ceil(ln 2) = 1: two buckets


def test_logit_scaled_confidence_and_margin_by_hand():
    logits = np.array([[[2.0, 1.0, -1.0], [0.0, 3.0, 1.0]]])  # one model, two examples
    labels = np.array([0, 2])
    p = np.exp(logits[0]) / np.exp(logits[0]).sum(1, keepdims=True)
    expected = [math.log(p[0, 0] / (p[0, 1] + p[0, 2])), math.log(p[1, 2] / (p[1, 0] + p[1, 1]))]
    assert privacy.logit_scaled_confidence(logits, labels)[0] == pytest.approx(expected, rel=1e-12)
    assert privacy.margins(logits, labels)[0] == pytest.approx([2 - math.log(math.e + math.exp(-1)),
                                                                1 - math.log(1 + math.exp(3))], rel=1e-12)


def test_klom_by_hand():
    # 20 bins over [0, 1]; the top value (1.0) falls outside every bin, as in the reference's np.digitize binning:
    # p = (2/3 in bin 1, 1/3 in bin 11), q = (1/3, 2/3): KL = 2/3 ln 2 + 1/3 ln 1/2 = ln(2) / 3
    assert privacy.binned_kl(np.array([0.0, 0.0, 0.5]), np.array([0.0, 0.5, 0.5, 1.0])) == pytest.approx(
        math.log(2) / 3, rel=1e-12)
    x = np.random.default_rng(0).normal(size=(30, 4))
    assert privacy.klom(x, x.copy()) == pytest.approx(np.zeros(4), abs=1e-12)
    # q empty where p has mass: floored at 1e-5, then renormalised
    kl = privacy.binned_kl(np.array([0.0, 1.0, 0.96]), np.array([0.0, 0.0, 1.0]))
    q = np.array([1.0] + [0.0] * 18 + [1e-5])
    q /= q.sum()
    assert kl == pytest.approx(0.5 * math.log(0.5 / q[0]) + 0.5 * math.log(0.5 / q[-1]), rel=1e-12)


def reference_binned_kl(p_arr, q_arr, bin_count=20, eps=1e-5, min_val=-100, max_val=100):
    """KLOM of one example the way data-unlearning-bench's unlearning_bench/eval.py computes it
    (compute_binned_KL_div), step by step; scipy.stats.entropy(pk, qk) written out as scipy
    defines it: pk and qk divided by their sums, then the sum of rel_entr(x, y) = x log(x / y)
    for x, y > 0, 0 for x = 0, NaN for a NaN (an all-zero pk divided by its sum)."""
    p_arr, q_arr = np.clip(p_arr, min_val, max_val), np.clip(q_arr, min_val, max_val)
    bins_start, bins_end = min(p_arr.min(), q_arr.min()), max(p_arr.max(), q_arr.max())
    if bins_start >= bins_end:
        bins_end = bins_start + 1
    bins = np.linspace(bins_start, bins_end, bin_count + 1)
    p_binned, q_binned = np.digitize(p_arr, bins), np.digitize(q_arr, bins)
    p_counts = np.array([np.sum(p_binned == i) for i in range(1, bin_count + 1)])
    q_counts = np.array([np.sum(q_binned == i) for i in range(1, bin_count + 1)])
    p_total, q_total = p_counts.sum(), q_counts.sum()
    p_probs = p_counts / p_total if p_total > 0 else np.zeros(bin_count)
    q_probs = q_counts / q_total if q_total > 0 else np.zeros(bin_count)
    q_safe = np.where(p_probs > 0, np.maximum(q_probs, eps), q_probs)
    with np.errstate(invalid="ignore", divide="ignore"):
        pk, qk = p_probs / p_probs.sum(), q_safe / q_safe.sum()
    total = 0.0
    for x, y in zip(pk, qk):  # scipy.special.rel_entr
        if math.isnan(x) or math.isnan(y):
            total += math.nan
        elif x > 0 and y > 0:
            total += x * math.log(x / y)
        elif x != 0 or y < 0:
            total += math.inf
    return total


def klom_margins(models=3, seed=0):
    """(unlearned, retrained): models x examples margins, with the cases at the clip edge: margins
    beyond +-100 (clipped), every unlearned margin past the top edge or equal to the largest of
    both (the unlearned histogram is empty: examples 30 and 31), some unlearned margins at the
    top edge (left out of the bins) with others below, all equal (one bin of width 1), every
    retrained margin at the top edge (its histogram empty: floored at 1e-5)."""
    rng = np.random.default_rng(seed)
    cases = [(rng.normal(0, 80, models), rng.normal(0, 80, models)) for _ in range(30)]
    q = rng.normal(0, 5, models)
    cases += [(rng.uniform(100, 300, models), rng.normal(0, 5, models)),  # undefined
              (np.full(models, q.max() + 3), q),  # undefined
              (np.r_[150.0, rng.normal(0, 5, models - 1)], rng.normal(0, 5, models)),
              (np.full(models, 2.0), np.full(models, 2.0)),
              (rng.normal(0, 5, models), np.full(models, 120.0)),
              (rng.uniform(-300, -100, models), rng.normal(-99, 2, models)),
              (rng.normal(100, 1, models), rng.normal(100, 1, models))]
    return np.stack([u for u, _ in cases], 1), np.stack([r for _, r in cases], 1)


def test_klom_equals_the_reference_and_is_undefined_where_it_is():
    """Equal to the reference's construction on every defined example, the clip edge included; an
    example whose unlearned histogram is empty is NaN there (scipy's entropy of an all-zero pk)
    and NaN here: before, our KL was 0, the best score, where nothing was measured."""
    unlearned, retrained = klom_margins()
    ours = privacy.klom(unlearned, retrained)
    reference = np.array([reference_binned_kl(unlearned[:, i], retrained[:, i])
                          for i in range(unlearned.shape[1])])
    assert np.flatnonzero(np.isnan(reference)).tolist() == [30, 31]
    assert np.array_equal(np.isnan(ours), np.isnan(reference))
    defined = ~np.isnan(reference)
    assert ours[defined] == pytest.approx(reference[defined], rel=1e-12, abs=1e-15)
    assert (reference[defined] > 0).sum() > 30  # the cases are not all trivial


def margin_logits(margin):
    """Two-class logits whose margin (KLOM's statistic) is `margin`, labels 0."""
    logits = np.stack([margin, np.zeros_like(margin)], -1).astype(np.float32)
    return logits, np.zeros(margin.shape[-1], dtype=np.int64)


def test_the_scores_count_and_name_the_undefined_examples_and_leave_them_out():
    """score_group: the KLOM quantiles of the forget set are over its defined examples (as the
    reference's, NaN removed), the undefined ones are named by their dataset index and counted in
    the summary and the report; a set where none is defined has no quantiles, never a NaN or 0."""
    unlearned, retrained = klom_margins()
    examples = unlearned.shape[1]
    rng = np.random.default_rng(1)
    forget = np.concatenate([unlearned, retrained, retrained])  # ours: models 0-2; theirs: 3-5
    everything_undefined = np.concatenate([np.full((3, 4), 200.0), rng.normal(0, 1, (6, 4))])
    sets = {"forget": margin_logits(forget), "retain": margin_logits(rng.normal(3, 1, (9, 5))),
            "test": margin_logits(everything_undefined)}
    index = {"forget": 1000 + np.arange(examples), "retain": np.arange(5),
             "test": 7 + np.arange(4)}
    outputs = [{"forget_class": np.int64(-1), **{f"{s}_logits": sets[s][0][m] for s in sets},
                **{f"{s}_labels": sets[s][1] for s in sets},
                **{f"{s}_index": index[s] for s in sets}} for m in range(9)]
    group = {"models": [f"s{m}" for m in range(3)], "seconds": [1.0] * 3, "forget_class": -1,
             "outputs": outputs[:3], **{s: (sets[s][0][:3], sets[s][1]) for s in sets}}
    reference = {"models": [f"s{m}" for m in range(6)],
                 **{s: (sets[s][0][3:], sets[s][1]) for s in sets}}
    scores = privacy.score_group(group, reference)
    kl = np.array([reference_binned_kl(unlearned[:, i], retrained[:, i]) for i in range(examples)])
    assert scores["klom_undefined"] == {"forget": [1030, 1031], "retain": [],
                                        "test": [7, 8, 9, 10]}
    assert scores["klom_quantiles"]["forget"] == pytest.approx(
        np.quantile(kl[~np.isnan(kl)], privacy.QUANTILES).tolist(), rel=1e-12)
    assert scores["klom_quantiles"]["test"] is None
    assert len(scores["klom_quantiles"]["retain"]) == 5
    json.dumps(scores, allow_nan=False)  # no NaN reaches scores.json
    line = privacy.format_scores({"groups": {"ssd": scores}})
    assert "KLOM median forget / retain / test" in line and " / -" in line
    assert "KLOM undefined for 2 forget, 4 test examples, left out" in line
    assert report.klom_cell(scores, "forget").endswith(" (2 undefined)")
    assert report.klom_cell(scores, "test") == "- (4 undefined)"


@pytest.mark.parametrize("shift", [0.0, 2.0])
def test_ulira_on_gaussians_with_a_known_shift(shift):
    # equal-variance Gaussians d apart: the likelihood-ratio test's accuracy is Phi(d / 2), its TPR at FPR f is
    # Phi(d - z_(1 - f)); 400 models a side, 200 fitted and 200 targets, 50 examples
    rng = np.random.default_rng(1)
    unlearned, retrained = rng.normal(shift, 1.0, size=(400, 50)), rng.normal(0.0, 1.0, size=(400, 50))
    result = privacy.ulira(unlearned, retrained)
    phi = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))
    assert result["acc"] == pytest.approx(100 * phi(shift / 2), abs=1.5)
    assert result["tpr_at_1%"] == pytest.approx(100 * phi(shift - 2.3263), abs=3)
    assert result["models"] == [200, 200, 200, 200]


def reference_ulira_halves(stat, inside, outside, halves):
    """U-LiRA in the paper's design, written out with loops: for every target model and every example it forgot
    or never saw, the shadow values are those of the models of the other halves that forgot it / never saw it;
    with 2 or more on each side, two Gaussians (mean, population std floored at 1e-3) give the log likelihood ratio
    of the target's value. Accuracy at ratio 0 = the mean of TPR and TNR; TPR at FPR f: the threshold is the
    (1 - f) quantile of the non-members' ratios taken at the next higher rank."""
    def logpdf(v, values):
        mu, sd = statistics.fmean(values), max(statistics.pstdev(values), 1e-3)
        return -0.5 * ((v - mu) / sd) ** 2 - math.log(sd) - 0.5 * math.log(2 * math.pi)
    members, others, skipped = [], [], 0
    for m in range(stat.shape[0]):
        for x in range(stat.shape[1]):
            if not (inside[m, x] or outside[m, x]):
                continue
            shadows = [i for i in range(stat.shape[0]) if halves[i] != halves[m]]
            ins = [stat[i, x] for i in shadows if inside[i, x]]
            outs = [stat[i, x] for i in shadows if outside[i, x]]
            if len(ins) < 2 or len(outs) < 2:
                skipped += 1
                continue
            ratio = logpdf(stat[m, x], ins) - logpdf(stat[m, x], outs)
            (members if inside[m, x] else others).append(ratio)
    def tpr_at(f):
        threshold = sorted(others)[math.ceil((1 - f) * (len(others) - 1))]
        return 100 * sum(r > threshold for r in members) / len(members)
    acc = 50 * (sum(r > 0 for r in members) / len(members) + sum(r <= 0 for r in others) / len(others))
    return {"acc": acc, "tpr_at_1%": tpr_at(0.01), "tpr_at_0.1%": tpr_at(0.001), "pairs": [len(members), len(others)],
            "skipped": skipped}


def halves_design(n_halves, draws, examples, shift, seed):
    """A random halves design: every half holds a random half of the examples, each of its `draws` models forgot
    a random half of that; a model's statistic is the example's own level, + shift where it forgot it, + noise."""
    rng = np.random.default_rng(seed)
    level = rng.normal(0, 2, examples)
    halves = np.repeat(np.arange(n_halves), draws)
    half = np.repeat(rng.random((n_halves, examples)) < 0.5, draws, axis=0)
    inside = half & (rng.random(half.shape) < 0.5)
    stat = level + shift * inside + rng.normal(0, 1, half.shape)
    return stat, inside, ~half, halves


@pytest.mark.parametrize("seed", [0, 1])
def test_ulira_halves_equals_the_attack_written_out(seed):
    stat, inside, outside, halves = halves_design(6, 3, 40, 1.5, seed)
    ours = privacy.ulira_halves(stat, inside, outside, halves)
    reference = reference_ulira_halves(stat, inside, outside, halves)
    assert ours["pairs"] == reference["pairs"] and ours["skipped"] == reference["skipped"] and ours["skipped"] > 0
    for key in ("acc", "tpr_at_1%", "tpr_at_0.1%"):
        assert ours[key] == pytest.approx(reference[key], abs=1e-9)
    assert ours["halves"] == 6 and ours["models"] == 18


@pytest.mark.parametrize("shift", [0.0, 2.0])
def test_ulira_halves_on_gaussians_with_a_known_shift(shift):
    # equal-variance Gaussians d apart: accuracy Phi(d / 2), TPR at FPR f Phi(d - z_(1 - f)); 40 halves x 5 draws
    stat, inside, outside, halves = halves_design(40, 5, 30, shift, 2)
    result = privacy.ulira_halves(stat, inside, outside, halves)
    phi = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))
    assert result["acc"] == pytest.approx(100 * phi(shift / 2), abs=2)
    assert result["tpr_at_1%"] == pytest.approx(100 * phi(shift - 2.3263), abs=4)


def test_ulira_halves_holds_each_half_out_of_its_own_fit():
    # 4 halves of 2 models. Example 0: forgotten by halves 0 and 1, never seen by 2 and 3: every pair attacked.
    # Example 1: forgotten by half 0 only: half 0's own models are not shadows of themselves, so its 2 pairs are
    # not attacked (0 shadow values inside); the 6 pairs of halves 1-3 are, as non-members.
    halves = np.repeat(np.arange(4), 2)
    inside = np.array([[1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0]], bool).T
    outside = ~inside
    stat = np.where(inside, 5.0, 0.0) + np.tile([0.0, 0.2], 4)[:, None]
    result = privacy.ulira_halves(stat, inside, outside, halves)
    assert result["pairs"] == [4, 10] and result["skipped"] == 2 and result["acc"] == 100.0
    alone = privacy.ulira_halves(stat[:2], inside[:2], outside[:2], halves[:2])  # one half: nothing to fit on
    assert alone["pairs"] == [0, 0] and alone["skipped"] == 4 and alone["acc"] is None


def logits_with_accuracy(models, examples, correct, classes=3, seed=0):
    """Logits whose argmax is the label on the first `correct` examples of every model, labels all 0."""
    logits = np.random.default_rng(seed).normal(size=(models, examples, classes)).astype(np.float32)
    logits[:, :correct, 0] = 10
    logits[:, correct:, 0] = -10
    return logits, np.zeros(examples, dtype=np.int64)


def test_the_utility_factor_is_the_accuracy_ratios():
    # group: retain 80%, test 50%; reference: 100% and 100% -> the factor is 0.8 * 0.5
    group = {"models": [str(m) for m in range(6)], "seconds": [1.0] * 6, "forget_class": -1,
             "forget": logits_with_accuracy(6, 10, 5), "retain": logits_with_accuracy(6, 10, 8),
             "test": logits_with_accuracy(6, 10, 5)}
    group["outputs"] = [{"forget_class": np.int64(-1), **{f"{s}_logits": group[s][0][m] for s in privacy.GROUPS},
                         **{f"{s}_labels": group[s][1] for s in privacy.GROUPS},
                         **{f"{s}_index": np.arange(10) for s in privacy.GROUPS}}
                        for m in range(6)]
    reference = {**group, "retain": logits_with_accuracy(6, 10, 10), "test": logits_with_accuracy(6, 10, 10)}
    scores = privacy.score_group(group, reference)
    assert scores["utility"] == pytest.approx(0.8 * 0.5) and scores["score"] == pytest.approx(0.4 * scores["forget_quality"])
    assert scores["spread"]["retain_acc"] == {"mean": 80.0, "std": 0.0, "n": 6}
    with pytest.raises(ValueError, match="N >= 6"):
        privacy.score_group({**group, "models": group["models"][:4]}, {**reference, "models": group["models"][:4]})


# ----------------------------------------------------------------------------- the jobs of a pool

DATA = ["--dataset", "d", "--data-dir", "c d"]  # every command's flags (a space: quoted for sh)


def jobs(pool, *flags, data=DATA):
    """privacy.py jobs' lines for a pool, in this process."""
    r = call("studies/privacy.py", "jobs", pool, *flags, "--", *data)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def run_lines(lines):
    """Run each command line of privacy.py jobs in this process (split as sh would, the script's
    main called): the commands a user runs, without a Python start-up (about 4 s) each."""
    for line in lines:
        words = shlex.split(line)
        words = words[2:] if words[0] == "env" else words  # env PYTHONPATH=...: listed elsewhere
        r = call(*script_of(words[1:]))
        assert r.returncode == 0, line + "\n" + r.stdout[-2000:] + r.stderr[-2000:]


# The commands of the Makefile's old rules (842b7f3: $(TRAIN) ... --seed $* --out $@, unlearn.py
# ... --seed <k, or the draw j> --no-eval --out $@ $(EXTRA_<method>), privacy.py outputs ...), in
# stages, for 2 models a group (2 halves x 2 draws), groups original, retrain and ssd,
# --train-flags "--epochs 3", --unlearn-flags "--lr 0.1". P is the pool; every command gets the
# data flags after the script, written out by `expected`.
SEED_POOL_LINES = r"""
train.py --epochs 3 --resume --wait --seed 0 --out P/original/s0.pth
train.py --epochs 3 --resume --wait --seed 1 --out P/original/s1.pth
train.py --epochs 3 --resume --wait --forget-class cat --seed 0 --out P/retrain/s0.pth
train.py --epochs 3 --resume --wait --forget-class cat --seed 1 --out P/retrain/s1.pth
unlearn.py --method ssd --wait --model P/original/s0.pth --forget-class cat --seed 0 \
  --no-eval --out P/ssd/s0.pth --lr 0.1
unlearn.py --method ssd --wait --model P/original/s1.pth --forget-class cat --seed 1 \
  --no-eval --out P/ssd/s1.pth --lr 0.1
privacy.py outputs --forget-class cat --model P/original/s0.pth --out P/original/s0.npz
privacy.py outputs --forget-class cat --model P/original/s1.pth --out P/original/s1.npz
privacy.py outputs --forget-class cat --model P/retrain/s0.pth --out P/retrain/s0.npz
privacy.py outputs --forget-class cat --model P/retrain/s1.pth --out P/retrain/s1.npz
privacy.py outputs --forget-class cat --model P/ssd/s0.pth --out P/ssd/s0.npz
privacy.py outputs --forget-class cat --model P/ssd/s1.pth --out P/ssd/s1.npz
"""
HALVES_POOL_LINES = r"""
train.py --epochs 3 --resume --wait --keep-half 0 --seed 0 --out P/original/h0.pth
train.py --epochs 3 --resume --wait --keep-half 1 --seed 1 --out P/original/h1.pth
train.py --epochs 3 --resume --wait --keep-half 0 --forget-fraction 0.5 --forget-seed 0 \
  --seed 0 --out P/retrain/h0_f0.pth
train.py --epochs 3 --resume --wait --keep-half 0 --forget-fraction 0.5 --forget-seed 1 \
  --seed 0 --out P/retrain/h0_f1.pth
train.py --epochs 3 --resume --wait --keep-half 1 --forget-fraction 0.5 --forget-seed 0 \
  --seed 1 --out P/retrain/h1_f0.pth
train.py --epochs 3 --resume --wait --keep-half 1 --forget-fraction 0.5 --forget-seed 1 \
  --seed 1 --out P/retrain/h1_f1.pth
unlearn.py --method ssd --wait --model P/original/h0.pth --keep-half 0 --forget-fraction 0.5 \
  --forget-seed 0 --seed 0 --no-eval --out P/ssd/h0_f0.pth --lr 0.1
unlearn.py --method ssd --wait --model P/original/h0.pth --keep-half 0 --forget-fraction 0.5 \
  --forget-seed 1 --seed 1 --no-eval --out P/ssd/h0_f1.pth --lr 0.1
unlearn.py --method ssd --wait --model P/original/h1.pth --keep-half 1 --forget-fraction 0.5 \
  --forget-seed 0 --seed 0 --no-eval --out P/ssd/h1_f0.pth --lr 0.1
unlearn.py --method ssd --wait --model P/original/h1.pth --keep-half 1 --forget-fraction 0.5 \
  --forget-seed 1 --seed 1 --no-eval --out P/ssd/h1_f1.pth --lr 0.1
privacy.py outputs --keep-half 0 --model P/original/h0.pth --out P/original/h0.npz
privacy.py outputs --keep-half 1 --model P/original/h1.pth --out P/original/h1.npz
privacy.py outputs --keep-half 0 --forget-fraction 0.5 --forget-seed 0 \
  --model P/retrain/h0_f0.pth --out P/retrain/h0_f0.npz
privacy.py outputs --keep-half 0 --forget-fraction 0.5 --forget-seed 1 \
  --model P/retrain/h0_f1.pth --out P/retrain/h0_f1.npz
privacy.py outputs --keep-half 1 --forget-fraction 0.5 --forget-seed 0 \
  --model P/retrain/h1_f0.pth --out P/retrain/h1_f0.npz
privacy.py outputs --keep-half 1 --forget-fraction 0.5 --forget-seed 1 \
  --model P/retrain/h1_f1.pth --out P/retrain/h1_f1.npz
privacy.py outputs --keep-half 0 --forget-fraction 0.5 --forget-seed 0 \
  --model P/ssd/h0_f0.pth --out P/ssd/h0_f0.npz
privacy.py outputs --keep-half 0 --forget-fraction 0.5 --forget-seed 1 \
  --model P/ssd/h0_f1.pth --out P/ssd/h0_f1.npz
privacy.py outputs --keep-half 1 --forget-fraction 0.5 --forget-seed 0 \
  --model P/ssd/h1_f0.pth --out P/ssd/h1_f0.npz
privacy.py outputs --keep-half 1 --forget-fraction 0.5 --forget-seed 1 \
  --model P/ssd/h1_f1.pth --out P/ssd/h1_f1.npz
"""


def expected(text, pool):
    """The command lines of SEED_POOL_LINES or HALVES_POOL_LINES, listed from the checkout: the
    interpreter, the core script's path (or -m studies.privacy and its subcommand), the data flags,
    the rest as written; P/ is the pool folder."""
    lines = []
    for command in text.replace("\\\n", " ").strip().splitlines():
        script, *words = command.split()
        start = ([sys.executable, "-m", "studies.privacy", words.pop(0)] if script == "privacy.py"
                 else [sys.executable, os.path.join(ROOT, script)])
        words = [f"{pool}{w[1:]}" if w.startswith("P/") else w for w in words]
        lines.append(shlex.join([*start, *DATA, *words]))
    return lines


@pytest.mark.parametrize("halves", [False, True])
def test_jobs_are_the_pools_commands_in_order_and_finished_ones_drop_out(tmp_path, monkeypatch,
                                                                         halves):
    """privacy.py jobs prints every command of a pool, exactly the old Make rules' flags, file
    names and seeds (SEED_POOL_LINES, HALVES_POOL_LINES), each model's input made by a line of an
    earlier stage (--stage prints one stage; the stages in order are the whole list); a finished
    checkpoint's command, and outputs whose stamp names their finished model, drop out; the lines
    run under sh as they read (a pool folder with a space and a quote)."""
    monkeypatch.chdir(ROOT)  # listed from the checkout, as make lists them
    pool = tmp_path / "my pool's"
    design = (["--halves", "--draws", 2, "--forget-fraction", 0.5] if halves else
              ["--forget-class", "cat"])
    flags = [*design, "--n", 2, "--groups", "original", "retrain", "ssd",
             "--train-flags", "--epochs 3", "--unlearn-flags", "--lr 0.1"]
    lines = jobs(pool, *flags)
    assert lines == expected(HALVES_POOL_LINES if halves else SEED_POOL_LINES, pool)
    stages = {stage: jobs(pool, *flags, "--stage", stage) for stage in privacy.STAGES}
    assert sum(stages.values(), []) == lines and all(stages.values())
    made = {}  # out -> its stage's position
    for position, stage in enumerate(privacy.STAGES):
        for line in stages[stage]:
            argv = shlex.split(line)
            if "--model" in argv:  # its input: the output of a line of an earlier stage
                assert made[argv[argv.index("--model") + 1]] < position, line
            made[argv[argv.index("--out") + 1]] = position

    first = "h0" if halves else "s0"
    model = pool / "original" / f"{first}.pth"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"weights")
    sidecar = pool / "original" / f"{first}.json"
    sidecar.write_text(json.dumps({"sha256": "another checkpoint's"}))
    assert jobs(pool, *flags) == lines  # a sidecar of another file: not finished
    sidecar.write_text(json.dumps({"sha256": sha256_file(model)}))
    now = jobs(pool, *flags)
    assert now == [line for line in lines if not line.endswith(shlex.quote(str(model)))]
    stamp = {"source": np.array(str(model)), "split_sha256": np.array("x")}
    npz = model.with_suffix(".npz")
    np.savez(npz, **stamp, source_sha256=np.array("an earlier file's"))
    assert jobs(pool, *flags) == now  # outputs of another model file: made again
    np.savez(npz, **stamp, source_sha256=np.array(sha256_file(model)))
    assert jobs(pool, *flags) == [line for line in now if not line.endswith(shlex.quote(str(npz)))]
    assert len(jobs(pool, *flags)) == len(lines) - 2

    echo = tmp_path / "args"  # an interpreter that prints its arguments, one a line
    echo.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    echo.chmod(0o755)
    for line in jobs(pool, *flags, "--python", echo)[-2:]:
        r = subprocess.run(["sh", "-c", line], capture_output=True, text=True, check=True)
        assert r.stdout.splitlines() == shlex.split(line)[1:] and str(pool) in r.stdout


def test_jobs_spread_devices_and_refuse_what_they_set(tmp_path):
    lines = jobs(tmp_path, "--n", 3, "--forget-fraction", 0.1, "--devices", "cuda:0", "cuda:1",
                 "--stage", "models")
    devices = [shlex.split(line)[shlex.split(line).index("--device") + 1] for line in lines]
    assert devices == ["cuda:0", "cuda:1"] * 3

    def refused(*flags, data=DATA):
        return call("studies/privacy.py", "jobs", tmp_path, "--n", 2, *flags, "--", *data)
    assert_clean_error(refused("--forget-class", "cat", data=[*DATA, "--seed", "3"]),
                       "--seed after --: jobs sets it")
    assert_clean_error(refused("--forget-class", "cat", "--train-flags=--out=x.pth"),
                       "--out=x.pth --train-flags")
    assert_clean_error(refused("--forget-class", "cat", "--devices", "cpu",
                               data=[*DATA, "--device", "cpu"]), "--device after --")
    assert_clean_error(refused(), "give the pool's forget set")
    assert_clean_error(refused("--forget-class", "cat", "--draws", 2), "give --halves too")
    assert_clean_error(refused("--halves", "--forget-class", "cat"), "give --forget-fraction")
    assert_clean_error(refused("--forget-class", "cat", "--groups", "sisa"),
                       "--groups sisa: a group is")
    assert not os.listdir(tmp_path)  # listing writes nothing


POOL_CASE = ("--n", 1, "--forget-class", "cat", "--python", "/bin/true")  # J02's flags
X = ["--dataset", "x"]


@pytest.mark.parametrize("where, pool, flags, data", [
    ("the pool folder", "p\nid>PWNED #", [], X),  # J02 itself
    ("the pool folder", "p\x85id>PWNED", [], X),  # NEL: a line break to str.splitlines
    ("--python", "p", ["--python", "/bin/true\nid>PWNED #"], X),
    ("--forget-class", "p", ["--forget-class", "cat\rid>PWNED #"], X),
    ("--train-flags", "p", ["--train-flags", "--lr '0.1\nid>PWNED #'"], X),
    ("--unlearn-flags", "p", ["--groups", "ssd", "--unlearn-flags", "--lr '1\u2028id>PWNED'"], X),
    ("--devices", "p", ["--devices", "cpu\x0bid>PWNED"], X),
    ("after --", "p", [], ["--dataset", "x\nid>PWNED #"]),
    ("after --", "p", [], ["--dataset", "x\x1b[2Aid>PWNED"]),  # an escape sequence
])
def test_a_word_with_a_line_break_never_becomes_a_command(tmp_path, monkeypatch, where, pool,
                                                          flags, data):
    """J02: a newline (or any control character or line separator) in any word of a jobs line is
    refused in one line naming the flag, and nothing is printed: run as make's run_jobs runs the
    lines (xargs -d '\\n' -I{} sh -c {}), nothing runs. Before, shlex.join kept the newline
    inside its quotes and xargs ran the second half: `id>PWNED`."""
    monkeypatch.chdir(tmp_path)
    r = call("studies/privacy.py", "jobs", pool, *POOL_CASE, *flags, "--", *data)
    assert_clean_error(r, where)
    assert "line break or control character" in r.stderr and len(r.stderr.splitlines()) == 1
    (tmp_path / "lines").write_text(r.stdout)
    with open(tmp_path / "lines") as lines:
        subprocess.run(["xargs", "-d", "\n", "-I{}", "sh", "-c", "{}"], stdin=lines,
                       capture_output=True, cwd=tmp_path)
    assert r.stdout == "" and not [f for f in os.listdir(tmp_path) if f.startswith("PWNED")]


def test_every_jobs_line_is_one_whole_command(tmp_path, monkeypatch):
    """Quotes, spaces, $() and non-ASCII letters in the words are kept, each line read back by
    shlex is one command (interpreter, script, one --out) and the lines are as many as the
    commands counted."""
    monkeypatch.chdir(ROOT)
    pool = tmp_path / "my pool's $(id) `x` é"
    r = call("studies/privacy.py", "jobs", pool, "--n", 2, "--forget-class", "ça va", "--groups",
             "original", "retrain", "ssd", "--train-flags", "--lr '0.1 x'", "--",
             "--dataset", "d\"a t'a")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 12 and f": {len(lines)} commands to run" in r.stderr
    for line in lines:
        words = shlex.split(line)
        assert (words[:2] == [sys.executable, os.path.join(ROOT, words[1])] or
                words[:4] == [sys.executable, "-m", "studies.privacy", "outputs"])
        assert words.count("--out") == 1
        assert words[words.index("--out") + 1].startswith(str(pool)) and "d\"a t'a" in words


@pytest.mark.slow  # a new process: 2 s
def test_lines_listed_outside_the_checkout_find_its_scripts(tmp_path, monkeypatch):
    """privacy.py runs as `python -m studies.privacy`, which finds the module from the current
    folder: listed from another folder, an outputs line puts the checkout on PYTHONPATH itself
    (env), and runs there under sh with no PYTHONPATH of its own (the script's one-line error for
    a model not made yet, not 'No module named studies'); the core scripts go by their path."""
    monkeypatch.chdir(tmp_path)
    lines = jobs("p", "--n", 1, "--forget-class", "cat", "--groups", "original",
                 data=["--dataset", "d"])
    train, outputs = map(shlex.split, lines)
    assert train[:2] == [sys.executable, os.path.join(ROOT, "train.py")]
    assert outputs[:6] == ["env", f"PYTHONPATH={ROOT}", sys.executable, "-m", "studies.privacy",
                           "outputs"]
    bare = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run(["sh", "-c", lines[1]], capture_output=True, text=True, cwd=tmp_path,
                       env=bare, timeout=300)
    assert r.returncode == 1 and "No module named" not in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.slow
def test_the_make_targets_print_privacy_jobs_lines(tmp_path):
    """pool-jobs, pool-unlearn-jobs, ulira-jobs and ulira-unlearn-jobs print what privacy.py jobs
    prints for the variables users pass (N, CLASS, FRACTION, METHOD, DRAWS, the folders, ARCH,
    EPOCHS, TRAIN_FLAGS, EXTRA, EXTRA_<method>, DEVICES); STAGE= prints one stage. make runs
    one of them; the others' commands are read from make -n and run in this process."""
    settings = ["N=2", "DRAWS=3", "CLASS=dog", "METHOD=neggrad+", "ARCH=resnet20", "EPOCHS=7",
                "TRAIN_FLAGS=--batch-size 16 --lr '0.05'", "EXTRA=--subset 10",
                "EXTRA_neggradplus=--epochs 2", "DATASET=d", "DATA_DIR=c",
                f"POOL_DIR={tmp_path}/p", f"ULIRA_DIR={tmp_path}/u", "DEVICES=cpu cuda:1"]
    # one target run by make itself (its recipe under sh, its stdout exactly the lines); the
    # other three as make -n lists them, run in this process: 3 interpreter starts fewer
    listed = [call(*command) for command in
              make_commands("pool-jobs", "pool-unlearn-jobs", "ulira-jobs", *settings)]
    assert [x.returncode for x in listed] == [0, 0, 0], [x.stderr for x in listed]
    r = make("ulira-unlearn-jobs", *settings, threads=1)
    assert r.returncode == 0, r.stderr
    common = ["--n", 2, "--python", sys.executable,
              "--train-flags=--arch resnet20 --epochs 7 --batch-size 16 --lr 0.05",
              "--unlearn-flags=--epochs 2", "--devices", "cpu", "cuda:1"]
    data = ["--dataset", "d", "--data-dir", "c", "--subset", "10"]
    seeds = [tmp_path / "p", "--forget-class", "dog"]
    halves = [tmp_path / "u", "--halves", "--draws", 3, "--forget-fraction", 0.1]
    expected = [*jobs(*seeds, *common, "--groups", "original", "retrain", data=data),
                *jobs(*seeds, *common, "--groups", "neggrad+", data=data),
                *jobs(*halves, *common, "--groups", "original", "retrain", data=data),
                *jobs(*halves, *common, "--groups", "neggrad+", data=data)]
    assert sum((x.stdout.splitlines() for x in listed), []) == expected[:-14]
    assert r.stdout.splitlines() == expected[-14:] and len(expected) == 8 + 6 + 16 + 14
    assert "--lr 0.05" in expected[0] and "--forget-fraction 0.1" in expected[-1]
    assert all("--epochs 2" in line for line in expected if "unlearn.py" in line)
    dry = make("-n", "pool-jobs", "ulira-unlearn-jobs", "STAGE=unlearn", *settings, threads=1)
    dry = dry.stdout.splitlines()
    assert len(dry) == 2
    assert all("-m studies.privacy jobs" in x and "--stage unlearn" in x for x in dry)


@pytest.mark.slow
def test_a_toy_pool_on_real_images(cifar_jpeg, data_dir, tmp_path):
    """N = 6 resnet20s trained with and without cat (30 images a class, 4 epochs: enough to tell
    cats seen from cats never seen), SSD from each original: privacy.py jobs' commands for seeds
    0..4 (and retrain 5) run in this process, then make pool-unlearn N=6 makes original 5 (its
    models stage), SSD from it and SSD's outputs through xargs, the finished models untouched; jobs
    then lists only what pool-unlearn leaves (the new original's outputs), then nothing; the scores
    put retrain-vs-retrain well above original-vs-retrain."""
    pool = tmp_path / "pool"
    # 4 epochs, measured 2026-12-08 with torch on 2 threads / 1 (the 1: pool-unlearn's make at one
    # thread too): forget quality 0.35 / 0.42 for retrain, 0.0 / 0.0 for original; U-LiRA on
    # original 91.7 / 90.0; the originals' forget accuracy 3.3 / 3.3 on average against 0.0 (5
    # epochs, 2 threads: 0.38, 0.0, 92.2)
    design = ["--forget-class", "cat",
              "--train-flags", "--arch resnet20 --epochs 4 --batch-size 32"]
    data = ["--dataset", ARCHIVE, "--data-dir", data_dir, "--device", "cpu",
            "--subset", 30, "--test-subset", 10]  # forget, retain logits: bitwise those of 20
    groups = ["--groups", "original", "retrain", "ssd"]
    lines = jobs(pool, *design, "--n", 5, *groups, data=data)
    assert len(lines) == 10 + 5 + 15  # trainings, SSD, outputs
    assert not any("/s5." in line for line in lines)
    run_lines(lines + jobs(pool, *design, "--n", 6, "--groups", "retrain", data=data))
    before = {path: path.stat().st_mtime_ns for path in pool.glob("*/s*")}
    settings = ["N=6", "ARCH=resnet20", "EPOCHS=4", "TRAIN_FLAGS=--batch-size 32", "DEVICE=cpu",
                f"DATASET={ARCHIVE}", f"DATA_DIR={data_dir}", "EXTRA=--subset 30 --test-subset 10",
                "CLASS=cat", "METHOD=ssd", f"POOL_DIR={pool}", "JOBS=2"]
    r = make("pool-unlearn", *settings, threads=2)  # one job a stage here: both cores to each
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert {path: path.stat().st_mtime_ns for path in before} == before  # finished: untouched
    left = jobs(pool, *design, "--n", 6, *groups, data=data)
    assert len(left) == 1 and left[0].endswith(str(pool / "original" / "s5.npz")), left
    run_lines(left)
    assert jobs(pool, *design, "--n", 6, *groups, data=data) == []
    for group in ("original", "retrain", "ssd"):
        endings = ("pth", "npz", "pth.json") + (("log.jsonl",) if group != "ssd" else ())
        expected = sorted(f"s{k}.{e}" for k in range(6) for e in endings)
        assert sorted(os.listdir(pool / group)) == expected
    ssd = [torch.load(pool / "ssd" / f"s{k}.pth", weights_only=True)["fc.weight"] for k in range(6)]
    assert all(not torch.equal(ssd[0], w) for w in ssd[1:])  # a deterministic method from 6 originals: 6 models

    score_command, = make_commands("pool-score", *settings)  # make's command, in this process
    r = call(*score_command)
    assert score_command[:2] == ["studies/privacy.py", "score"] and r.returncode == 0, r.stderr
    scores = json.loads((pool / "scores.json").read_text())
    groups = scores["groups"]
    assert set(groups) == {"original", "retrain", "ssd"} and scores["n"] == 6 and groups["retrain"]["models"] == 3
    assert groups["retrain"]["forget_quality"] >= groups["original"]["forget_quality"] + 0.2
    assert groups["original"]["forget_quality"] <= 0.1
    assert all(len(groups["ssd"]["klom_quantiles"][s]) == 5 for s in ("forget", "retain", "test"))
    assert groups["retrain"]["ulira"]["acc"] == 50.0 and groups["original"]["ulira"]["acc"] > 60
    assert groups["original"]["spread"]["forget_acc"]["mean"] > groups["retrain"]["spread"]["forget_acc"]["mean"]
    with np.load(pool / "ssd" / "s0.npz") as z:  # the documented format
        assert z["forget_logits"].shape == (30, 10) and z["test_logits"].shape == (100, 10)
        assert z["retain_index"].shape == (270,) and int(z["forget_class"]) == 3


@pytest.mark.slow
def test_ulira_halves_through_jobs_and_make(cifar_jpeg, data_dir, tmp_path):
    """U-LiRA's design for 4 random halves x 2 forget draws (resnet20, 1 epoch, 10 images a
    class): privacy.py jobs' commands for halves 0..2 run in this process, then make ulira N=4
    makes half 3 (its original, SSD on both draws, their outputs) through xargs, and the scores;
    every model's file is on its half with its forget set inside it, jobs then lists nothing, and
    the scores equal the attack written out (reference_ulira_halves) on the masks rebuilt from the
    dataset and the seeds alone."""
    pool = tmp_path / "run" / "pools" / "halves"
    design = ["--halves", "--draws", 2, "--forget-fraction", 0.5, "--groups", "original", "ssd",
              "--train-flags", "--arch resnet20 --epochs 1 --batch-size 32"]
    data = ["--dataset", ARCHIVE, "--data-dir", data_dir, "--device", "cpu",
            "--subset", 10, "--test-subset", 5]
    lines = jobs(pool, *design, "--n", 3, data=data)
    assert len(lines) == 3 + 6 + 3 + 6  # originals, SSD on 2 draws of each, their outputs
    run_lines(lines)
    settings = ["N=4", "DRAWS=2", "FRACTION=0.5", "ARCH=resnet20", "EPOCHS=1", "TRAIN_FLAGS=--batch-size 32",
                "DEVICE=cpu", f"DATASET={ARCHIVE}", f"DATA_DIR={data_dir}", "EXTRA=--subset 10 --test-subset 5",
                "METHOD=ssd", f"ULIRA_DIR={pool}", "JOBS=2"]
    r = make("ulira", *settings, threads=1)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "ssd: U-LiRA acc" in r.stdout and jobs(pool, *design, "--n", 4, data=data) == []

    every = subset_indices(cifar_jpeg.train_y, 10)
    stat, inside, outside = [], [], []
    for k in range(4):
        half = make_split(cifar_jpeg, subset=10, keep_half=k).train
        for j in range(2):
            forget = make_split(cifar_jpeg, forget_fraction=0.5, forget_seed=j, subset=10, keep_half=k).forget
            assert len(half) == 50 and len(forget) == 25 and np.isin(forget, half).all()
            with np.load(pool / "ssd" / f"h{k}_f{j}.npz") as z:
                assert np.array_equal(z["train_index"], every) and np.array_equal(z["half_index"], half)
                assert np.array_equal(z["forget_index"], forget) and int(z["keep_half"]) == k
                lsc = privacy.logit_scaled_confidence(z["forget_logits"], z["forget_labels"])
                assert np.allclose(z["train_lsc"][np.isin(every, forget)], lsc, atol=1e-4)  # the same model's view
                stat.append(z["train_lsc"].astype(np.float64))
            inside.append(np.isin(every, forget))
            outside.append(~np.isin(every, half))
    scores = json.loads((pool / "scores.json").read_text())
    assert scores["design"] == "halves" and scores["groups"]["original"]["ulira"]["acc"] is None  # 1 model a half
    ssd = scores["groups"]["ssd"]["ulira"]
    reference = reference_ulira_halves(np.array(stat), np.array(inside), np.array(outside), np.repeat(range(4), 2))
    assert ssd["pairs"] == reference["pairs"] and min(ssd["pairs"]) > 0
    assert ssd["acc"] == pytest.approx(reference["acc"], abs=1e-6)
    report.main([str(tmp_path / "run")])  # the report's section: one row per group, the attack's figures in it
    text = (tmp_path / "run" / "report.md").read_text()
    assert "halves: U-LiRA on random halves" in text
    assert f"| ssd | 8 | 4 | {ssd['acc']:.1f} | {ssd['tpr_at_1%']:.1f} |" in text
    assert "| original (floor: not unlearned) | 4 | 4 | - | - | - | 0 / 0 |" in text


# ----------------------------------------------------------------------------- what a user hands us

def outputs_arrays(seed, classes=3, sizes=(4, 5, 6), halves=None):
    """One model's outputs file as privacy.write_outputs writes it: forget / retain / test logits
    (float32), labels and indices (int64), forget_class; for a halves pool's model `halves` = (half k, its
    half's indices, its forget indices) adds train_lsc, train_index, half_index and keep_half over 12 train
    examples."""
    rng = np.random.default_rng(seed)
    if halves is None:
        index = np.split(np.arange(sum(sizes), dtype=np.int64), np.cumsum(sizes)[:-1])
    else:
        k, half, forget = halves
        test = np.arange(sizes[2], dtype=np.int64)
        index = [np.asarray(forget, np.int64), np.setdiff1d(half, forget), test]
    arrays = {"forget_class": np.int64(-1)}
    for s, idx in zip(privacy.GROUPS, index):
        arrays.update({f"{s}_logits": rng.normal(0, 3, (len(idx), classes)).astype(np.float32),
                       f"{s}_labels": (idx % classes).astype(np.int64), f"{s}_index": idx})
    if halves is not None:
        arrays.update({"train_lsc": rng.normal(size=12).astype(np.float32), "train_index": np.arange(12),
                       "half_index": np.asarray(half, np.int64), "keep_half": np.int64(k)})
    return arrays


def write_seed_pool(folder, n=6, groups=("original", "retrain")):
    """A seed pool of random outputs files, n models a group: scoring it takes a second."""
    for g, group in enumerate(groups):
        (folder / group).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            np.savez(folder / group / f"s{k}.npz", **outputs_arrays(10 * g + k))
    return folder


def write_halves_pool(folder, n=4, draws=2):
    """A halves pool of random outputs files: original/h<k>.npz and ssd/h<k>_f<j>.npz."""
    for group in ("original", "ssd"):
        (folder / group).mkdir(parents=True, exist_ok=True)
    for k in range(n):
        half = np.sort(np.random.default_rng(k).permutation(12)[:6])
        np.savez(folder / "original" / f"h{k}.npz", **outputs_arrays(k, halves=(k, half, half[:0])))
        for j in range(draws):
            forget = half[j::2]
            arrays = outputs_arrays(10 + k * draws + j, halves=(k, half, forget))
            np.savez(folder / "ssd" / f"h{k}_f{j}.npz", **arrays)
    return folder


def score(pool, *flags):
    return call("studies/privacy.py", "score", pool, *flags)


def test_a_stray_file_of_the_other_kind_is_refused_naming_one_of_each(tmp_path):
    """One h0.npz in a seed pool made it a halves pool (its scores.json replaced by a U-LiRA of that one
    file); one s0.npz in a halves pool was ignored. Either is now an error naming a file of each kind."""
    pool = write_seed_pool(tmp_path / "seeds")
    assert score(pool).returncode == 0
    before = (pool / "scores.json").read_bytes()
    np.savez(pool / "original" / "h0.npz", **outputs_arrays(0, halves=(0, np.arange(6), np.arange(3))))
    r = score(pool)
    assert_clean_error(r, "mixes the two kinds of pool")
    assert str(pool / "original" / "h0.npz") in r.stderr and "s0.npz" in r.stderr
    assert (pool / "scores.json").read_bytes() == before
    pool = write_halves_pool(tmp_path / "halves")
    assert score(pool).returncode == 0
    np.savez(pool / "ssd" / "s0.npz", **outputs_arrays(0))
    r = score(pool)
    assert_clean_error(r, "mixes the two kinds of pool")
    assert str(pool / "ssd" / "s0.npz") in r.stderr and "h0" in r.stderr


@pytest.mark.parametrize("name", ["s01.npz", "s1.npz.npz", "S1.npz", "backup.npz"])
def test_a_model_name_is_exactly_s_k_without_leading_zeros(tmp_path, name):
    """s01.npz beside s1.npz counted seed 1 twice (int('01') == 1); any other .npz in a group folder is
    refused by name too, rather than read or skipped without a word."""
    pool = write_seed_pool(tmp_path / "pool")
    np.savez(pool / "retrain" / name, **outputs_arrays(99))
    r = score(pool)
    assert_clean_error(r, "not a model's outputs name")
    assert str(pool / "retrain" / name) in r.stderr and not (pool / "scores.json").exists()


@pytest.mark.parametrize("name", ["h01.npz", "h1_f01.npz", "h1_f.npz", "h1_f1_f1.npz"])
def test_a_halves_model_name_is_exactly_h_k_or_h_k_f_j(tmp_path, name):
    pool = write_halves_pool(tmp_path / "pool")
    np.savez(pool / "ssd" / name, **outputs_arrays(99, halves=(1, np.arange(6), np.arange(3))))
    r = score(pool)
    assert_clean_error(r, "not a model's outputs name")
    assert str(pool / "ssd" / name) in r.stderr and not (pool / "scores.json").exists()


def put(key, index, value):
    """A change to an outputs file's arrays: one value set."""
    return lambda a: a[key].__setitem__(index, value)


def replace(**changes):
    """A change to an outputs file's arrays: each key's array replaced by changes[key](array)."""
    return lambda a: a.update({key: f(a[key]) for key, f in changes.items()})


def emptied(s):
    return replace(**{f"{s}_{x}": lambda v: v[:0] for x in ("logits", "labels", "index")})


BAD_FILES = {  # a change to one model's outputs file -> what the error says
    "a NaN logit": (put("forget_logits", (1, 2), np.nan), "forget_logits holds 1 NaN or infinite values"),
    "an infinite logit": (put("test_logits", (0, 0), np.inf), "test_logits holds 1 NaN"),
    "float64 logits": (replace(retain_logits=lambda x: x.astype(np.float64)), "retain_logits is float64"),
    "logits of one dimension": (replace(test_logits=lambda x: x[:, 0]), "test_logits is float32"),
    "int32 labels": (replace(test_labels=lambda x: x.astype(np.int32)), "test_labels is int32"),
    "an index short of one": (replace(forget_index=lambda x: x[:-1]), "forget_index is int64"),
    "a label out of range": (put("retain_labels", 0, 7), "out of range"),
    "another number of classes": (replace(**{f"{s}_logits": lambda x: np.zeros((len(x), 4), np.float32)
                                             for s in privacy.GROUPS}), "has 4 classes"),
    "an empty retain set": (emptied("retain"), "retain set is empty"),
    "an empty forget set": (emptied("forget"), "forget set is empty"),
    "a float forget_class": (replace(forget_class=np.float64), "forget_class is float64"),
}


@pytest.mark.parametrize("change", list(BAD_FILES))
def test_a_bad_outputs_file_is_one_line_naming_it(tmp_path, change):
    """A NaN in one model's logits moved every score without a word; float64 or int32 arrays, shapes that
    disagree, another dataset's classes, an empty set crashed or were scored. Each is now one line naming the
    file and what is wrong, and nothing is written."""
    pool = write_seed_pool(tmp_path / "pool")
    path = pool / "retrain" / "s3.npz"
    arrays = outputs_arrays(13)
    BAD_FILES[change][0](arrays)
    np.savez(path, **arrays)
    r = score(pool)
    assert_clean_error(r, "make it again")
    assert str(path) in r.stderr and BAD_FILES[change][1] in r.stderr
    assert not (pool / "scores.json").exists()


BAD_HALVES = {
    "a NaN statistic": (put("train_lsc", 3, np.nan), "train_lsc holds 1 NaN"),
    "a float16 statistic": (replace(train_lsc=lambda x: x.astype(np.float16)), "train_lsc (float16"),
    "a half outside the train examples": (replace(half_index=lambda x: x + 100), "half_index"),
    "a forget set outside the half": (replace(forget_index=lambda x: x + 100), "not inside its half"),
    "keep_half of two dimensions": (replace(keep_half=lambda x: x.reshape(1, 1)), "keep_half is"),
}


@pytest.mark.parametrize("change", list(BAD_HALVES))
def test_a_bad_halves_outputs_file_is_one_line_naming_it(tmp_path, change):
    pool = write_halves_pool(tmp_path / "pool")
    path = pool / "ssd" / "h1_f0.npz"
    with np.load(path) as z:
        arrays = dict(z)
    BAD_HALVES[change][0](arrays)
    np.savez(path, **arrays)
    r = score(pool)
    assert_clean_error(r, "make it again")
    assert str(path) in r.stderr and BAD_HALVES[change][1] in r.stderr
    assert not (pool / "scores.json").exists()


@pytest.mark.parametrize("flags, message", [
    (["--forget-class", "cat", "--retain-sample", "0"], "--retain-sample 0 keeps no retain image"),
    ([], "give the pool's forget set"),
    (["--forget-seed", "3"], "give the pool's forget set"),
])
def test_outputs_that_score_cannot_use_are_refused_before_any_work(tmp_path, flags, message):
    """--retain-sample 0 or no forget set wrote files that crashed `score` later (after every model's outputs
    were made): now one line at once, before the dataset or the model is even looked at (neither exists)."""
    nothing = ["--dataset", tmp_path / "no-dataset", "--model", tmp_path / "no-model.pth"]
    r = call("studies/privacy.py", "outputs", *nothing, "--out", tmp_path / "s0.npz", *flags)
    assert_clean_error(r, message)
    assert not (tmp_path / "s0.npz").exists()
    halves_original = call("studies/privacy.py", "outputs", *nothing, "--out", tmp_path / "h0.npz",
                           "--keep-half", 0)
    assert_clean_error(halves_original, "no-dataset")  # a halves pool's original forgets nothing: goes on


def test_score_writes_only_its_own_kind_of_file(tmp_path):
    """score --out POOL/retrain/s0.npz replaced a model's outputs with the scores: now --out is refused
    inside the pool's group folders, and an existing file is replaced only when it is a pool's scores (kind
    pool-scores, or scores written before they had a kind) or with --overwrite."""
    pool = write_seed_pool(tmp_path / "pool")
    model_file = pool / "retrain" / "s0.npz"
    before = model_file.read_bytes()
    assert_clean_error(score(pool, "--out", model_file), "whose files this run reads")
    assert_clean_error(score(pool, "--out", model_file, "--overwrite"), "whose files this run reads")
    assert model_file.read_bytes() == before
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": 1}')
    assert_clean_error(score(pool, "--out", notes), "pass --overwrite")
    assert json.loads(notes.read_text()) == {"mine": 1}
    assert score(pool, "--out", notes, "--overwrite").returncode == 0
    assert json.loads(notes.read_text())["kind"] == "pool-scores"
    (pool / "scores.json").write_text(json.dumps({"pool": "pool", "groups": {}}))  # an older version's
    assert score(pool).returncode == 0 and score(pool).returncode == 0  # replaced, then again: its own
    assert json.loads((pool / "scores.json").read_text())["kind"] == "pool-scores"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """An image folder of 3 classes (6 train, 3 test images each) and models train.py made on it (1 epoch):
    original.pth (every image), no_beta.pth (without class beta), half1.pth (the random half 1)."""
    root = tmp_path_factory.mktemp("tiny")
    write_images(root / "folder", {"train": 6, "test": 3})
    models = {"original": [], "no_beta": ["--forget-class", "beta"], "half1": ["--keep-half", 1]}
    for name, flags in models.items():
        r = call("train.py", *tiny_data(root), "--arch", "resnet20", "--epochs", 1, "--batch-size", 8,
                 "--out", root / f"{name}.pth", *flags)
        assert r.returncode == 0, r.stderr
    return root


def tiny_data(root):
    return ["--dataset", root / "folder", "--data-dir", root / "cache", "--device", "cpu"]


def outputs(tiny, model, out, *flags):
    return call("studies/privacy.py", "outputs", *tiny_data(tiny), "--model", model, "--out", out,
                *flags)


def test_outputs_replace_only_this_models_outputs(tiny, tmp_path, monkeypatch):
    """--out is replaced only when it holds outputs of the same model file (its sha256 and the split's are
    saved in it) or of an earlier file at the model's path; the same model with the same settings again is
    nothing to do; anything else needs --overwrite."""
    out = tmp_path / "s0.npz"
    assert outputs(tiny, tiny / "no_beta.pth", out, "--forget-class", "beta").returncode == 0
    with np.load(out) as z:
        assert z["source_sha256"].dtype.kind == "U"  # a unicode string array: no pickle
        assert str(z["source_sha256"]) == sha256_file(tiny / "no_beta.pth")
        assert str(z["source"]) == os.path.realpath(tiny / "no_beta.pth")
        assert len(str(z["split_sha256"])) == 64
    before = out.read_bytes()
    with monkeypatch.context() as m:
        m.setattr(privacy, "write_outputs", lambda *args: pytest.fail("made the outputs again"))
        again = outputs(tiny, tiny / "no_beta.pth", out, "--forget-class", "beta")
    assert again.returncode == 0 and "nothing to do" in again.stdout and out.read_bytes() == before
    another = outputs(tiny, tiny / "original.pth", out, "--forget-class", "beta")  # another model's file
    assert_clean_error(another, "pass --overwrite")
    assert out.read_bytes() == before
    assert outputs(tiny, tiny / "original.pth", out, "--forget-class", "beta", "--overwrite").returncode == 0
    fewer = outputs(tiny, tiny / "original.pth", out, "--forget-class", "beta", "--retain-sample", 3)
    assert fewer.returncode == 0 and "wrote" in fewer.stdout  # its own file, other settings: made again
    with np.load(out) as z:
        assert str(z["source_sha256"]) == sha256_file(tiny / "original.pth") and len(z["retain_index"]) == 3
    old = tmp_path / "old.npz"  # an outputs file without the stamp: an older privacy.py's, or anything else
    np.savez(old, **outputs_arrays(0))
    r = outputs(tiny, tiny / "original.pth", old, "--forget-class", "beta")
    assert_clean_error(r, "pass --overwrite")
    model = tmp_path / "m.pth"  # a model made again at its path: the outputs of the earlier file are stale
    shutil.copy(tiny / "original.pth", model)
    assert outputs(tiny, model, tmp_path / "m.npz", "--forget-class", "beta").returncode == 0
    shutil.copy(tiny / "no_beta.pth", model)
    assert outputs(tiny, model, tmp_path / "m.npz", "--forget-class", "beta").returncode == 0
    with np.load(tmp_path / "m.npz") as z:
        assert str(z["source_sha256"]) == sha256_file(tiny / "no_beta.pth")


def test_a_forget_set_that_rounds_to_nothing_is_refused(tiny, tmp_path):
    r = outputs(tiny, tiny / "original.pth", tmp_path / "s0.npz", "--forget-fraction", 0.01)
    assert_clean_error(r, "--forget-fraction 0.01 of 18 train images forgets none")  # data.make_split's line
    assert not (tmp_path / "s0.npz").exists()


def test_two_outputs_runs_on_one_out_never_both_write(tiny, tmp_path, monkeypatch):
    """CC04: a second privacy.py outputs on the same --out, started while the first makes its
    outputs, stops at once in one line (cli.lock) and the file holds the first's: before, both
    printed 'wrote' and one model's outputs were lost without a word."""
    out, write, second = tmp_path / "cc04.npz", privacy.write_outputs, []

    def first_writing(*args, **kwargs):  # the first run is writing when the second starts
        if not second:
            second.append(None)  # the second run's own write is a plain one
            second[0] = outputs(tiny, tiny / "no_beta.pth", out, "--forget-class", "beta")
        return write(*args, **kwargs)
    monkeypatch.setattr(privacy, "write_outputs", first_writing)
    first = outputs(tiny, tiny / "original.pth", out, "--forget-class", "beta")
    assert first.returncode == 0 and "wrote" in first.stdout
    assert_clean_error(second[0], f"another run is writing {out} now")
    with np.load(out) as z:
        assert str(z["source_sha256"]) == sha256_file(tiny / "original.pth")


@pytest.mark.parametrize("model, flags, message", [
    ("half1", ["--keep-half", 0], "on the random half 1 (--keep-half 1), not the random half 0"),
    ("half1", ["--forget-class", "beta"], "not every train image"),
    ("original", ["--keep-half", 1], "on every train image (no --keep-half), not the random half 1"),
    ("no_beta", ["--forget-class", "gamma"], "for the forget class beta, not the forget class gamma"),
    ("no_beta", ["--forget-fraction", 0.5], "beta, not a forget set of no class"),
    ("original", ["--forget-class", "beta", "--subset", 3], "on other images than the flags' split"),
])
def test_outputs_of_a_model_made_on_other_data_are_refused(tiny, tmp_path, model, flags, message):
    """outputs --keep-half 0 of a model trained on half 1 was accepted, and the attack's ground truth was
    then wrong: the model's sidecar is read, its half, forget set and images must be the flags'."""
    r = outputs(tiny, tiny / f"{model}.pth", tmp_path / "s0.npz", *flags)
    assert_clean_error(r, message)
    assert str(tiny / f"{model}.pth") in r.stderr.splitlines()[-1] and not (tmp_path / "s0.npz").exists()


def test_outputs_of_a_model_made_for_these_flags_or_without_a_sidecar_are_made(tiny, tmp_path):
    """A pool's models as make pool and make ulira make them pass (an original scored on the pool's forget
    set, which it was trained on); a model without a sidecar is taken on the flags' word with a warning; a
    sidecar of another checkpoint is refused."""
    for model, flags in [("half1", ["--keep-half", 1]), ("original", ["--forget-class", "beta"]),
                         ("no_beta", ["--forget-class", "beta"])]:
        r = outputs(tiny, tiny / f"{model}.pth", tmp_path / f"{model}.npz", *flags)
        assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
    shutil.copy(tiny / "half1.pth", tmp_path / "bare.pth")
    r = outputs(tiny, tmp_path / "bare.pth", tmp_path / "bare.npz", "--keep-half", 0)
    assert r.returncode == 0 and (tmp_path / "bare.npz").exists()
    assert f"warning: {tmp_path / 'bare.pth'} has no sidecar" in r.stderr
    shutil.copy(tiny / "original.pth.json", tmp_path / "bare.pth.json")  # another's sidecar
    r = outputs(tiny, tmp_path / "bare.pth", tmp_path / "bare.npz", "--forget-class", "beta")
    assert_clean_error(r, "describes another checkpoint")
