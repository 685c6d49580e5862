"""Beneath the outputs (issue 31): the penultimate features of every architecture, the linear
probe's regression, linear CKA and relearn time against independent computations and known
answers."""
import copy
import json
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch

import report
from conftest import (ARCHIVE, RETRAINED_WITHOUT, ROOT, assert_clean_error, call,
                      independent_logits)
from data import make_split
from evaluate import fit_probe, linear_cka, penultimate, probe_sample
from models import Ensemble, build_model, save_model


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def blobs(rng, n=400, d=12, k=4, scale=3.0):
    """Overlapping Gaussian blobs, non-negative and of a large scale as ReLU features are."""
    y = rng.integers(0, k, n)
    x = np.abs(rng.normal(0, 1, (k, d))[y] * scale + rng.normal(0, 1.5, (n, d)))
    return x, y


@pytest.mark.parametrize("C", [1.0, 0.05])
def test_the_probe_optimum_satisfies_its_first_order_conditions(C):
    """At argmin 0.5 |W|^2 + C sum CE: C X^T (P - Y) + W = 0 and C 1^T (P - Y) = 0 (the intercept
    unpenalised), written here in numpy from the objective, not from the code under test."""
    rng = np.random.default_rng(0)
    x, y = blobs(rng)
    w, b = fit_probe(torch.tensor(x), torch.tensor(y), 4, C=C)
    w, b = w.numpy(), b.numpy()
    residual = softmax(x @ w.T + b) - np.eye(4)[y]
    grad_w, grad_b = C * residual.T @ x + w, C * residual.sum(0)
    assert np.abs(grad_w).max() / len(y) < 1e-7 and np.abs(grad_b).max() / len(y) < 1e-7
    assert np.abs(w).max() > 0.01  # a real fit: the penalty did not pull everything to 0
    assert (np.argmax(x @ w.T + b, 1) == y).mean() > 0.6


def independent_cka(x, y):
    """Kornblith et al.'s definition with Gram matrices: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)),
    K = X X^T, L = Y Y^T, HSIC(K, L) = tr(K H L H) with the centring matrix H."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = x @ x.T, y @ y.T

    def hsic(a, b):
        return np.trace(a @ h @ b @ h)
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def test_cka_of_a_model_with_itself_is_one_and_invariant_to_rotation_and_scaling():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (150, 20)) ** 2  # skewed, not centred: CKA must centre
    q, _ = np.linalg.qr(rng.normal(0, 1, (20, 20)))
    t = torch.tensor
    assert linear_cka(t(x), t(x)) == pytest.approx(1, abs=1e-12)
    assert linear_cka(t(x), t(3.7 * x @ q)) == pytest.approx(1, abs=1e-10)
    assert linear_cka(t(x @ q), t(x)) == pytest.approx(1, abs=1e-10)
    y = rng.normal(0, 1, (150, 7))  # another width: CKA compares representations of any sizes
    assert linear_cka(t(x), t(y)) == pytest.approx(independent_cka(x, y), abs=1e-10)
    assert linear_cka(t(x), t(y)) < 0.5
    stretched = x * rng.uniform(0.1, 3, 20)  # not isotropic: CKA may, and here does, change
    assert linear_cka(t(x), t(stretched)) == pytest.approx(independent_cka(x, stretched),
                                                           abs=1e-10)
    assert linear_cka(t(x), t(stretched)) < 0.999
    assert linear_cka(t(x), t(np.ones_like(x))) is None  # a constant representation: no answer


@pytest.mark.parametrize("arch", ["resnet20", "resnet20b", "resnet18-imagenet"])
def test_penultimate_features_are_the_heads_input(arch):
    """Ours (option A and B) and torchvision's: the head on the features gives the logits."""
    torch.manual_seed(0)
    model = build_model(arch, 10).eval()
    x = torch.randn(6, 3, 32, 32)
    features, labels = penultimate(model, [(x[:4], torch.arange(4)), (x[4:], torch.arange(2))])
    assert features.shape == (6, model.fc.in_features) and labels.tolist() == [0, 1, 2, 3, 0, 1]
    with torch.no_grad():
        assert torch.allclose(model.fc(features), model(x), atol=1e-5)
        model.fc.weight.mul_(-3)  # an edited head leaves the features as they were
        assert torch.equal(penultimate(model, [(x, labels)])[0], features)


def test_an_ensembles_features_are_its_members_side_by_side():
    torch.manual_seed(0)
    members = [build_model("resnet20", 10), build_model("resnet20", 10)]
    x = torch.randn(5, 3, 32, 32)
    features, _ = penultimate(Ensemble(members), [(x, torch.zeros(5, dtype=torch.long))])
    with torch.no_grad():
        logits = [m.eval()(x) for m in members]
    assert features.shape == (5, 128)
    assert torch.allclose(members[0].fc(features[:, :64]), logits[0], atol=1e-5)
    assert torch.allclose(members[1].fc(features[:, 64:]), logits[1], atol=1e-5)


def test_the_probes_sample_is_balanced_and_holds_the_forget_set_when_it_should(cifar_jpeg):
    split = make_split(cifar_jpeg, forget_class=RETRAINED_WITHOUT, subset=40, test_subset=10)
    sample = probe_sample(cifar_jpeg, split, per_class=25)
    assert np.bincount(cifar_jpeg.train_y[sample], minlength=10).tolist() == [25] * 10
    assert np.isin(sample, split.train).all() and np.isin(split.forget, sample).sum() == 25
    assert np.array_equal(sample, probe_sample(cifar_jpeg, split, per_class=25))  # seeded
    assert len(probe_sample(cifar_jpeg, split)) == 400  # 500 a class asked, 40 there
    randomly = make_split(cifar_jpeg, forget_fraction=0.3, subset=40, test_subset=10)
    sample = probe_sample(cifar_jpeg, randomly, per_class=20)  # sample forgetting: retain set only
    fewest = np.bincount(cifar_jpeg.train_y[randomly.retain]).min()  # 19: the smallest class's
    assert np.bincount(cifar_jpeg.train_y[sample]).tolist() == [min(20, fewest)] * 10
    assert not np.isin(sample, randomly.forget).any()


def head_edited(model, data, split, path):
    """A copy of `model` whose head alone forgets the split's class: that class's bias (its row of
    the last layer) lowered until none of its train or test images is predicted as it, by 0.5
    more; saved at `path`. Its features are the model's."""
    edited, c = copy.deepcopy(model), split.forget_class
    images = np.concatenate([data.train_x[split.forget], data.test_x[split.test_forget]])
    with torch.no_grad():
        logits = independent_logits(edited, images, data)
        others = torch.cat([logits[:, :c], logits[:, c + 1:]], 1).max(1).values
        edited.fc.bias[c] -= (logits[:, c] - others).max() + 0.5
    save_model(path, edited, {"arch": "resnet20"})
    return path


@pytest.mark.slow  # 22 s, and 30 s for the `retrained` fixture (shared with the forgetting test)
def test_a_head_edit_forgets_on_outputs_only_and_a_retrained_model_beneath_too(
        cifar_jpeg, data_dir, trained, retrained, tmp_path):
    """Issue 31's known answers, on the real images at toy scale through the command line: the
    head-edited model reads as forgotten on its outputs (0% on the class) while the probe recovers
    the original's accuracy from its features (the same features: the same probe), and relearns in
    fewer steps than the model retrained without the class, whose probe stays well below."""
    split = make_split(cifar_jpeg, forget_class=RETRAINED_WITHOUT, subset=100, test_subset=100)
    edited = head_edited(trained[1], cifar_jpeg, split, str(tmp_path / "edited.pth"))
    r = call("evaluate.py", "--model", edited, "--original", trained[0], "--retrained",
             retrained[0], "--probe", "--dataset", ARCHIVE, "--data-dir", data_dir, "--subset",
             100, "--test-subset", 100, "--forget-class", "airplane", "--device", "cpu", "--json",
             tmp_path / "out.json")
    assert r.returncode == 0, r.stderr
    models = json.load(open(tmp_path / "out.json"))["models"]
    original, edit, gold = models[trained[0]], models[edited], models[retrained[0]]
    assert edit["test_forget"]["acc"] == 0 and edit["train_forget"]["acc"] == 0
    assert original["test_forget"]["acc"] > 40  # the class the original knows best (59%)
    assert edit["probe_forget_acc"] == original["probe_forget_acc"] > 30  # recovered beneath
    assert edit["probe_test_acc"] == original["probe_test_acc"]
    assert edit["cka_original"]["test"] == pytest.approx(1, abs=1e-9)
    assert edit["cka_original"]["forget"] == pytest.approx(1, abs=1e-9)
    assert gold["probe_forget_acc"] <= original["probe_forget_acc"] - 8  # 35% against 48%
    assert gold["cka_retrained"]["test"] == pytest.approx(1, abs=1e-9)
    assert gold["cka_original"]["forget"] < 0.9  # 0.61: the retrained model's features differ
    assert gold["cka_original"] == pytest.approx(edit["cka_retrained"], abs=1e-12)  # symmetric
    assert original["relearn_steps"] == 0 and original["relearn_target"] == pytest.approx(
        0.95 * original["test_forget"]["acc"])
    assert 0 < edit["relearn_steps"] <= 30 and edit["relearn_cap"] == 100  # 18 steps
    assert gold["relearn_steps"] is None or gold["relearn_steps"] > edit["relearn_steps"]  # 41
    header = [line for line in r.stdout.splitlines() if line.startswith("| Model |")][0]
    assert header.endswith("| Probe forget acc | Probe test acc | CKA retrained (test / forget) | "
                           "CKA original (test / forget) | Relearn steps |")
    row = [line for line in r.stdout.splitlines() if line.startswith(f"| {edited} |")][0]
    cka = edit["cka_retrained"]
    assert row.endswith(f"| {edit['probe_forget_acc']:.2f}% | {edit['probe_test_acc']:.2f}% | "
                        f"{cka['test']:.3f} / {cka['forget']:.3f} | 1.000 / 1.000 | "
                        f"{edit['relearn_steps']} |")


@pytest.mark.slow  # 4 s
def test_unlearn_probe_fills_the_sidecar_the_cards_table_and_the_model_card(
        cifar_jpeg, data_dir, trained, tmp_path):
    out = tmp_path / "ssd.pth"
    r = call("unlearn.py", "--method", "ssd", "--model", trained[0], "--forget-class", "airplane",
             "--probe", "--dataset", ARCHIVE, "--data-dir", data_dir, "--subset", 20,
             "--test-subset", 20, "--device", "cpu", "--out", out)
    assert r.returncode == 0, r.stderr
    meta = json.load(open(tmp_path / "ssd.pth.json"))
    m = meta["metrics"]
    assert m["cka_retrained"] is None and m["relearn_cap"] == 100
    assert 0 <= m["probe_forget_acc"] <= 100 and set(m["beneath_seconds"]) == {
        "features", "probe", "cka", "relearn"}
    assert set(m["cka_original"]) == {"test", "forget"} and meta["retrained_metrics"] is None
    cells = report.beneath_cells(m)
    r = call("evaluate.py", "--table", tmp_path / "ssd.pth.json")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].endswith("| MIA | " + " | ".join(report.BENEATH_HEADER) + " |")
    assert r.stdout.splitlines()[2].endswith(f"| {m['mia']:.3f} | " + " | ".join(cells) + " |")
    card = report.model_card(meta, "ssd.pth")
    assert "| " + " | ".join(report.BENEATH_HEADER) + " |" in card and " | ".join(cells) in card
    assert "relearn steps" in card
    del meta["metrics"]["probe_test_acc"]  # a sidecar made without --probe: the cards as before
    assert "Probe" not in report.model_card(meta, "ssd.pth")


def test_reproduce_passes_probe_to_every_unlearn_and_evaluation_step(tmp_path):
    def commands(*extra):
        dry = subprocess.run(["make", "-C", ROOT, "-n", "--no-print-directory", "INSTALL=",
                              f"PY={sys.executable}", "reproduce-steps", f"RUNDIR={tmp_path}",
                              "CLASSES=airplane cat", "EVERY_CLASS=ssd", "ONE_CLASS=ga",
                              "CLASS=cat", *extra], capture_output=True, text=True, timeout=120)
        assert dry.returncode == 0, dry.stderr
        lines = [shlex.split(line) for line in dry.stdout.replace("\\\n", " ").splitlines()]
        scripts = ("unlearn.py", "evaluate.py")
        return [w[1:] for w in lines if w and w[0] == sys.executable and w[1] in scripts]
    steps = commands()
    unlearns = [c for c in steps if c[0] == "unlearn.py" and "--method" in c and "sisa" not in c]
    assert len(unlearns) == 3 and all("--probe" in c for c in unlearns)
    evaluation = [c for c in steps if str(tmp_path / "eval_cat.json") in c]
    assert len(evaluation) == 1 and "--probe" in evaluation[0]
    assert evaluation[0][evaluation[0].index("--original") + 1] == str(tmp_path / "full.pth")
    assert not any("--probe" in c or "--original" in c for c in commands("PROBE="))


def test_probe_flags_are_checked_before_any_work(cifar_jpeg, data_dir, tmp_path):
    model = str(tmp_path / "m.pth")
    save_model(model, build_model("resnet20", 10), {})
    common = ["--model", model, "--dataset", ARCHIVE, "--data-dir", data_dir, "--device", "cpu"]
    assert_clean_error(call("evaluate.py", *common, "--original", model),
                       "--original is the reference of --probe's measures: give --probe too")
    assert_clean_error(call("evaluate.py", *common, "--probe", "--json", tmp_path / "e.json"),
                       "--probe measures forgetting: give --forget-class")
    assert not (tmp_path / "e.json").exists()
