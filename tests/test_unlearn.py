"""Unlearning methods: equivalence with hand computations, the invariants each promises, and real forgetting."""
import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import methods
import unlearn
from cli import eval_batch_size
from conftest import (ARCHIVE, RETRAIN, RETRAINED_WITHOUT, SUBSET, TEST_SUBSET, assert_clean_error,
                      call)
from data import Loader, make_split
from evaluate import evaluate_model, predict
from models import build_model, save_model
from methods import (AdvNegGradConfig, SalUnConfig, SSDConfig, importance_per_sample, saliency_mask,
                     unlearn_advneggrad, unlearn_salun, unlearn_ssd)
from unlearn import METHODS, from_the_data, make_loaders

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def small(cifar_jpeg):
    """A random resnet20 and 4 images per class, forgetting class 0: retain 36, forget 4."""
    torch.manual_seed(0)
    return build_model("resnet20", 10).eval(), make_split(cifar_jpeg, forget_class=0, subset=4)


def plain_loaders(data, split, batch_size):
    cfg = SSDConfig(batch_size=batch_size, forget_batch_size=batch_size)
    return make_loaders(data, split, cfg, CPU, 0)


def test_per_sample_importance_is_the_mean_squared_example_gradient_whatever_the_batching(cifar_jpeg, small):
    model, split = small
    model = copy.deepcopy(model).double()  # float64, so that only the math can differ, not the summation order

    def batches(indices, batch_size):
        return [(x.double(), y) for x, y in Loader(cifar_jpeg, indices, train_set=True, batch_size=batch_size)]
    order = np.random.default_rng(0).permutation(split.train)
    a = importance_per_sample(model, batches(split.train, 5))
    b = importance_per_sample(model, batches(order, 16))
    (x, y), = batches(split.train[:6], 6)
    by_hand = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(6):
        model.zero_grad()
        F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        for n, p in model.named_parameters():
            by_hand[n] += p.grad ** 2 / 6
    c = importance_per_sample(model, batches(split.train[:6], 4))
    for n in a:
        assert torch.allclose(a[n], b[n], rtol=1e-9, atol=1e-12), n
        assert torch.allclose(c[n], by_hand[n], rtol=1e-9, atol=1e-12), n


def test_advneggrad_step_equals_a_hand_computation(cifar_jpeg, small):
    model, split = small
    cfg = AdvNegGradConfig(batch_size=64, augment=False)  # one retain and one forget batch: exactly one step
    retain_loader, forget_loader = make_loaders(cifar_jpeg, split, cfg, CPU, 0)
    ours = unlearn_advneggrad(copy.deepcopy(model), retain_loader, forget_loader, cfg, CPU)
    hand = copy.deepcopy(model).train()
    (rx, ry), (fx, fy) = next(iter(retain_loader)), next(iter(forget_loader))
    loss = (1 - 0.15) * F.cross_entropy(hand(rx), ry) - 0.15 * F.cross_entropy(hand(fx), fy)
    grads = torch.autograd.grad(loss, list(hand.parameters()))
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
    assert norm > 0.5  # the clip is active
    with torch.no_grad():
        for p, g in zip(hand.parameters(), grads):
            d = g * 0.5 / (norm + 1e-6) + 5e-4 * p  # clipped gradient, then weight decay
            p -= 0.1 * (d + 0.9 * d)  # first Nesterov step: buffer = d, update = d + momentum * buffer
    for (name, a), b in zip(ours.state_dict().items(), hand.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name


def test_salun_keeps_masked_out_weights_bitwise(cifar_jpeg, small):
    model, split = small
    cfg = SalUnConfig(epochs=2, batch_size=8, lr=0.05)
    mask = saliency_mask(copy.deepcopy(model), make_loaders(cifar_jpeg, split, cfg, CPU, 0)[1], 0.5)
    total = sum(m.numel() for m in mask.values())
    assert abs(sum(int(m.sum()) for m in mask.values()) - total // 2) <= 1
    ours = unlearn_salun(copy.deepcopy(model), *make_loaders(cifar_jpeg, split, cfg, CPU, 0), cfg, CPU)
    changed = 0
    for (name, p), before in zip(ours.named_parameters(), model.parameters()):
        assert torch.equal(p[~mask[name]], before[~mask[name]]), name
        changed += int((p[mask[name]] != before[mask[name]]).sum())
    assert changed > total // 4


def test_retrain_cli_equals_train_py_without_the_class(cifar_jpeg, data_dir, trained, tmp_path):
    tiny = ["--dataset", ARCHIVE, "--data-dir", data_dir, "--subset", 20, "--test-subset", 10, "--device", "cpu",
            "--forget-class", "cat", "--epochs", 1, "--batch-size", 32]
    a = call("unlearn.py", "--method", "retrain", "--model", trained[0], *tiny, "--out", tmp_path / "a.pth", "--no-eval")
    b = call("train.py", "--arch", "resnet20", *tiny, "--out", tmp_path / "b.pth")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    wa, wb = (torch.load(tmp_path / f"{n}.pth", weights_only=True) for n in "ab")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # fresh init, same recipe, retain set only: the same model
    original = torch.load(trained[0], weights_only=True)
    assert not torch.equal(wa["conv1.weight"], original["conv1.weight"])


def test_retrain_never_sees_a_forget_image(cifar_jpeg, trained, monkeypatch):
    seen = []
    monkeypatch.setattr(unlearn, "fit", lambda model, loader, test_loader, cfg: seen.extend(y for _, y in loader))

    class Untouchable:
        def __iter__(self):
            raise AssertionError("retrain iterated the forget set")
    split = make_split(cifar_jpeg, forget_class=0, subset=20)
    retain_loader, _ = make_loaders(cifar_jpeg, split, unlearn.RetrainConfig(batch_size=16), CPU, 0)
    unlearn.unlearn_retrain(copy.deepcopy(trained[1]), retain_loader, Untouchable(), unlearn.RetrainConfig(), CPU)
    assert len(torch.cat(seen)) == 180 and 0 not in torch.cat(seen)


# The forgetting test: each method on the session model, its forget and retain test accuracy
# after against two bars, with settings that clear both with room on any machine. Forget accuracy
# is read on all 1,000 test images of the forget class (on 100 it moved in steps of 1 point and its
# sampling noise alone was 4 points), retain accuracy on 300 test images of each other class.
FORGET_CLASS = 0  # airplane: the session model's best class
EVAL_PER_CLASS = 300
FORGOTTEN = 0.5  # forget accuracy after < FORGOTTEN x before: a method doing nothing keeps it all
KEPT = 12  # retain accuracy after > before - KEPT points: neggrad+ without its retain term falls 19
# Settings: the published defaults where they fit a 3000-image CPU run, else fewer epochs or
# larger steps. After each: forget / retain test accuracy (%) after the method, with torch on 1
# thread and on 2 (OMP_NUM_THREADS=1, 2; the session model itself differs: 60.9 / 29.4 before on
# 1 thread, 63.7 / 29.9 on 2), measured on a 2-core machine of CI's kind (2 threads here gave CI's
# numbers to the digit). Bars: forget below 30.5 / 31.9, retain above 17.4 / 17.9. Each method
# clears both by at least 5 points in both modes, and by 3 times the spread between the modes
# (forget: |1 - 2 threads|; retain: of the drop from before) except the forgetting of bad-teacher
# (spread 9) and boundary-shrink (7): no setting swept (12 and 9) did better on both bars.
QUICK = {
    "ssd": {"alpha": 4.0},  # 0.1 / 32.7; 0.2 / 33.3 (alpha 2 kept 20.2 on 1 thread, 33.7 on 2)
    "retrain": RETRAIN,  # the session model's recipe: 0.0 / 36.4; 0.0 / 36.1
    "ga": {"lr": 0.01, "epochs": 2},  # 3.5 / 32.2; 7.1 / 33.4
    # on every 5th retain image (THIN) with smaller batches, measured again on 2026-12-07: 4-13 s a
    # method less (the retain set's 2,700 images were most of this test's time)
    "advneggrad": {"batch_size": 128},  # 0.0 / 28.1; 0.0 / 27.6 (batch 64: retain 23.0 and 25.7)
    "neggrad+": {"epochs": 2, "lr": 0.01, "batch_size": 32, "forget_batch_size": 16},  # 0.9 /
    # 36.8; 0.3 / 36.9 (lr 0.02: 0.0 / 33.9; 0.0 / 35.6)
    "finetune": {"epochs": 3, "batch_size": 32},  # 0.0 / 27.9; 0.0 / 31.6 (2 epochs kept 21.3 on 1
    # thread)
    "rl": {"epochs": 1, "lr": 0.05, "batch_size": 64},  # 0.0 / 27.0; 0.0 / 25.3
    "salun": {"epochs": 2, "lr": 0.013, "batch_size": 64},  # 0.0 / 35.3; 0.0 / 31.6 (lr 0.03: 34.1
    # and 27.7)
    "scrub": {"epochs": 2, "max_epochs": 2, "lr": 0.02, "batch_size": 64},  # 0.0 / 30.3; 0.0 /
    # 31.6 (lr 0.05 kept 22.2 on 1 thread)
    # issue 25's methods, on every 5th retain image (THIN): the published steps are too small for
    # 4 epochs of toy training, so larger ones
    "lfssd": {"alpha": 5.0, "full_set": "retain"},  # 0.5 / 28.6; 0.0 / 30.1 (D = retain + forget
    # at alpha 1: 18.1 and 25.7)
    "ct": {"epochs": 2, "lr": 0.01},  # 0.0 / 27.4; 0.4 / 27.3
    "msg": {"epochs": 2, "lr": 0.01},  # 0.0 / 31.9; 0.0 / 32.3
    "bad-teacher": {"lr": 1e-3, "epochs": 2, "retain_fraction": 1.0},  # 17.7 / 22.7; 8.7 / 24.2
    # (1 epoch at batch 64: 31.0 and 6.3; the default retain_fraction 0.3: retain 20.7 and 21.7)
    "unsir": {"impair_lr": 2e-3},  # 6.8 / 29.6; 5.0 / 31.5 (1e-3: forget 7 and 14 of 100 images)
    "amnesiac": {"epochs": 1, "lr": 1e-3},  # 0.1 / 28.6; 0.2 / 29.1
    "l1-sparse": {"epochs": 2, "lr": 0.05},  # 0.1 / 29.7; 0.1 / 28.1
    "boundary-shrink": {"epochs": 2, "lr": 0.02},  # 23.6 / 29.6; 16.2 / 28.0 (lr 0.05 kept 17.9 on
    # 2 threads; 3 epochs at 0.015: 28.5 and 23.3)
    "boundary-expand": {"epochs": 3, "lr": 0.03},  # 13.6 / 27.9; 3.6 / 27.3
}
THIN = {"advneggrad", "neggrad+", "finetune", "rl", "salun", "scrub", "lfssd", "ct", "msg",
        "bad-teacher", "unsir", "amnesiac", "l1-sparse", "boundary-shrink", "boundary-expand"}


def evaluation_images(data):
    """Every test image of the forget class and the first EVAL_PER_CLASS of each other class."""
    return np.concatenate([np.flatnonzero(data.test_y == c)[:None if c == FORGET_CLASS
                                                            else EVAL_PER_CLASS]
                           for c in range(len(data.classes))])


def accuracy_on_test_set(model, data, indices):
    """evaluate_model's test_forget and test_retain accuracies (%), from these test images alone: the
    train sets' passes evaluate_model adds are not what this test checks."""
    logits, labels = predict(model, Loader(data, indices, train_set=False,
                                           batch_size=eval_batch_size(CPU)))
    hit, forget = logits.argmax(1) == labels, labels == FORGET_CLASS
    return {"test_forget": {"acc": 100 * hit[forget].float().mean().item()},
            "test_retain": {"acc": 100 * hit[~forget].float().mean().item()}}


def missed_bars(original, after):
    """The bars a method misses, in words: empty when it forgets and keeps the rest."""
    forget, retain = after["test_forget"]["acc"], after["test_retain"]["acc"]
    forget_bar = FORGOTTEN * original["test_forget"]["acc"]
    retain_bar = original["test_retain"]["acc"] - KEPT
    return ([f"forget accuracy {forget:.1f}% not below {forget_bar:.1f}%"] * (forget >= forget_bar)
            + [f"retain accuracy {retain:.1f}% not above {retain_bar:.1f}%"]
            * (retain <= retain_bar))


@pytest.fixture(scope="module")
def before(cifar_jpeg, trained):
    split = make_split(cifar_jpeg, forget_class=FORGET_CLASS, subset=SUBSET, test_subset=TEST_SUBSET)
    ours = accuracy_on_test_set(trained[1], cifar_jpeg, split.test)
    full = evaluate_model(trained[1], cifar_jpeg, split, CPU)  # the same numbers as the project's evaluation
    assert all(ours[k]["acc"] == pytest.approx(full[k]["acc"]) for k in ours)
    original = accuracy_on_test_set(trained[1], cifar_jpeg, evaluation_images(cifar_jpeg))
    assert original["test_forget"]["acc"] > 40
    return split, original


def unlearned(data, trained, split, method, fn=None, quick=None, thin=None):
    """The session model after `method` with its QUICK settings, on every 5th retain image where
    it is in THIN (fn, quick, thin: another function, settings, choice in their place)."""
    function, config_class, _ = METHODS[method]
    # built as unlearn.py builds it: boundary-shrink needs the data's normalisation
    cfg = config_class(**from_the_data(config_class, data), **(quick or QUICK[method]))
    if method in THIN if thin is None else thin:
        split = dataclasses.replace(split, retain=split.retain[::5])
    retain_loader, forget_loader = make_loaders(data, split, cfg, CPU, 0)
    torch.manual_seed(0)
    model = (fn or function)(copy.deepcopy(trained[1]), retain_loader, forget_loader, cfg, CPU)
    return accuracy_on_test_set(model, data, evaluation_images(data))


@pytest.mark.slow  # 4-30 s a method on 2 cores, 3 minutes in all: make test runs it
@pytest.mark.parametrize("method", METHODS)
def test_every_method_forgets_and_keeps_the_rest(cifar_jpeg, trained, before, method, request):
    split, original = before
    if method == "retrain":  # made once for this test and those beneath the outputs: conftest
        assert FORGET_CLASS == RETRAINED_WITHOUT and QUICK["retrain"] == RETRAIN
        model = request.getfixturevalue("retrained")[1]
        after = accuracy_on_test_set(model, cifar_jpeg, evaluation_images(cifar_jpeg))
    else:
        after = unlearned(cifar_jpeg, trained, split, method)
    assert not missed_bars(original, after), (original, after)


def neggrad_plus_without_its_retain_term(model, retain_loader, forget_loader, cfg, device):
    """A broken NegGrad+: methods.unlearn_neggrad_plus's loop with the retain term left out."""
    retain_loader, forget_loader = methods.on_device(retain_loader, forget_loader, device)
    optimizer = methods.sgd(model, cfg)
    model.train(cfg.train_mode)
    for _, (xf, yf) in methods.paired(retain_loader, forget_loader, cfg.epochs):
        methods.step(optimizer, -(1 - cfg.alpha) * F.cross_entropy(model(xf), yf))
    return model


@pytest.mark.slow  # 11 s on 2 cores
def test_the_bars_fail_a_method_that_does_nothing_or_lost_its_retain_term(cifar_jpeg, trained,
                                                                          before):
    split, original = before
    assert missed_bars(original, original) == [
        f"forget accuracy {original['test_forget']['acc']:.1f}% not below "
        f"{FORGOTTEN * original['test_forget']['acc']:.1f}%"]
    after = unlearned(cifar_jpeg, trained, split, "neggrad+", neggrad_plus_without_its_retain_term,
                      quick={"epochs": 2, "lr": 0.01}, thin=False)  # 2,700 retain images: falls
    # 19 points (on QUICK's THIN set: 16 on 1 thread, too close to KEPT)
    missed = [m.split()[0] for m in missed_bars(original, after)]
    assert missed == ["retain"], after  # 11.1%: chance


def test_same_seed_same_result(cifar_jpeg, trained):
    split = make_split(cifar_jpeg, forget_class=FORGET_CLASS, subset=30)
    cfg = dataclasses.replace(methods.GAConfig(), lr=0.01, epochs=1)

    def run(seed):
        torch.manual_seed(seed)
        return methods.unlearn_ga(copy.deepcopy(trained[1]), *make_loaders(cifar_jpeg, split, cfg, CPU, seed), cfg, CPU).state_dict()
    a, b, c = run(3), run(3), run(4)
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(a["fc.weight"], c["fc.weight"])


def test_cli_writes_the_published_name_and_sidecar(cifar_jpeg, data_dir, trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = call("unlearn.py", "--method", "advneggrad", "--model", trained[0], "--dataset", ARCHIVE,
                   "--data-dir", data_dir, "--subset", 20, "--test-subset", 10, "--forget-class", "airplane",
                   "--batch-size", 64, "--device", "cpu", "--retrained", trained[0])
    assert r.returncode == 0, r.stderr
    out = tmp_path / "checkpoints" / "cifar10-jpeg_resnet20_AdvNegGrad_0_subset20.pth"
    meta = json.load(open(f"{out}.json"))
    assert meta["method"] == "advneggrad" and meta["config"]["alpha"] == 0.15 and meta["config"]["batch_size"] == 64
    assert meta["split"]["forget_class"] == "airplane" and meta["seconds"] > 0 and 0 <= meta["metrics"]["mia"] <= 1
    rows = [line for line in r.stdout.splitlines() if line.startswith("| ") and "Model" not in line]
    assert len(rows) == 2 and rows[0].endswith("| 0.00 | - |")  # the retrained row, then ours with its gap
    table = call("evaluate.py", "--table", out, "--out", tmp_path / "t.md")
    assert table.returncode == 0, table.stderr
    m = meta["metrics"]["test_forget"], meta["metrics"]["test_retain"]
    assert (tmp_path / "t.md").read_text().splitlines()[2] == (
        f"| `{out.name}` | airplane | {m[0]['acc']:.2f} ({m[0]['loss']:.3f}) | {m[1]['acc']:.2f} ({m[1]['loss']:.3f}) "
        f"| {meta['metrics']['mia']:.3f} |")


def test_random_forgetting_from_the_cli(cifar_jpeg, data_dir, trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = call("unlearn.py", "--method", "ssd", "--model", trained[0], "--dataset", ARCHIVE, "--data-dir", data_dir,
                   "--subset", 20, "--test-subset", 10, "--forget-fraction", 0.1, "--device", "cpu", "--no-eval")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "checkpoints" / "cifar10-jpeg_resnet20_SSD_forget0.1_seed0_subset20.pth"
    meta = json.load(open(f"{out}.json"))
    assert meta["split"]["n_forget"] == 20 and len(meta["split"]["forget_indices"]) == 20 and meta["metrics"] is None


def test_method_help_shows_its_published_defaults_and_only_its_flags():
    ssd = " ".join(call("unlearn.py", "--method", "ssd", "--help").stdout.split())
    assert "--lambda" in ssd and "(default: 1.0)" in ssd and "(default: 10.0)" in ssd and "--clip" not in ssd
    adv = " ".join(call("unlearn.py", "--method", "advneggrad", "--help").stdout.split())
    for text in ["(default: 0.15)", "(default: 0.5)", "(default: 2500)", "weight of the gradient-ascent (forget) term"]:
        assert text in adv, text


@pytest.mark.parametrize("args, message", [
    (["--method", "forgetall"], "invalid choice: 'forgetall'"),
    (["--method", "ssd", "--clip", "0.5", "--forget-class", "cat"], "unrecognized arguments: --clip"),
    (["--method", "ssd", "--forget-class", "12"], "unknown class '12'"),
    (["--method", "ssd"], "the forget set is empty"),
    (["--method", "ga", "--forget-class", "cat", "--lr", "1e30"], "non-finite"),
])
def test_bad_input_is_refused_and_nothing_is_written(cifar_jpeg, data_dir, trained, tmp_path, args, message):
    r = call("unlearn.py", "--model", trained[0], "--dataset", ARCHIVE, "--data-dir", data_dir, "--subset", 10,
                   "--test-subset", 10, "--device", "cpu", "--out", tmp_path / "u.pth", *args)
    assert_clean_error(r, message)
    assert not (tmp_path / "u.pth").exists()


def test_a_checkpoint_of_another_class_count_is_refused(cifar_jpeg, data_dir, tmp_path):
    save_model(str(tmp_path / "c100.pth"), build_model("resnet20", 100), {})
    r = call("unlearn.py", "--method", "ssd", "--model", tmp_path / "c100.pth", "--dataset", ARCHIVE,
                   "--data-dir", data_dir, "--forget-class", "cat", "--device", "cpu")
    assert_clean_error(r, "with 100 classes, expected resnet20 with 10")


def test_bf16_runs_the_training_steps_in_bf16_and_leaves_ssd_importances_in_fp32(cifar_jpeg, small):
    model, split = small
    ssd_cfg = SSDConfig(alpha=1.0, batch_size=8)
    fp32, _ = unlearn.run_method(unlearn_ssd, copy.deepcopy(model), *plain_loaders(cifar_jpeg, split, 8), ssd_cfg, CPU)
    bf16, _ = unlearn.run_method(unlearn_ssd, copy.deepcopy(model), *plain_loaders(cifar_jpeg, split, 8), ssd_cfg, CPU,
                                 torch.bfloat16)
    assert all(torch.equal(a, b) for a, b in zip(fp32.parameters(), bf16.parameters()))
    cfg = AdvNegGradConfig(batch_size=16, lr=0.01)
    loaders = [make_loaders(cifar_jpeg, split, cfg, CPU, 0) for _ in range(2)]
    runs = [unlearn.run_method(unlearn_advneggrad, copy.deepcopy(model), *pair, cfg, CPU, amp)[0]
            for pair, amp in zip(loaders, (None, torch.bfloat16))]
    assert all(p.dtype == torch.float32 for p in runs[1].parameters())  # weights stay fp32
    assert not torch.equal(runs[0].fc.weight, runs[1].fc.weight)  # the forward passes really ran in bf16
    assert torch.allclose(runs[0].fc.weight, runs[1].fc.weight, atol=1e-2)



# ----------------------------------------------------- values that do nothing or crash (issue 32)

@pytest.fixture
def untrained(tmp_path):
    """An untrained resnet20 checkpoint: enough for these checks, with no training to wait for."""
    torch.manual_seed(0)
    save_model(str(tmp_path / "m.pth"), build_model("resnet20", 10), {})
    return tmp_path / "m.pth"


def unlearn_tiny(data_dir, model, out, *args):
    return call("unlearn.py", "--model", model, "--dataset", ARCHIVE, "--data-dir", data_dir,
                "--subset", 10, "--test-subset", 10, "--device", "cpu", "--no-eval", "--out", out,
                *args)


BIG = "99999999999999999999"  # 10^20: past every count and seed
COUNT = "must be a positive integer below 2,147,483,648 (2**31)"
RATE = "must be a finite number in (0, inf)"


@pytest.mark.parametrize("args, message", [
    (["--method", "unsir", "--impair-lr", "0"], f"--impair-lr: {RATE}"),
    (["--method", "unsir", "--repair-lr", "0"], f"--repair-lr: {RATE}"),
    (["--method", "unsir", "--noise-lr", "0"], f"--noise-lr: {RATE}"),
    (["--method", "unsir", "--noise-batch", BIG], f"--noise-batch: {COUNT}, got '{BIG}'"),
    (["--method", "unsir", "--retain-per-class", BIG], f"--retain-per-class: {COUNT}"),
    (["--method", "ga", "--seed", BIG], "--seed: must be a non-negative integer seed below "
                                        "9,007,199,254,740,992 (2**53)"),
    (["--method", "ga", "--epochs", "²"], f"--epochs: {COUNT}, got '²'"),
])
def test_values_that_do_nothing_or_overflow_are_one_line(cifar_jpeg, data_dir, untrained, tmp_path,
                                                         args, message):
    r = unlearn_tiny(data_dir, untrained, tmp_path / "u.pth", "--forget-class", "cat", *args)
    assert_clean_error(r, "argument " + message)
    assert not (tmp_path / "u.pth").exists()


def test_boundary_shrink_gets_the_loaders_normalisation_from_the_script(cifar_jpeg, data_dir,
                                                                         untrained, tmp_path):
    """Our Loader normalises with the dataset's mean and std: unlearn.py gives them to
    boundary-shrink, whose attack works on [0, 1] pixels. No flag sets them, and the output's
    identity leaves them out (they follow from the model and the dataset)."""
    r = unlearn_tiny(data_dir, untrained, tmp_path / "u.pth", "--method", "boundary-shrink",
                     "--forget-class", "cat", "--epochs", "1", "--lr", "0.01")
    assert r.returncode == 0, r.stderr
    meta = json.load(open(tmp_path / "u.pth.json"))
    assert meta["config"]["mean"] == list(cifar_jpeg.mean)
    assert meta["config"]["std"] == list(cifar_jpeg.std)
    assert not {"mean", "std"} & set(meta["identity"]["config"])
    r = unlearn_tiny(data_dir, untrained, tmp_path / "v.pth", "--method", "boundary-shrink",
                     "--forget-class", "cat", "--mean", "0")
    assert_clean_error(r, "unrecognized arguments: --mean")


def test_a_unicode_digit_as_the_forget_class_is_an_unknown_class(cifar_jpeg, data_dir, untrained,
                                                                 tmp_path):
    r = unlearn_tiny(data_dir, untrained, tmp_path / "u.pth", "--method", "ssd",
                     "--forget-class", "²")
    assert_clean_error(r, "unknown class '²'; valid: airplane, automobile")


def test_every_learning_rate_flag_refuses_zero():
    """By mechanism: every float field named lr or *_lr, in every method's config and the training
    recipe's, is positive (UNSIR's noise_lr, impair_lr and repair_lr took [0, inf))."""
    from cli import field_type
    from train import TrainConfig
    rates = [f for c in [m[1] for m in METHODS.values()] + [TrainConfig]
             for f in dataclasses.fields(c) if f.name == "lr" or f.name.endswith("_lr")]
    assert {f.name for f in rates} >= {"lr", "noise_lr", "impair_lr", "repair_lr"}
    for f in rates:
        with pytest.raises(Exception, match=r"must be a finite number in \(0, inf\)"):
            field_type(f)("0")


def test_counts_and_seeds_have_sane_bounds():
    from cli import non_negative_int, positive_int, seed_int
    assert positive_int(str(2 ** 31 - 1)) == 2 ** 31 - 1
    assert seed_int(str(2 ** 53 - 1)) == 2 ** 53 - 1
    for parse, text in [(positive_int, str(2 ** 31)), (non_negative_int, str(2 ** 31)),
                        (seed_int, str(2 ** 53)), (positive_int, "0"), (non_negative_int, "-1"),
                        (positive_int, "３"), (seed_int, "²")]:
        with pytest.raises(Exception, match="must be a"):
            parse(text)


def test_lfssd_selecting_no_weight_says_so_as_ssd_does(cifar_jpeg, data_dir, untrained, tmp_path):
    r = unlearn_tiny(data_dir, untrained, tmp_path / "u.pth", "--method", "lfssd",
                     "--forget-class", "cat", "--alpha", "1e30")
    assert r.returncode == 0, r.stderr
    assert "LFSSD dampened no weight: none has a forget importance above alpha = 1e+30" in r.stdout


def test_a_temperature_that_flattens_every_output_is_refused_not_saved(cifar_jpeg, data_dir,
                                                                       untrained, tmp_path):
    """At T = 3e38 both teachers' and the student's softened outputs are exactly uniform: no
    gradient, no weight changes. Said in one line after the run, and nothing is written."""
    r = unlearn_tiny(data_dir, untrained, tmp_path / "u.pth", "--method", "bad-teacher",
                     "--forget-class", "cat", "--temperature", "3e38")
    assert_clean_error(r, "bad-teacher changed no weight with these settings: the model would be "
                          "the input's; nothing was written. Raise --lr, or lower --temperature "
                          "(3e+38)")
    assert not (tmp_path / "u.pth").exists()


@pytest.mark.parametrize("config, advice", [
    (methods.UNSIRConfig(), "Lower --noise-lr or --impair-lr or --repair-lr"),
    (methods.BadTeacherConfig(temperature=1e-45), "Lower --lr, or raise --temperature (1e-45)"),
    (methods.GAConfig(), "Lower --lr"),
])
def test_a_diverged_run_names_the_flags_its_method_has(config, advice):
    def diverge(model, retain_loader, forget_loader, cfg, device):
        with torch.no_grad():
            next(model.parameters()).fill_(float("nan"))
        return model
    with pytest.raises(ValueError, match="diverged") as e:
        unlearn.run_method(diverge, build_model("resnet20", 10), [], [], config, CPU)
    assert str(e.value).endswith(advice)


# ------------------------------------------- project pieces kept out of methods.py (issue 29)

def test_step_images_counts_the_images_one_step_holds():
    """The memory planner's unit: methods that forward a retain and a forget batch before one
    backward hold both (AdvNegGrad 2 x 2500, NegGrad+ 128 + 64); UNSIR its largest batch of
    three; the rest their larger loader."""
    assert unlearn.step_images(methods.AdvNegGradConfig()) == 5000
    assert unlearn.step_images(methods.NegGradPlusConfig()) == 192
    assert unlearn.step_images(methods.UNSIRConfig(noise_batch=300)) == 300
    assert unlearn.step_images(methods.SCRUBConfig()) == 512  # forget_batch_size 512 > batch_size
    assert unlearn.step_images(methods.BadTeacherConfig(batch_size=77)) == 77


def test_a_mask_ratio_that_keeps_no_weight_names_the_flag_in_unlearn_and_the_field_in_methods():
    model = build_model("resnet20", 10)
    with pytest.raises(ValueError, match=r"^--mask-ratio 1e-30 of [\d,]+ weights keeps none"):
        unlearn.check_mask_ratio(methods.SalUnConfig(mask_ratio=1e-30), model)
    with pytest.raises(ValueError, match=r"^mask_ratio 1e-30 of 1,000 weights keeps none"):
        methods.mask_size(1e-30, 1000)
    unlearn.check_mask_ratio(methods.SalUnConfig(), model)  # the published ratio passes
