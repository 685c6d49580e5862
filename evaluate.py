"""Evaluate checkpoints with the published tables' columns: forget/retain accuracy (loss), top-1/5, MIA.

    python evaluate.py --model checkpoints/resnet18_cifar10_full.pth
    python evaluate.py --model checkpoints/cifar10_resnet18_SSD_3.pth --retrained checkpoints/resnet18_cifar10_no_cat.pth --forget-class cat --mia
    python evaluate.py --model m.pth --dataset ../shared/data/cifar10-jpeg.tar.gz --subset 100 --forget-class cat --mia --device cpu --json out.json
    python evaluate.py --ensemble --model runs/ensemble/seed0.pth --model runs/ensemble/seed1.pth

A SISA manifest (.json) evaluates as one model (its shards' vote); --ensemble adds the mean-softmax ensemble of
all --model checkpoints as a row. The membership-inference attack (MIA) is the NeurIPS 2023 starting kit's
simple_mia, hand-rolled: an L2-regularised logistic regression (C=1) on one raw feature, the per-example
cross-entropy loss, scored by 10 stratified shuffle splits with 10% held out. Members are the forget set;
non-members the forgotten class's test images (class-wise forgetting) or the whole test set (random forgetting).
0.5 means the attacker cannot tell them apart.
"""
import argparse
import contextlib
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

from cli import (Progress, add_runtime_args, atomic_write, check_out, eval_batch_size, json_of_kind, pick_device,
                 positive_int, read_json, run, text_of_kind, write_json)
from data import (Loader, add_data_args, common_normalization, describe_split, load_dataset, split_from_args,
                  with_normalization)
from methods import ieee_fp32
from models import Ensemble, input_size, load_model, normalization_of, to_device
from report import CARD_HEADER, card_table, format_per_class, format_table, in_words


@torch.no_grad()
def predict(model, loader, amp=None):
    """Logits and labels of every example of `loader`, in eval mode, on the CPU. amp: autocast dtype or None."""
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
            "loss": losses.mean().item(), "top5": 100 * (top5 == labels[:, None]).any(1).float().mean().item(),
            "losses": losses.numpy()}


def confusion_matrix(logits, labels, num_classes):
    """Rows = true class, columns = predicted class."""
    flat = labels * num_classes + logits.argmax(1)
    return torch.bincount(flat, minlength=num_classes ** 2).view(num_classes, num_classes).numpy()


# ----------------------------------------------------------------------------- membership inference

def fit_logistic(x, y, C=1.0, iters=100):
    """argmin_{w,b} 0.5 w^2 + C sum log(1 + exp(-(2y-1)(w x + b))) by damped Newton; the intercept is
    not penalised (scikit-learn's convention). Returns (w, b)."""
    X = np.stack([x, np.ones_like(x)], 1)
    reg = np.array([1.0, 0.0])

    def objective(theta):
        z = X @ theta
        return 0.5 * reg @ theta ** 2 + C * np.sum(np.logaddexp(0, z) - y * z)

    theta = np.zeros(2)
    for _ in range(iters):
        p = 0.5 + 0.5 * np.tanh(0.5 * (X @ theta))  # the sigmoid, without overflow on raw (large) losses
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
    """Mean held-out accuracy of a logistic-regression attack telling forget (member) losses from test
    (non-member) losses: the NeurIPS 2023 starting kit's simple_mia (scikit-learn's LogisticRegression(), C = 1,
    on the raw loss; StratifiedShuffleSplit, 10 splits, 10% held out); groups balanced by random subsampling."""
    rng = np.random.default_rng(seed)
    n = min(len(forget_losses), len(test_losses))
    if n < 2:
        raise ValueError(f"the MIA needs at least 2 examples on each side, got {n}")
    x = np.concatenate([rng.choice(forget_losses, n, replace=False), rng.choice(test_losses, n, replace=False)])
    y = np.concatenate([np.ones(n), np.zeros(n)])
    n_held = math.ceil(0.1 * n)  # per group, so the held-out part is stratified
    accuracies = []
    for _ in range(n_splits):
        held = np.zeros(2 * n, dtype=bool)
        held[np.concatenate([rng.permutation(n)[:n_held], n + rng.permutation(n)[:n_held]])] = True
        w, b = fit_logistic(x[~held], y[~held])  # the raw loss, as the kit's LogisticRegression() sees it
        accuracies.append(np.mean((x[held] * w + b > 0) == y[held]))
    return float(np.mean(accuracies))


# ----------------------------------------------------------------------------- one model, many models

def evaluate_model(model, data, split, device, batch_size=None, mia=False, amp=None):
    """Every metric of one model on the split: test / test-forget / test-retain / train-forget /
    train-retain summaries, per-class accuracy, confusion matrix and (optionally) the MIA.
    batch_size: eval_batch_size(device) when None; amp: autocast dtype of the forward passes, or None (fp32)."""
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
        "train_forget": summarize(*predict_set(split.forget, "train forget", train_set=True)) if len(split.forget) else None,
        "train_retain": summarize(*predict_set(split.retain, "train retain", train_set=True)),
        "per_class": (100 * confusion.diagonal() / np.maximum(confusion.sum(1), 1)).tolist(),
        "confusion": confusion.tolist(),
        "mia": None,
    }
    if mia and metrics["train_forget"]:
        nonmembers = metrics["test_forget"] or metrics["test"]
        metrics["mia"] = mia_score(metrics["train_forget"]["losses"], nonmembers["losses"])
        if isinstance(model, Ensemble):
            metrics["member_mia"] = [member_mia(m, data, split, device, batch_size, amp) for m in model.members]
    return metrics


def member_mia(model, data, split, device, batch_size, amp=None):
    """The MIA of one ensemble member (a SISA shard model) on the same forget / non-member sets."""
    def losses(indices, train_set):
        loader = Loader(data, indices, train_set=train_set, batch_size=batch_size, device=device,
                        size=input_size(model))
        return summarize(*predict(model, loader, amp))["losses"]
    return mia_score(losses(split.forget, True), losses(split.test_forget if len(split.test_forget) else split.test, False))


def load_evaluable(path, num_classes, aggregate=None):
    """A checkpoint, or a SISA manifest (.json, from train.py --sisa or unlearn.py --method sisa) as one Ensemble
    of its shard models, aggregated as the manifest says unless `aggregate` is given."""
    if not path.endswith(".json"):
        return load_model(path, num_classes=num_classes)
    manifest = read_json(path)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("members"), list) or "aggregate" not in manifest:
        raise ValueError(f"{path} is not a SISA manifest of this project (no members / aggregate); write one with "
                         f"train.py --sisa")
    members = manifest["members"]
    if not members or not all(isinstance(m, str) and m and os.path.basename(m) == m and m not in (".", "..")
                              for m in members):
        raise ValueError(f"{path}: members must be a non-empty list of checkpoint file names beside it, got "
                         f"{members!r:.80}")
    if (aggregate or manifest["aggregate"]) not in ("vote", "mean-softmax"):
        raise ValueError(f"{path}: aggregate is {manifest['aggregate']!r}; vote or mean-softmax")
    folder = os.path.dirname(path)
    members = [load_model(os.path.join(folder, m), num_classes=num_classes) for m in manifest["members"]]
    return Ensemble(members, aggregate or manifest["aggregate"])


def strip_losses(metrics, keep=()):
    """Metrics for JSON: per-example losses dropped (they are large) except those of the sets named in keep."""
    return {k: ({kk: vv for kk, vv in v.items() if kk != "losses" or k in keep} if isinstance(v, dict) else v)
            for k, v in metrics.items()}


def evaluated_files(args):
    """Every file an evaluation reads: the checkpoints (sidecars go with them), and the members a SISA manifest
    names (a manifest that cannot be read is refused later, when it is loaded)."""
    paths = [p for p in [args.retrained, *args.model] if p]
    for manifest in [p for p in paths if p.endswith(".json") and os.path.isfile(p)]:
        try:
            members = read_json(manifest).get("members") or []
            paths += [os.path.join(os.path.dirname(manifest), m) for m in members if isinstance(m, str)]
        except (ValueError, OSError, AttributeError):
            pass
    return paths


def parse_args(argv=None):
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", default=[], help="checkpoint to evaluate: a path, an https:// "
                        "URL or hf://OWNER/REPO[@REV]/FILE, downloaded once; #sha256=HEX checks it; repeat for several")
    parser.add_argument("--table", nargs="+", default=None, help="instead: build the model cards' per-class table "
                        "from these unlearn.py JSON sidecars, to stdout or --out (default: off)")
    parser.add_argument("--out", default=None, help="with --table: write the Markdown table to this file (default: stdout)")
    parser.add_argument("--retrained", default=None, help="the retrained (gold standard) checkpoint, named "
                        "as --model: evaluated too, and every model's average gap to it reported (default: none)")
    parser.add_argument("--mia", action="store_true", help="run the membership-inference attack (default: off)")
    parser.add_argument("--ensemble", action="store_true", help="also evaluate the --model checkpoints as one ensemble "
                        "(default: off)")
    parser.add_argument("--aggregate", choices=("mean-softmax", "vote"), default=None, help="how an ensemble combines its "
                        "members: mean-softmax, or majority vote (default: mean-softmax; a SISA manifest's own)")
    parser.add_argument("--json", default=None, help="write every metric to this JSON file (default: none)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json / --out that this "
                        "script did not write (default: refuse)")
    parser.add_argument("--losses", action="store_true", help="keep in --json the per-example losses of the train and "
                        "test forget sets, what the MIA sees (default: off)")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="evaluation batch size (default: 1000 on a GPU, 128 on a CPU)")
    add_runtime_args(parser, precision="fp32", seed=None)  # fp32 (IEEE): the published losses are
    add_data_args(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.table:
        if args.out:
            check_out(args.out, "--out", args.table, text_of_kind(CARD_HEADER.split("\n")[0]), args.overwrite)
        table = card_table(args.table)
        atomic_write(args.out, lambda f: f.write(table.encode())) if args.out else print(table, end="")
        return
    if not args.model:
        raise ValueError("give --model (or --table)")
    if args.json:
        check_out(args.json, "--json", evaluated_files(args), json_of_kind("evaluation"), args.overwrite)
    data = load_dataset(args.dataset, args.data_dir)
    paths = ([args.retrained] if args.retrained else []) + args.model
    data = with_normalization(data, common_normalization({p: normalization_of(p) for p in paths}), paths[0])
    split = split_from_args(args, data)
    models = [load_evaluable(p, len(data.classes), args.aggregate) for p in paths]  # fail on a bad file before any work
    if args.ensemble:
        paths, models = paths + ["ensemble"], models + [Ensemble(models[int(bool(args.retrained)):],
                                                                  args.aggregate or "mean-softmax")]
    device, amp = pick_device(args.device, args.precision)
    rows = [(p, evaluate_model(to_device(m, device), data, split, device, args.batch_size, args.mia, amp))
            for p, m in zip(paths, models)]
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
