"""Evaluate checkpoints with the published tables' columns: forget/retain accuracy (loss), top-1/5, MIA.

    python evaluate.py --model checkpoints/resnet18_cifar10_full.pth
    python evaluate.py --model checkpoints/cifar10_resnet18_SSD_3.pth \
        --retrained checkpoints/resnet18_cifar10_no_cat.pth --forget-class cat --mia
    python evaluate.py --model m.pth --dataset ../shared/data/cifar10-jpeg.tar.gz --subset 100 \
        --forget-class cat --mia --device cpu --json out.json
    python evaluate.py --ensemble --model runs/ensemble/seed0.pth --model runs/ensemble/seed1.pth
    python evaluate.py --model ssd.pth --original full.pth --retrained no_cat.pth \
        --forget-class cat --probe

A SISA manifest (.json) evaluates as one model (its shards' vote); --ensemble adds the
mean-softmax ensemble of all --model checkpoints as a row. The membership-inference attack (MIA)
is the NeurIPS 2023 starting kit's simple_mia, hand-rolled: an L2-regularised logistic
regression (C=1) on one raw feature, the per-example cross-entropy loss, scored by 10 stratified
shuffle splits with 10% held out. Members are the forget set; non-members the forgotten class's
test images (class-wise forgetting) or the whole test set (random forgetting). 0.5 means the
attacker cannot tell them apart.

--probe looks beneath the outputs (docs/PRIVACY.md): a linear probe on each model's penultimate
features, their linear CKA to the retrained and the original model, and relearn time.
"""
import argparse
import contextlib
import math
import os
import sys
import time
from copy import deepcopy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cli import (Progress, add_runtime_args, atomic_write, check_out, eval_batch_size, json_of_kind,
                 pick_device, positive_int, read_json, run, sidecar_path, text_of_kind, write_json)
from data import (Loader, add_data_args, common_normalization, describe_split, input_files,
                  load_dataset, split_from_args, with_normalization)
from methods import ieee_fp32
from models import Ensemble, input_size, load_model, normalization_of, to_device
from report import CARD_HEADER, card_table, format_per_class, format_table, headline, in_words


@torch.no_grad()
def predict(model, loader, amp=None):
    """Logits and labels of every example of `loader`, in eval mode, on the CPU.
    amp: autocast dtype or None."""
    model.eval()
    logits, labels = [], []
    with contextlib.nullcontext() if amp else ieee_fp32():  # fp32: IEEE, as the published losses
        for x, y in loader:
            with torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
                logits.append(model(x).float())
            labels.append(y)
    return torch.cat(logits).cpu(), torch.cat(labels).cpu()


def summarize(logits, labels):
    """Accuracy (%), mean loss, top-5 accuracy (%) and the per-example losses of one set."""
    if len(labels) == 0:
        return None
    losses = F.cross_entropy(logits, labels, reduction="none")
    top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
    return {"n": len(labels), "acc": 100 * (logits.argmax(1) == labels).float().mean().item(),
            "loss": losses.mean().item(),
            "top5": 100 * (top5 == labels[:, None]).any(1).float().mean().item(),
            "losses": losses.numpy()}


def confusion_matrix(logits, labels, num_classes):
    """Rows = true class, columns = predicted class."""
    flat = labels * num_classes + logits.argmax(1)
    return torch.bincount(flat, minlength=num_classes ** 2).view(num_classes, num_classes).numpy()


# ----------------------------------------------------------------------------- membership inference

def fit_logistic(x, y, C=1.0, iters=100):
    """argmin_{w,b} 0.5 w^2 + C sum log(1 + exp(-(2y-1)(w x + b))) by damped Newton; the intercept
    is not penalised (scikit-learn's convention). Returns (w, b)."""
    X = np.stack([x, np.ones_like(x)], 1)
    reg = np.array([1.0, 0.0])

    def objective(theta):
        z = X @ theta
        return 0.5 * reg @ theta ** 2 + C * np.sum(np.logaddexp(0, z) - y * z)

    theta = np.zeros(2)
    for _ in range(iters):
        # the sigmoid, without overflow on raw (large) losses
        p = 0.5 + 0.5 * np.tanh(0.5 * (X @ theta))
        grad = C * X.T @ (p - y) + reg * theta
        hess = C * (X.T * (p * (1 - p))) @ X + np.diag(reg) + 1e-12 * np.eye(2)
        step, t = np.linalg.solve(hess, grad), 1.0
        while objective(theta - t * step) > objective(theta) and t > 1e-8:
            t /= 2  # backtracking keeps Newton convergent on (nearly) separable data
        theta = theta - t * step
        if np.abs(t * step).max() < 1e-10:
            break
    return theta


def mia_score(forget_losses, test_losses, n_splits=10, seed=0):
    """Mean held-out accuracy of a logistic-regression attack telling forget (member) losses from
    test (non-member) losses: the NeurIPS 2023 starting kit's simple_mia (scikit-learn's
    LogisticRegression(), C = 1, on the raw loss; StratifiedShuffleSplit, 10 splits, 10% held out);
    groups balanced by random subsampling."""
    rng = np.random.default_rng(seed)
    n = min(len(forget_losses), len(test_losses))
    if n < 2:
        raise ValueError(f"the MIA needs at least 2 examples on each side, got {n}")
    x = np.concatenate([rng.choice(forget_losses, n, replace=False),
                        rng.choice(test_losses, n, replace=False)])
    y = np.concatenate([np.ones(n), np.zeros(n)])
    n_held = math.ceil(0.1 * n)  # per group, so the held-out part is stratified
    accuracies = []
    for _ in range(n_splits):
        held = np.zeros(2 * n, dtype=bool)
        held[np.concatenate([rng.permutation(n)[:n_held], n + rng.permutation(n)[:n_held]])] = True
        # the raw loss, as the kit's LogisticRegression() sees it
        w, b = fit_logistic(x[~held], y[~held])
        accuracies.append(np.mean((x[held] * w + b > 0) == y[held]))
    return float(np.mean(accuracies))


# ----------------------------------------------------------------------------- beneath the outputs

PROBE_PER_CLASS = 500  # train images a class for the probe (docs/CHOICES.md: no source fixes it)
PROBE_SEED = 0  # evaluate.py has no --seed: every run fits its probes on the same sample


@dataclass(frozen=True)
class RelearnConfig:
    """Relearn time: Adam steps on a seeded sample of the forget set until the forget accuracy is
    back at a fraction of the original's. Optimizer, lr, batch, fraction and the check after every
    step: Chundawat et al.'s relearn_time (Zero-Shot Machine Unlearning, IEEE TIFS 2023, its
    Anamnesis Index; ayushkumartarun/zero-shot-unlearning, metrics.py). Training on the forget set
    alone and the cap: ERASURE's compute_relearn_time (aiim-research/ERASURE,
    erasure/evaluations/utils.py: max_epochs=100; here a step is a pass over the sample). The
    sample's size: issue 31's example (docs/CHOICES.md)."""
    samples: int = 64  # forget-set images, drawn with `seed`
    lr: float = 1e-3  # torch.optim.Adam(model.parameters(), lr=lr): no weight decay
    batch_size: int = 256  # a step sees min(batch_size, samples) images: here the whole sample
    fraction: float = 0.95  # the target: (1 - their error_range 0.05) x the original's accuracy
    cap: int = 100  # steps tried; relearn_steps is None when they do not reach the target
    seed: int = 0


def penultimate(model, loader, amp=None):
    """(features, labels) of every image of `loader`: the input of the model's head, the nn.Linear
    that runs last in its forward pass (fc in ours and torchvision's ResNets), in eval mode, as
    float32 on the CPU. An Ensemble's: its members' side by side (concatenated in member order)."""
    if isinstance(model, Ensemble):
        parts = [penultimate(m, loader, amp) for m in model.members]
        return torch.cat([x for x, _ in parts], dim=1), parts[0][1]
    seen = []
    hooks = [m.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
             for m in model.modules() if isinstance(m, torch.nn.Linear)]
    features, labels = [], []
    try:
        model.eval()
        with torch.no_grad(), contextlib.nullcontext() if amp else ieee_fp32():
            for x, y in loader:
                seen.clear()
                with torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
                    model(x)
                if not seen:
                    raise ValueError("--probe: the model has no nn.Linear layer, so no head")
                features.append(seen[-1].float().flatten(1).cpu())  # the last Linear run: the head
                labels.append(y.cpu())
    finally:
        for hook in hooks:
            hook.remove()
    return torch.cat(features), torch.cat(labels)


def fit_probe(x, y, num_classes, C=1.0, iters=500, device="cpu"):
    """argmin_{W,b} 0.5 |W|^2 + C sum_i CE(W x_i + b, y_i): scikit-learn's LogisticRegression()
    (multinomial, L2, C = 1, intercept not penalised), written in torch: full-batch L-BFGS in
    float64 from zero on `device`, at most `iters` iterations, deterministic. It runs in whitened
    coordinates, W = V P with P = (cov(x) + I / (C n))^(-1/2) on centred features (the intercept
    takes the centring back): the same optimum, where raw ReLU features, badly conditioned, take
    L-BFGS thousands of iterations. The objective is divided by n, as scikit-learn's is. Returns
    (W, b), float64 on the CPU."""
    x, y = x.to(device, torch.float64), y.to(device, torch.long)
    mean = x.mean(0)
    centred = x - mean
    ridge = torch.eye(x.shape[1], dtype=x.dtype, device=device) / (C * len(y))
    values, vectors = torch.linalg.eigh(centred.T @ centred / len(y) + ridge)
    p = vectors @ torch.diag(values.rsqrt()) @ vectors.T
    z = centred @ p
    v = torch.zeros(num_classes, x.shape[1], dtype=x.dtype, device=device, requires_grad=True)
    b = torch.zeros(num_classes, dtype=x.dtype, device=device, requires_grad=True)
    optimizer = torch.optim.LBFGS([v, b], lr=1, max_iter=iters, tolerance_grad=1e-12,
                                  tolerance_change=1e-15, history_size=100,
                                  line_search_fn="strong_wolfe")

    def objective():
        optimizer.zero_grad()
        loss = C * F.cross_entropy(z @ v.T + b, y, reduction="sum") + 0.5 * ((v @ p) ** 2).sum()
        (loss / len(y)).backward()
        return loss / len(y)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: a second thread mostly waits (14x slower when busy)
    try:
        with torch.enable_grad():
            optimizer.step(objective)
    finally:
        torch.set_num_threads(threads)
    w = (v @ p).detach()
    return w.cpu(), (b.detach() - w @ mean).cpu()


def probe_sample(data, split, per_class=PROBE_PER_CLASS, seed=PROBE_SEED):
    """Train indices to fit the probe on: as many images of every class (per_class, or the
    smallest class's count), drawn with `seed` from the train set, forget set included (class
    forgetting: the forgotten class's are forget-set images), or from the retain set alone (sample
    forgetting)."""
    pool = split.train if split.forget_class is not None else split.retain
    labels = data.train_y[pool]
    n = min(per_class, min(int((labels == c).sum()) for c in range(len(data.classes))))
    if n == 0:
        raise ValueError("--probe: a class has no train image to fit the probe on; use a larger "
                         "--subset")
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.choice(pool[labels == c], n, replace=False)
                                   for c in range(len(data.classes))]))


def probe_accuracy(fit, evaluated, num_classes, device="cpu"):
    """Accuracy (%) on each (features, labels) of `evaluated` of the probe fitted on `fit`
    (features, labels) on `device`; None for an empty set."""
    w, b = fit_probe(*fit, num_classes, device=device)
    return [None if len(y) == 0 else
            100 * ((x.double() @ w.T + b).argmax(1) == y).double().mean().item()
            for x, y in evaluated]


def linear_cka(x, y):
    """Linear CKA (Kornblith et al., ICML 2019: CKA with linear kernels) of two models' features of
    the same images (rows): |Y^T X|_F^2 / (|X^T X|_F |Y^T Y|_F), each feature centred, in float64.
    1 for the same features, and unchanged by an orthogonal transform or an isotropic scaling of
    either; None when either has no variance."""
    x, y = x.double() - x.double().mean(0), y.double() - y.double().mean(0)
    norm = torch.linalg.matrix_norm
    denominator = norm(x.T @ x) * norm(y.T @ y)
    return None if denominator == 0 else (norm(y.T @ x) ** 2 / denominator).item()


def forget_check_set(split):
    """(indices, train_set) of the images relearn time checks: the forgotten class's test images
    (class forgetting: Chundawat et al.'s val_forget), else the forget set (ERASURE's)."""
    return (split.test_forget, False) if len(split.test_forget) else (split.forget, True)


def relearn_steps(model, data, split, target, device, cfg=RelearnConfig(), batch_size=None):
    """Adam steps (cfg) of a copy of `model`, in train mode, on a seeded sample of the forget set
    (no augmentation) until its accuracy on forget_check_set, checked before every step in eval
    mode, is at least `target` (%): 0 when it already is; None when cfg.cap steps do not bring it
    there. `model` is left as it was."""
    copy = deepcopy(model)
    rng = np.random.default_rng(cfg.seed)
    sample = np.sort(rng.choice(split.forget, min(cfg.samples, len(split.forget)), replace=False))
    batches = Loader(data, sample, train_set=True, batch_size=cfg.batch_size, device=device,
                     shuffle=True, seed=cfg.seed, size=input_size(model))
    indices, train_set = forget_check_set(split)
    check = Loader(data, indices, train_set=train_set, device=device, size=input_size(model),
                   batch_size=batch_size or eval_batch_size(device))
    optimizer = torch.optim.Adam(copy.parameters(), lr=cfg.lr)
    stream = (batch for _ in range(cfg.cap) for batch in batches)  # as many passes as needed
    with ieee_fp32():
        for step in range(cfg.cap + 1):
            logits, labels = predict(copy, check)
            if 100 * (logits.argmax(1) == labels).float().mean().item() >= target:
                return step
            if step == cfg.cap:
                return None
            x, y = next(stream)
            copy.train()
            optimizer.zero_grad()
            F.cross_entropy(copy(x), y).backward()
            optimizer.step()


def beneath_outputs(named, data, split, device, batch_size=None, retrained=None, original=None,
                    cfg=RelearnConfig(), per_class=PROBE_PER_CLASS, amp=None):
    """Adds to the metrics of each (name, model, metrics) of `named` what lies beneath the outputs:
    probe_forget_acc, probe_test_acc (the probe on its penultimate features), cka_retrained and
    cka_original ({"test", "forget"}: linear CKA to the models named `retrained` / `original`;
    None where not given), relearn_steps, relearn_cap and relearn_target (None without an
    original, whose forget accuracy sets the target), and beneath_seconds, the wall time of each
    measure. The two references' features are kept, the others' made one model at a time."""
    batch_size = batch_size or eval_batch_size(device)
    sets = {"fit": (probe_sample(data, split, per_class), True), "test": (split.test, False),
            "forget": (split.forget, True)}
    clocks = {name: {} for name, _, _ in named}

    def features(name, model):
        def loader(indices, train_set):
            return Loader(data, indices, train_set=train_set, batch_size=batch_size, device=device,
                          size=input_size(model))
        start = time.perf_counter()
        f = {key: penultimate(model, Progress(loader(*where), f"features {key}"), amp)
             for key, where in sets.items()}
        clocks[name]["features"] = time.perf_counter() - start
        return f
    models = {name: (model, metrics) for name, model, metrics in named}
    kept = {name: features(name, models[name][0]) for name in (retrained, original) if name}
    target = cfg.fraction * headline(models[original][1])[0]["acc"] if original else None
    in_forget = torch.from_numpy(np.isin(split.test, split.test_forget))
    for name, model, metrics in named:
        f, start = kept.get(name) or features(name, model), time.perf_counter()
        test_x, test_y = f["test"]
        forget = (test_x[in_forget], test_y[in_forget]) if len(split.test_forget) else f["forget"]
        metrics["probe_forget_acc"], metrics["probe_test_acc"] = probe_accuracy(
            f["fit"], [forget, f["test"]], len(data.classes), device)
        clocks[name]["probe"], start = time.perf_counter() - start, time.perf_counter()
        for key, reference in (("cka_retrained", retrained), ("cka_original", original)):
            metrics[key] = reference and {s: linear_cka(f[s][0], kept[reference][s][0])
                                          for s in ("test", "forget")}
        clocks[name]["cka"], start = time.perf_counter() - start, time.perf_counter()
        steps = None if target is None else relearn_steps(model, data, split, target, device, cfg,
                                                          batch_size)
        clocks[name]["relearn"] = time.perf_counter() - start
        metrics.update(relearn_steps=steps, relearn_cap=None if target is None else cfg.cap,
                       relearn_target=target, beneath_seconds=clocks[name])


# --------------------------------------------------------------------------- one model, many models

def evaluate_model(model, data, split, device, batch_size=None, mia=False, amp=None):
    """Every metric of one model on the split: test / test-forget / test-retain /
    train-forget / train-retain summaries, per-class accuracy, confusion matrix and
    (optionally) the MIA. batch_size: eval_batch_size(device) when None; amp: autocast dtype
    of the forward passes, or None (fp32)."""
    batch_size = batch_size or eval_batch_size(device)
    def predict_set(indices, label, train_set):
        loader = Loader(data, indices, train_set=train_set, batch_size=batch_size, device=device,
                        size=input_size(model))
        return predict(model, Progress(loader, f"evaluating {label}"), amp)

    logits, labels = predict_set(split.test, "test", train_set=False)
    in_forget = torch.from_numpy(np.isin(split.test, split.test_forget))
    confusion = confusion_matrix(logits, labels, len(data.classes))
    metrics = {
        "test": summarize(logits, labels),
        "test_forget": summarize(logits[in_forget], labels[in_forget]),
        "test_retain": summarize(logits[~in_forget], labels[~in_forget]),
        "train_forget": (summarize(*predict_set(split.forget, "train forget", train_set=True))
                         if len(split.forget) else None),
        "train_retain": summarize(*predict_set(split.retain, "train retain", train_set=True)),
        "per_class": (100 * confusion.diagonal() / np.maximum(confusion.sum(1), 1)).tolist(),
        "confusion": confusion.tolist(),
        "mia": None,
    }
    if mia and metrics["train_forget"]:
        nonmembers = metrics["test_forget"] or metrics["test"]
        metrics["mia"] = mia_score(metrics["train_forget"]["losses"], nonmembers["losses"])
        if isinstance(model, Ensemble):
            metrics["member_mia"] = [member_mia(m, data, split, device, batch_size, amp)
                                     for m in model.members]
    return metrics


def member_mia(model, data, split, device, batch_size, amp=None):
    """The MIA of one ensemble member (a SISA shard model) on the same forget / non-member sets."""
    def losses(indices, train_set):
        loader = Loader(data, indices, train_set=train_set, batch_size=batch_size, device=device,
                        size=input_size(model))
        return summarize(*predict(model, loader, amp))["losses"]
    return mia_score(losses(split.forget, True),
                     losses(split.test_forget if len(split.test_forget) else split.test, False))


def load_evaluable(path, num_classes, aggregate=None):
    """A checkpoint, or a SISA manifest (.json, from sisa.py train or sisa.py unlearn) as one
    Ensemble of its shard models, aggregated as the manifest says unless `aggregate` is given."""
    if not path.endswith(".json"):
        return load_model(path, num_classes=num_classes)
    manifest = read_json(path)
    if (not isinstance(manifest, dict) or not isinstance(manifest.get("members"), list)
            or "aggregate" not in manifest):
        raise ValueError(f"{path} is not a SISA manifest of this project (no members / aggregate); "
                         "write one with sisa.py train")
    members = manifest["members"]
    if not members or not all(isinstance(m, str) and m and os.path.basename(m) == m
                              and m not in (".", "..") for m in members):
        raise ValueError(f"{path}: members must be a non-empty list of checkpoint file names "
                         f"beside it, got {members!r:.80}")
    if (aggregate or manifest["aggregate"]) not in ("vote", "mean-softmax"):
        raise ValueError(f"{path}: aggregate is {manifest['aggregate']!r}; vote or mean-softmax")
    folder = os.path.dirname(path)
    members = [load_model(os.path.join(folder, m), num_classes=num_classes)
               for m in manifest["members"]]
    return Ensemble(members, aggregate or manifest["aggregate"])


def strip_losses(metrics, keep=()):
    """Metrics for JSON: per-example losses dropped
    (they are large) except those of the sets named in keep."""
    return {k: ({kk: vv for kk, vv in v.items() if kk != "losses" or k in keep}
                if isinstance(v, dict) else v)
            for k, v in metrics.items()}


def evaluated_files(args):
    """Every file an evaluation reads: the checkpoints (sidecars go with them), the members a SISA
    manifest names (a manifest that cannot be read is refused later, when it is loaded), the data
    (data.input_files)."""
    paths = [p for p in [args.retrained, args.original, *args.model] if p] + input_files(args)
    for manifest in [p for p in paths if p.endswith(".json") and os.path.isfile(p)]:
        try:
            members = read_json(manifest).get("members") or []
            paths += [os.path.join(os.path.dirname(manifest), m)
                      for m in members if isinstance(m, str)]
        except (ValueError, OSError, AttributeError):
            pass
    return paths


def parse_args(argv=None):
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", default=[],
                        help="checkpoint to evaluate: a path, an https:// URL or "
                        "hf://OWNER/REPO[@REV]/FILE, downloaded once; #sha256=HEX checks it; "
                        "repeat for several")
    parser.add_argument("--table", nargs="+", default=None,
                        help="instead: build the model cards' per-class table from the JSON "
                        "sidecars of these unlearn.py checkpoints (or the sidecars themselves), to "
                        "stdout or --out (default: off)")
    parser.add_argument("--out", default=None, help="with --table: write the Markdown table to "
                        "this file (default: stdout)")
    parser.add_argument("--retrained", default=None,
                        help="the retrained (gold standard) checkpoint, named as --model: "
                        "evaluated too, and every model's average gap to it reported "
                        "(default: none)")
    parser.add_argument("--mia", action="store_true",
                        help="run the membership-inference attack (default: off)")
    parser.add_argument("--probe", action="store_true", help="beneath the outputs: a linear probe "
                        "on each model's penultimate features, their linear CKA to the "
                        "--retrained and --original models, relearn steps (with --original); "
                        "docs/PRIVACY.md (default: off)")
    parser.add_argument("--original", default=None, help="with --probe: the model before "
                        "unlearning, named as --model, evaluated too (unless it is a --model): "
                        "the reference of cka_original and of relearn time (default: none)")
    parser.add_argument("--ensemble", action="store_true",
                        help="also evaluate the --model checkpoints as one ensemble (default: off)")
    parser.add_argument("--aggregate", choices=("mean-softmax", "vote"), default=None,
                        help="how an ensemble combines its members: mean-softmax, or majority vote "
                        "(default: mean-softmax; a SISA manifest's own)")
    parser.add_argument("--json", default=None,
                        help="write every metric to this JSON file (default: none)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --json / --out that this script did not write "
                        "(default: refuse)")
    parser.add_argument("--losses", action="store_true",
                        help="keep in --json the per-example losses of the train and test forget "
                        "sets, what the MIA sees (default: off)")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="evaluation batch size (default: "
                        f"{eval_batch_size(torch.device('cuda'))} on a GPU, "
                        f"{eval_batch_size(torch.device('cpu'))} on a CPU)")
    add_runtime_args(parser, precision="fp32", seed=None)  # fp32 (IEEE): the published losses are
    add_data_args(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.table:
        if args.out:
            check_out(args.out, "--out", args.table, text_of_kind(CARD_HEADER.split("\n")[0]),
                      args.overwrite)
        table = card_table([p if p.endswith(".json") else sidecar_path(p) for p in args.table])
        (atomic_write(args.out, lambda f: f.write(table.encode())) if args.out
         else print(table, end=""))
        return
    if not args.model:
        raise ValueError("give --model (or --table)")
    if args.json:
        check_out(args.json, "--json", evaluated_files(args), json_of_kind("evaluation"),
                  args.overwrite)
    if args.original and not args.probe:
        raise ValueError("--original is the reference of --probe's measures: give --probe too")
    data = load_dataset(args.dataset, args.data_dir)
    paths = ([args.retrained] if args.retrained else []) + args.model
    if args.original and args.original not in paths:  # a row of its own, after the retrained model
        paths.insert(int(bool(args.retrained)), args.original)
    data = with_normalization(data, common_normalization({p: normalization_of(p) for p in paths}),
                              paths[0])
    split = split_from_args(args, data)
    if args.probe and len(split.forget) == 0:
        raise ValueError("--probe measures forgetting: give --forget-class, --forget-fraction, "
                         "--forget-indices or --forget-positions")
    # fail on a bad file before any work
    models = [load_evaluable(p, len(data.classes), args.aggregate) for p in paths]
    if args.ensemble:
        members = models[len(paths) - len(args.model):]  # the --model ones
        ensemble = Ensemble(members, args.aggregate or "mean-softmax")
        paths, models = paths + ["ensemble"], models + [ensemble]
    device, amp = pick_device(args.device, args.precision)
    rows = [(p, evaluate_model(to_device(m, device), data, split, device, args.batch_size,
                               args.mia, amp))
            for p, m in zip(paths, models)]
    if args.probe:  # before the JSON: it holds these measures too
        named = [(p, m, metrics) for (p, metrics), m in zip(rows, models)]
        beneath_outputs(named, data, split, device, args.batch_size, args.retrained, args.original,
                        amp=amp)
    if args.json:  # first: the evaluation is kept whatever the printing below meets
        kept = ("train_forget", "test_forget") if args.losses else ()
        write_json(args.json, {"kind": "evaluation", "dataset": data.name, "classes": data.classes,
                               "retrained": args.retrained,
                               "split": describe_split(split, data.classes),
                               "models": {p: strip_losses(m, kept) for p, m in rows}})
    reference = rows[0][1] if args.retrained else None
    print(format_table(rows, reference))
    if len(data.classes) <= 20:
        print("\n" + format_per_class(rows, data.classes))
    if split.forget_class is not None:
        print("\n" + in_words(rows, data.classes[split.forget_class], args.retrained))


if __name__ == "__main__":
    run(main)
