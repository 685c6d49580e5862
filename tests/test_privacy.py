"""privacy.py: each score against an independent computation on arrays whose answer is known, and a toy pool on
the real images through the Makefile (jobs listed for xargs, resumed, scored)."""
import json
import math
import os
import subprocess

import numpy as np
import pytest
import torch

import privacy
from conftest import ARCHIVE, ROOT
from test_report import make


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
        rates += list(zip(tpr, 1 - tpr, fpr, 1 - fpr))
    both = np.concatenate([pos, neg])
    for t in np.linspace(both.min(), both.max(), int(np.ceil((both.max() - both.min()) * 100))):
        rates.append((np.mean(pos >= t), np.mean(pos < t), np.mean(neg >= t), np.mean(neg < t)))
    eps = []
    for tpr, fnr, fpr, tnr in rates:
        if fpr + fnr == 0 and tpr + tnr == 2:
            eps.append(math.inf)
        elif fpr * fnr == 0:
            continue
        else:
            candidates = [math.log(1 - delta - fpr) - math.log(fnr) if 1 - delta - fpr > 0 else math.nan,
                          math.log(1 - delta - fnr) - math.log(fpr) if 1 - delta - fnr > 0 else math.nan]
            eps.append(max(0.0, np.nanmax(candidates)))
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
    reference = {**group, "retain": logits_with_accuracy(6, 10, 10), "test": logits_with_accuracy(6, 10, 10)}
    scores = privacy.score_group(group, reference)
    assert scores["utility"] == pytest.approx(0.8 * 0.5) and scores["score"] == pytest.approx(0.4 * scores["forget_quality"])
    assert scores["spread"]["retain_acc"] == {"mean": 80.0, "std": 0.0, "n": 6}
    with pytest.raises(ValueError, match="N >= 6"):
        privacy.score_group({**group, "models": group["models"][:4]}, {**reference, "models": group["models"][:4]})


def test_a_toy_pool_on_real_images(cifar_jpeg, data_dir, tmp_path):
    """N = 6 resnet20s trained with and without cat (30 images a class, 5 epochs: enough to tell cats seen from
    cats never seen), SSD from each original: the jobs listed by make pool-jobs run through xargs, a rerun makes
    nothing, and the scores put retrain-vs-retrain well above original-vs-retrain."""
    pool = tmp_path / "pool"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    settings = ["N=6", "ARCH=resnet20", "EPOCHS=5", "TRAIN_FLAGS=--batch-size 32", "DEVICE=cpu", f"DATASET={ARCHIVE}",
                f"DATA_DIR={data_dir}", "EXTRA=--subset 30 --test-subset 20", "CLASS=cat", "METHOD=ssd", f"POOL_DIR={pool}"]
    for listing in ("pool-jobs", "pool-unlearn-jobs"):
        jobs = make(listing, *settings)
        expected = 12 if listing == "pool-jobs" else 6  # originals and retrains, then one SSD run per original
        assert jobs.returncode == 0 and len(jobs.stdout.splitlines()) == expected, jobs.stderr
        r = subprocess.run(["xargs", "-d", "\n", "-P", "2", "-I{}", "sh", "-c", "{}"], input=jobs.stdout, text=True,
                           capture_output=True, env=env, cwd=ROOT, timeout=900)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for group in ("original", "retrain", "ssd"):
        assert sorted(os.listdir(pool / group)) == sorted(f"s{k}.{ext}" for k in range(6) for ext in ("pth", "npz",
                                                          "json") + (("log.jsonl",) if group != "ssd" else ()))
    again = make("pool", "pool-unlearn", *settings)
    assert again.returncode == 0 and "train.py" not in again.stdout and "unlearn.py" not in again.stdout, again.stdout

    ssd = [torch.load(pool / "ssd" / f"s{k}.pth", weights_only=True)["fc.weight"] for k in range(6)]
    assert all(not torch.equal(ssd[0], w) for w in ssd[1:])  # a deterministic method from 6 originals: 6 models

    r = make("pool-score", *settings)
    assert r.returncode == 0, r.stderr[-3000:]
    scores = json.loads((pool / "scores.json").read_text())
    groups = scores["groups"]
    assert set(groups) == {"original", "retrain", "ssd"} and scores["n"] == 6 and groups["retrain"]["models"] == 3
    assert groups["retrain"]["forget_quality"] >= groups["original"]["forget_quality"] + 0.2
    assert groups["original"]["forget_quality"] <= 0.1
    assert all(len(groups["ssd"]["klom_quantiles"][s]) == 5 for s in ("forget", "retain", "test"))
    assert groups["retrain"]["ulira"]["acc"] == 50.0 and groups["original"]["ulira"]["acc"] > 60
    assert groups["original"]["spread"]["forget_acc"]["mean"] > groups["retrain"]["spread"]["forget_acc"]["mean"]
    with np.load(pool / "ssd" / "s0.npz") as z:  # the documented format
        assert z["forget_logits"].shape == (30, 10) and z["test_logits"].shape == (200, 10)
        assert z["retain_index"].shape == (270,) and int(z["forget_class"]) == 3
