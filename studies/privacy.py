"""Did it really forget? Per-example tests over pools of models: the NeurIPS 2023 competition score, KLOM, U-LiRA.

    make pool-small                      # a CPU toy pool (resnet20, N = 8), its scores and its report section
    make ulira-small                     # a CPU toy of U-LiRA's random-halves design, with its ceiling
    python -m studies.privacy outputs --model runs/pools/P/ssd/s0.pth --forget-class cat \\
        --out runs/pools/P/ssd/s0.npz
    python -m studies.privacy score runs/pools/P   # every score of a pool: runs/pools/P/scores.json

A pool folder holds one subfolder per group of models, `retrain/` (the reference: trained without the forget set,
seeds 0..N-1), `original/` and one per unlearning method, each model `s<k>.pth` with its outputs `s<k>.npz` (see
`write_outputs` for the format; every .npz of a group folder is a model's, named exactly so, and checked
whole by read_outputs before any score). Every score compares a group's first N/2 models with the retrained
models N/2..N-1; the retrained models 0..N/2-1 against the same reference give the ceiling (retrain vs
retrain).
A halves pool (`make ulira`) is U-LiRA's own design instead: `original/h<k>` trained on the random half k of the
train set, `<method>/h<k>_f<j>` that model after forgetting the random forget set j drawn inside its half,
`retrain/h<k>_f<j>` the half without it; scored by U-LiRA with each half's models held out in turn. A pool
holds one kind of model files; `outputs` checks the model's sidecar against its flags (check_made_with).
"""
import argparse
import dataclasses
import io
import os
import re
import shlex
import sys
import unicodedata
import zipfile

import numpy as np
import torch
import torch.nn.functional as F

from cli import (Progress, add_runtime_args, atomic_write, check_out, eval_batch_size, float_in,
                 glue_values, json_of_kind, lock, non_negative_int, pick_device, positive_int,
                 read_json, run, write_json)
from data import (Loader, add_data_args, describe_split, input_files, load_dataset,
                  split_from_args, subset_indices, with_normalization)
from evaluate import mia_score, predict
from models import (fetch, finished, input_size, is_remote, load_model, normalization_of,
                    sha256_file, sidecar_path, to_device)
from report import METHOD_ORDER

# The competition's scorer (Triantafillou et al., arXiv 2406.09073; google-deepmind/unlearning_evaluation metric.py)
DELTA = 1e-5  # delta of the (epsilon, delta) test
EPSILON_CAP = 50  # the largest epsilon an example can get (also the "peaky" case's)
THRESHOLDS_PER_UNIT = 100  # threshold grid: 100 per unit of logit-scaled confidence
BUFFER = 2.0  # the double-threshold grid reaches this far beyond the peakier distribution
BUCKET = 0.5  # epsilon buckets of width 0.5 score 1, 1/2, 1/4, ...
PEAKY = 0.01  # one side's range under 1% of the other's: the worst epsilon, without a test
# KLOM (Georgiev et al., arXiv 2410.23232; the reference code's compute_binned_KL_div, data-unlearning-bench)
KLOM_BINS = 20
KLOM_EPS = 1e-5  # floor of the retrained histogram where the unlearned one has mass
KLOM_CLIP = 100.0  # margins clipped to [-100, 100] before binning
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
STD_FLOOR = 1e-3  # U-LiRA: a std of 0 (identical shadow models) would make the likelihood ratio infinite
MIN_SHADOWS = 2  # U-LiRA: an example is attacked where at least this many shadow values fit each Gaussian
GROUPS = ("forget", "retain", "test")  # the example sets of an outputs file
KEYS = [f"{s}_{x}" for s in GROUPS for x in ("logits", "labels", "index")] + ["forget_class"]  # of every file
HALVES_KEYS = ["train_lsc", "train_index", "half_index", "keep_half"]  # and of a halves pool's
SCORES_KIND = "pool-scores"  # scores.json's "kind": what a rerun may replace
STAMP_KEYS = ["source", "source_sha256", "split_sha256"]  # which model file and split (the scores skip them)
NUMBER = r"(0|[1-9][0-9]*)"  # no leading zeros: s01 and s1 would be one seed counted twice
NAMES = {"seeds": re.compile(rf"s{NUMBER}\.npz"), "halves": re.compile(rf"h{NUMBER}(_f{NUMBER})?\.npz")}


# ----------------------------------------------------------------------------- per-model outputs

def retain_sample(split, size, seed=0):
    """A fixed sample of the retain set (seeded, sorted): the same examples for every model of a pool."""
    if size >= len(split.retain):
        return split.retain
    return np.sort(np.random.default_rng(seed).choice(split.retain, size, replace=False))


def outputs_plan(split, retain_size, every=None):
    """The arrays of an outputs file that the flags decide: its examples (S_index), forget_class and, for a
    halves pool's model (`every`), train_index, half_index and keep_half."""
    plan = {"forget_class": -1 if split.forget_class is None else split.forget_class,
            "forget_index": split.forget, "retain_index": retain_sample(split, retain_size),
            "test_index": split.test}
    if every is not None:
        plan.update(train_index=every, half_index=split.train, keep_half=split.keep_half)
    return {key: np.asarray(value, dtype=np.int64) for key, value in plan.items()}


def write_outputs(path, model, data, split, device, retain_size, every=None, stamp=None, amp=None):
    """One model's logits on the pool's examples, as an .npz of plain arrays (np.load(path) reads it without pickle):
    for each set S of forget (the train forget set), retain (a fixed sample of the train retain set) and test
    (the test set): S_logits (examples x classes, float32), S_labels and S_index (indices into the dataset's train
    or test arrays); forget_class (-1 for sample forgetting). For a model of a halves pool, `every` (every train
    index in use, both halves) adds train_lsc (its logit-scaled confidence on each, float32: 4 bytes an example
    whatever the number of classes), train_index (= every), half_index (the model's half) and keep_half.
    stamp: {key: text} saved as unicode string arrays (STAMP_KEYS: which model file, which split)."""
    plan = outputs_plan(split, retain_size, every)
    sets = {"forget": (plan["forget_index"], True), "retain": (plan["retain_index"], True),
            "test": (plan["test_index"], False)}
    if every is not None:
        sets["train"] = (plan["train_index"], True)
    arrays = {"forget_class": plan["forget_class"]}
    for name, (indices, train_set) in sets.items():
        if len(indices):
            loader = Loader(data, indices, train_set=train_set, batch_size=eval_batch_size(device), device=device,
                            size=input_size(model))
            logits, labels = predict(model, Progress(loader, f"outputs on {name}"), amp)
        else:  # an original of a halves pool forgets nothing
            logits, labels = torch.zeros(0, len(data.classes)), torch.zeros(0, dtype=torch.int64)
        arrays.update({f"{name}_logits": logits.numpy().astype(np.float32, copy=False),
                       f"{name}_labels": labels.numpy().astype(np.int64, copy=False),
                       f"{name}_index": indices})
    if every is not None:
        train_logits, train_labels = arrays.pop("train_logits"), arrays.pop("train_labels")
        arrays.update({"train_lsc": logit_scaled_confidence(train_logits, train_labels).astype(np.float32),
                       "half_index": plan["half_index"], "keep_half": plan["keep_half"]})
    problem = outputs_problem(arrays, halves=every is not None)
    if problem:  # finite weights can still overflow: a file that every score would refuse is not written
        raise ValueError(f"{path} not written: the model's {problem}")
    arrays.update({key: np.array(text, dtype=str) for key, text in (stamp or {}).items()})  # no pickle
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def read_stamp(path):
    """The STAMP_KEYS of an outputs file as text, or None where it is not an outputs file that has them."""
    try:
        with np.load(path, allow_pickle=False) as z:
            stamp = {key: z[key] for key in STAMP_KEYS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if not all(x.dtype.kind == "U" and x.shape == () for x in stamp.values()):
        return None
    return {key: str(x) for key, x in stamp.items()}


def outputs_of(model):
    """mine= for check_out: an outputs file of this model file (its sha256), or of an earlier version of the
    file at this path (its outputs are stale: a rerun replaces them)."""
    def mine(path):
        stamp = read_stamp(path)
        return stamp is not None and (stamp["source"] == source_name(model) or
                                      stamp["source_sha256"] == sha256_file(fetch(model)))
    return mine


def source_name(model):
    return model if is_remote(model) else os.path.realpath(model)


def check_made_with(model, sha, split, classes):
    """The split the model was made with, as its sidecar records it (train.py, unlearn.py), against the
    flags' split: a model trained on another half, or retrained without / unlearned another forget set, would
    give the scores a wrong ground truth. A model without a sidecar recording a split is taken on the flags'
    word, with a warning."""
    sidecar = sidecar_path(model)
    meta = read_json(sidecar) if not is_remote(model) and os.path.isfile(sidecar) else {}
    recorded = meta.get("split") if isinstance(meta, dict) else None
    if not isinstance(recorded, dict):
        return print(f"warning: {model} has no sidecar that records its split ({sidecar}): that it was made "
                     f"with these flags' half and forget set is not checked", file=sys.stderr)
    if meta.get("sha256") not in (None, sha):  # a copied checkpoint, or a run stopped between the two files
        raise ValueError(f"{sidecar} describes another checkpoint than {model} (another sha256); make the "
                         f"model again, or remove the sidecar to take the model on the flags' word")
    problem = split_problem(recorded, split, classes)
    if problem:
        raise ValueError(f"{model} was made {problem} (its sidecar {sidecar}): its outputs would be scored "
                         f"against a wrong ground truth; give the flags it was made with")


def split_problem(recorded, split, classes):
    """How a model's recorded split (data.describe_split) differs from the flags' `split`, or None. The half
    must be the same; a model made for a forget set (retrained without it, or unlearned) must have had this
    one; an original (no forget set) must have been trained on every image of the flags' split. The sha256
    covers the validation set too: a model trained with one (--val-fraction) is checked on the rest only."""
    if "keep_half" in recorded and recorded["keep_half"] != split.keep_half:
        return f"on {half_phrase(recorded['keep_half'])}, not {half_phrase(split.keep_half)}"
    if recorded.get("n_forget"):  # retrained without a forget set, or unlearned one: it must be this one
        if "forget_class_index" in recorded and recorded["forget_class_index"] != split.forget_class:
            flags = None if split.forget_class is None else classes[split.forget_class]
            return f"for {class_phrase(recorded.get('forget_class'))}, not {class_phrase(flags)}"
        if recorded.get("forget_indices") not in (None, split.forget.tolist()):
            return ("for another forget set than the flags' (--forget-fraction, --forget-seed or "
                    "--forget-indices)")
        expected = split
    else:  # an original: trained on the flags' forget set as well
        expected = dataclasses.replace(split, forget=split.forget[:0], retain=split.train)
    digest = describe_split(expected, classes)["sha256"]
    if not recorded.get("n_val") and recorded.get("sha256") not in (None, digest):
        return "on other images than the flags' split (another --subset, --keep-half or forget set)"
    return None


def half_phrase(k):
    return "every train image (no --keep-half)" if k is None else f"the random half {k} (--keep-half {k})"


def class_phrase(name):
    return "a forget set of no class" if name is None else f"the forget class {name}"


def up_to_date(path, stamp, plan, classes):
    """Whether `path` already holds these outputs: the same model file (sha256) and split, the same examples
    and settings (plan), the same classes, and a file every score reads."""
    try:
        arrays = read_outputs(path, KEYS + STAMP_KEYS + (HALVES_KEYS if "keep_half" in plan else []))
    except ValueError:
        return False
    return (all(str(arrays[key]) == stamp[key] for key in ("source_sha256", "split_sha256"))
            and arrays["forget_logits"].shape[1] == classes
            and all(arrays[key].shape == value.shape and np.array_equal(arrays[key], value)
                    for key, value in plan.items()))


def read_outputs(path, keys):
    """One outputs file's arrays (no pickle), or one line naming the file when it is not one with `keys`, or
    not what the format promises (outputs_problem)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {key: z[key] for key in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # BadZipFile: a truncated .npz
        raise ValueError(f"{path}: not an outputs file of privacy.py ({e}); delete it and make it again") from None
    missing = [key for key in keys if key not in arrays]
    if missing:
        raise ValueError(f"{path}: not an outputs file of this pool's kind (no {', '.join(missing)}); delete it and "
                         f"make it again")
    problem = outputs_problem(arrays, halves="train_lsc" in keys)
    if problem:
        raise ValueError(f"{path}: {problem}; delete it and make it again")
    return arrays


def outputs_problem(a, halves=False):
    """What is wrong with an outputs file's arrays, as a phrase, or None: each set's logits float32
    examples x classes (the same classes), finite; its labels and index int64, one per example; labels among
    the classes; forget_class a class or -1; retain and test sets not empty (every score reads them);
    halves: halves_problem."""
    classes = a["forget_logits"].shape[-1] if a["forget_logits"].ndim == 2 else 0
    for s in GROUPS:
        problem = set_problem(s, a[f"{s}_logits"], a[f"{s}_labels"], a[f"{s}_index"], classes)
        if problem:
            return problem
    forget_class = a["forget_class"]
    if not (forget_class.dtype == np.int64 and forget_class.shape == () and -1 <= forget_class < classes):
        return f"forget_class is {forget_class.dtype} {forget_class.tolist()}, not an int64 class or -1"
    empty = [s for s in ("retain", "test") if not len(a[f"{s}_index"])]
    if empty:
        return f"its {empty[0]} set is empty (every score reads it)"
    return halves_problem(a) if halves else None


def set_problem(s, logits, labels, index, classes):
    """What is wrong with one example set's arrays of an outputs file (see outputs_problem), or None."""
    if logits.dtype != np.float32 or logits.ndim != 2 or logits.shape[1] != classes or classes < 2:
        return (f"{s}_logits is {logits.dtype} of shape {logits.shape}, not float32 examples x classes "
                f"(2 or more, as many as forget_logits')")
    for name, x in (("labels", labels), ("index", index)):
        if x.dtype != np.int64 or x.shape != (len(logits),):
            return f"{s}_{name} is {x.dtype} of shape {x.shape}, not int64 of shape ({len(logits)},)"
    bad = np.count_nonzero(~np.isfinite(logits))
    if bad:
        return f"{s}_logits holds {bad} NaN or infinite values"
    if len(index) and (labels.min() < 0 or labels.max() >= classes or index.min() < 0):
        return f"{s}_labels or {s}_index hold values out of range (labels 0..{classes - 1}, indices >= 0)"
    return None


def halves_problem(a):
    """What is wrong with a halves pool model's own arrays (train_lsc float32 and train_index int64 of one
    length, half_index int64 inside train_index, keep_half an int64 >= 0, the forget set inside the half),
    or None: they decide which examples count as forgotten or never seen."""
    lsc, every, half, keep = a["train_lsc"], a["train_index"], a["half_index"], a["keep_half"]
    if lsc.dtype != np.float32 or lsc.ndim != 1 or every.dtype != np.int64 or every.shape != lsc.shape:
        return (f"train_lsc ({lsc.dtype} {lsc.shape}) and train_index ({every.dtype} {every.shape}) are not "
                f"float32 and int64 of one length")
    if np.count_nonzero(~np.isfinite(lsc)):
        return f"train_lsc holds {np.count_nonzero(~np.isfinite(lsc))} NaN or infinite values"
    if half.dtype != np.int64 or half.ndim != 1 or not len(half) or not np.isin(half, every).all():
        return f"half_index ({half.dtype} {half.shape}) is not int64 indices among train_index"
    if not (keep.dtype == np.int64 and keep.shape == () and keep >= 0):
        return f"keep_half is {keep.dtype} {keep.tolist()}, not an int64 >= 0"
    if not np.isin(a["forget_index"], half).all():
        return "its forget set is not inside its half (half_index)"
    return None


def seconds_of(files):
    """Each model's training or unlearning time, from the sidecar beside its .pth (None where there is none)."""
    sidecars = [sidecar_path(p[:-len(".npz")] + ".pth") for p in files]
    return [read_json(p).get("seconds") if os.path.exists(p) else None for p in sidecars]


def read_pool(folder):
    """{group: {"models": [names], S: (logits models x examples x classes, labels), "outputs": [each file's
    arrays], "forget_class", "seconds"}} from every <group>/s<k>.npz of a pool, in seed order; the examples must be
    the same in every file."""
    pool, reference = {}, None
    for group, files in model_files(folder, "seeds").items():
        files = sorted(files, key=lambda p: int(os.path.basename(p)[1:-4]))
        outputs = []
        for path in files:
            outputs.append(read_outputs(path, KEYS))
            if not len(outputs[-1]["forget_index"]):  # the competition score is over the forget set
                raise ValueError(f"{path}: its forget set is empty (made without --forget-class / "
                                 f"--forget-fraction / --forget-indices); delete it and make it again with "
                                 f"the pool's forget set")
            examples = [outputs[-1][f"{s}_{x}"] for s in GROUPS for x in ("index", "labels")]
            reference = reference or (path, examples, outputs[-1])
            check_classes(path, outputs[-1], reference[0], reference[2])
            if any(not np.array_equal(a, b) for a, b in zip(examples, reference[1])):
                raise ValueError(f"{path} holds other examples than {reference[0]}: a pool's models must be scored on "
                                 f"the same examples (same --dataset, --subset, forget set)")
        pool[group] = {"models": [os.path.relpath(p, folder) for p in files], "seconds": seconds_of(files),
                       "forget_class": int(outputs[0]["forget_class"]), "outputs": outputs,
                       **{s: (np.stack([o[f"{s}_logits"] for o in outputs]), outputs[0][f"{s}_labels"])
                          for s in GROUPS}}
    if "retrain" not in pool:
        raise ValueError(f"{folder} has no retrain/s<k>.npz: a pool needs its retrained models (make pool)")
    return pool


def check_classes(path, outputs, first, first_outputs):
    """One line naming both files when `path`'s model has another number of classes than the first's."""
    ours, theirs = outputs["test_logits"].shape[1], first_outputs["test_logits"].shape[1]
    if ours != theirs:
        raise ValueError(f"{path} has {ours} classes, {first} {theirs}: a pool's models are of one dataset; "
                         f"delete the wrong one and make it again")


def pool_files(folder):
    """(kind, {group: [paths]}) of a pool's outputs files: kind "seeds" (s<k>.npz) or "halves" (h<k>.npz,
    h<k>_f<j>.npz). Every .npz of a group folder must be named so, and a pool holds one kind: a stray
    file of the other kind would change which scores the pool gets."""
    found = {kind: {} for kind in NAMES}
    for group in sorted(os.listdir(folder)):
        path = os.path.join(folder, group)
        names = sorted(os.listdir(path)) if os.path.isdir(path) else []
        for name in [n for n in names if n.endswith(".npz") and n[0] != "."]:  # as glob: no dotfiles
            kind = next((k for k, pattern in NAMES.items() if pattern.fullmatch(name)), None)
            if kind is None:
                raise ValueError(f"{os.path.join(path, name)}: not a model's outputs name (s<k>.npz, or "
                                 f"h<k>.npz / h<k>_f<j>.npz, numbers without leading zeros); rename it or "
                                 f"move it out of {folder}")
            found[kind].setdefault(group, []).append(os.path.join(path, name))
    if all(found.values()):
        seed, half = (next(iter(found[kind].values()))[0] for kind in ("seeds", "halves"))
        raise ValueError(f"{folder} mixes the two kinds of pool: {seed} is a seed pool's model, {half} a "
                         f"halves pool's; a pool folder holds one kind (move the other to its own folder)")
    kind = "halves" if found["halves"] else "seeds"
    return kind, found[kind]


def model_files(folder, kind):
    """{group: [paths]} of a pool of `kind`, as pool_files finds them; another kind's pool is an error."""
    found, files = pool_files(folder)
    if found != kind:
        raise ValueError(f"{folder} is a {found} pool, not a {kind} pool")
    return files


def halves_pool(folder):
    """Whether `folder` is a halves pool (its models are h<k>.npz / h<k>_f<j>.npz)."""
    return pool_files(folder)[0] == "halves"


def read_halves(folder):
    """{group: {"models": [names], "halves": the half of each model, "lsc": models x train examples, "inside" (a
    model's forget set, or its half for a group without forget sets: the originals), "outside" (not in its half),
    "outputs", "seconds"}} from every <group>/h*.npz of a halves pool; every file must cover the same examples."""
    pool, reference = {}, None
    for group, files in model_files(folder, "halves").items():
        outputs = [read_outputs(path, KEYS + HALVES_KEYS) for path in files]
        for path, o in zip(files, outputs):
            reference = reference or (path, o["train_index"], o)
            check_classes(path, o, reference[0], reference[2])
            if not np.array_equal(o["train_index"], reference[1]):
                raise ValueError(f"{path} covers other train examples than {reference[0]}: a halves pool's models "
                                 f"must be scored on the same examples (same --dataset, --subset)")
        every = reference[1]
        half = np.stack([np.isin(every, o["half_index"]) for o in outputs])
        forgotten = np.stack([np.isin(every, o["forget_index"]) for o in outputs])
        pool[group] = {"models": [os.path.relpath(p, folder) for p in files], "seconds": seconds_of(files),
                       "halves": np.array([int(o["keep_half"]) for o in outputs]), "outputs": outputs,
                       "lsc": np.stack([o["train_lsc"] for o in outputs]).astype(np.float64),
                       "inside": forgotten if forgotten.any() else half, "outside": ~half}
    return pool


# ----------------------------------------------------------------------------- statistics of logits

def logit_scaled_confidence(logits, labels):
    """log p_y - log(1 - p_y) per model and example (LiRA's statistic), from a float64 softmax; 1e-45 keeps the logs
    finite, as in the competition's compute_logit_scaled_confidence. logits: (..., examples, classes)."""
    z = logits.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    probs = np.exp(z)
    probs /= probs.sum(-1, keepdims=True)
    correct = np.broadcast_to(np.arange(z.shape[-1]) == labels[:, None], probs.shape)
    p_correct = np.where(correct, probs, 0).sum(-1)
    p_wrong = np.where(correct, 0, probs).sum(-1)
    return np.log(p_correct + 1e-45) - np.log(p_wrong + 1e-45)


def margins(logits, labels):
    """The correct logit minus the logsumexp of the others (KLOM's statistic), per model and example."""
    x = torch.from_numpy(logits).double()
    correct = torch.from_numpy(np.arange(x.shape[-1]) == labels[:, None]).expand_as(x)
    return (x[correct].view(x.shape[:-1]) - x.masked_fill(correct, -torch.inf).logsumexp(-1)).numpy()


def accuracy(logits, labels):
    """Top-1 accuracy (%) of every model."""
    return 100 * (logits.argmax(-1) == labels).mean(-1)


# ----------------------------------------------------------------------------- the competition score

def fraction_between(values, low, high):
    """The fraction of `values` in [low, high], for arrays of bounds."""
    ordered = np.sort(values)
    return (np.searchsorted(ordered, high, "right") - np.searchsorted(ordered, low, "left")) / len(values)


def single_threshold_rates(pos, neg):
    """(tpr, fnr, fpr, tnr) of the rules "x >= t means positive" on a grid of 100 thresholds per unit spanning both."""
    low, high = min(pos.min(), neg.min()), max(pos.max(), neg.max())
    thresholds = np.linspace(low, high, int(np.ceil((high - low) * THRESHOLDS_PER_UNIT)))
    below_pos = np.searchsorted(np.sort(pos), thresholds, "left") / len(pos)
    below_neg = np.searchsorted(np.sort(neg), thresholds, "left") / len(neg)
    return 1 - below_pos, below_pos, 1 - below_neg, below_neg


def double_threshold_rates(pos, neg):
    """(tpr, fnr, fpr, tnr) of the rules "left <= x <= right means the peakier side", whose window is as wide as the
    peakier side's range, slid over it and 2 beyond; 400 left bounds per right bound, 100 per unit."""
    if np.ptp(pos) >= np.ptp(neg):  # "positive" is the peakier distribution here
        pos, neg = neg, pos
    width = np.ptp(pos)
    low, high = pos.min() + width - BUFFER, pos.max() + BUFFER
    right = np.linspace(low, high, int(np.ceil((high - low) * THRESHOLDS_PER_UNIT)))
    lefts = int(np.ceil(2 * BUFFER * THRESHOLDS_PER_UNIT))
    left = np.linspace(right - width - BUFFER, right - width + BUFFER, lefts, axis=1).ravel()
    right = np.repeat(right, lefts)
    tpr, fpr = fraction_between(pos, left, right), fraction_between(neg, left, right)
    return tpr, 1 - tpr, fpr, 1 - fpr


def example_epsilon(pos, neg, delta=DELTA):
    """The epsilon of one example: the largest over both families of tests of
    max(log(1 - delta - fpr) - log(fnr), log(1 - delta - fnr) - log(fpr)), at least 0; infinite (capped at 50) where a
    test separates the two sets; tests with only one of fpr, fnr zero are left out (too few models to tell). When
    one side's range is under 1% of the other's (a "peaky" unlearned distribution) the example gets the cap at once.
    pos: the side with the larger median."""
    ranges = sorted([np.ptp(pos), np.ptp(neg)])
    if ranges[1] == 0:  # both constant: equal, or perfectly separated
        return 0.0 if pos[0] == neg[0] else float(EPSILON_CAP)
    if ranges[0] / ranges[1] < PEAKY:
        return float(EPSILON_CAP)
    tpr, fnr, fpr, tnr = (np.concatenate(pair) for pair in zip(double_threshold_rates(pos, neg),
                                                                  single_threshold_rates(pos, neg)))
    if np.any((fpr + fnr == 0) & (tpr + tnr == 2)):
        return float(EPSILON_CAP)
    keep = fpr * fnr != 0
    with np.errstate(invalid="ignore"):
        eps = np.maximum(np.log(1 - delta - fpr[keep]) - np.log(fnr[keep]),
                         np.log(1 - delta - fnr[keep]) - np.log(fpr[keep]))
    eps = eps[~np.isnan(eps)]
    return float(np.clip(eps.max(), 0, EPSILON_CAP)) if len(eps) else 0.0


def example_epsilons(unlearned, retrained):
    """Per example (columns of two models x examples arrays of logit-scaled confidence), its epsilon."""
    retrain_is_positive = np.median(retrained, 0) > np.median(unlearned, 0)
    pos = np.where(retrain_is_positive, retrained, unlearned)
    neg = np.where(retrain_is_positive, unlearned, retrained)
    return np.array([example_epsilon(pos[:, i], neg[:, i]) for i in range(pos.shape[1])])


def bucket_points(epsilons, models):
    """Each example's points: 1 for epsilon in [0, 0.5), 1/2 for [0.5, 1), ... while the bucket ends by
    ceil(ln(models - 1)), the largest epsilon `models` samples a side can show; 0 beyond."""
    top = np.ceil(np.log(models - 1)) if models > 1 else 0
    buckets = int(top // BUCKET)  # buckets [0, 0.5), [0.5, 1), ... that end by `top`
    index = np.floor(np.asarray(epsilons) / BUCKET)
    return np.where(index < buckets, 0.5 ** index, 0.0)


def forget_quality(unlearned, retrained):
    """(F, per-example epsilons): the mean of the bucket points over the forget set."""
    eps = example_epsilons(unlearned, retrained)
    return float(bucket_points(eps, unlearned.shape[0]).mean()), eps


# ----------------------------------------------------------------------------- KLOM and U-LiRA

def binned_kl(p, q):
    """KL(p || q) of two samples over 20 equal bins spanning both (after clipping to [-100, 100]); a value equal to
    the top edge falls outside every bin, as numpy.digitize puts it (the reference code's binning).
    Undefined (NaN) where p's histogram is empty: every value of p on the top edge (clipped at
    100, or all equal to the largest of both samples). The reference (data-unlearning-bench,
    unlearning_bench/eval.py, compute_binned_KL_div) returns scipy.stats.entropy of that all-zero
    histogram: NaN. A 0 there (EasyDUB's port, easydub/eval.py) would be the best score where
    nothing was measured."""
    p, q = np.clip(p, -KLOM_CLIP, KLOM_CLIP), np.clip(q, -KLOM_CLIP, KLOM_CLIP)
    low, high = min(p.min(), q.min()), max(p.max(), q.max())
    edges = np.linspace(low, high if high > low else low + 1, KLOM_BINS + 1)
    hp = np.bincount(np.digitize(p, edges), minlength=KLOM_BINS + 2)[1:KLOM_BINS + 1].astype(np.float64)
    hq = np.bincount(np.digitize(q, edges), minlength=KLOM_BINS + 2)[1:KLOM_BINS + 1].astype(np.float64)
    if not hp.sum():  # nothing of p in any bin: undefined, as the reference's
        return float("nan")
    hp, hq = hp / hp.sum(), hq / max(hq.sum(), 1)
    hq = np.where(hp > 0, np.maximum(hq, KLOM_EPS), hq)
    hq = hq / hq.sum()
    nonzero = hp > 0
    return float(np.sum(hp[nonzero] * np.log(hp[nonzero] / hq[nonzero])))


def klom(unlearned, retrained):
    """KLOM per example: KL(margins under the unlearned models || under the retrained ones); NaN
    where it is undefined (binned_kl)."""
    return np.array([binned_kl(unlearned[:, i], retrained[:, i]) for i in range(unlearned.shape[1])])


def klom_summary(values, index):
    """(quantiles, undefined): the quantiles of an example set's KLOM over its defined examples
    (None where none is), and the dataset indices of the undefined ones (NaN): counted and
    named, never averaged in as a number."""
    undefined = np.isnan(values)
    if undefined.all():
        return None, index.tolist()
    return np.quantile(values[~undefined], QUANTILES).tolist(), index[undefined].tolist()


def gaussian_logpdf(x, mean, std):
    return -0.5 * ((x - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)


def attack_rates(members, others):
    """A likelihood-ratio attack's accuracy at ratio 0 (the mean of its TPR and TNR: 50% = indistinguishable) and
    its TPR at 1% and 0.1% FPR (the threshold: that quantile of the non-members' ratios), in %."""
    def tpr_at(fpr):
        return 100 * float(np.mean(members > np.quantile(others, 1 - fpr, method="higher")))
    return {"acc": float(100 * (np.mean(members > 0) + np.mean(others <= 0)) / 2), "tpr_at_1%": tpr_at(0.01),
            "tpr_at_0.1%": tpr_at(0.001)}


def ulira(unlearned, retrained):
    """U-LiRA (Hayes et al., arXiv 2403.01218), on one forget set: per example, Gaussians of the logit-scaled
    confidence fitted on half of the unlearned ("trained, then unlearned") and half of the retrained ("never
    trained") models; the other halves are the targets, each (model, example) pair scored by the log likelihood
    ratio."""
    half_u, half_r = unlearned.shape[0] // 2, retrained.shape[0] // 2
    fit_u, target_u, fit_r, target_r = unlearned[:half_u], unlearned[half_u:], retrained[:half_r], retrained[half_r:]
    mu_u, sd_u = fit_u.mean(0), np.maximum(fit_u.std(0), STD_FLOOR)
    mu_r, sd_r = fit_r.mean(0), np.maximum(fit_r.std(0), STD_FLOOR)
    def ratio(x):
        return (gaussian_logpdf(x, mu_u, sd_u) - gaussian_logpdf(x, mu_r, sd_r)).ravel()
    return {**attack_rates(ratio(target_u), ratio(target_r)),
            "models": [len(fit_u), len(target_u), len(fit_r), len(target_r)]}


def moments(stat, mask):
    """Per example: the count, sum and sum of squares of `stat` over the models where `mask` holds."""
    x = np.where(mask, stat, 0.0)
    return np.stack([mask.sum(0), x.sum(0), (x * x).sum(0)])


def ulira_halves(stat, inside, outside, halves):
    """U-LiRA in its paper's design (Hayes et al., arXiv 2403.01218): every model trained on a random half of the
    data and then unlearned a random forget set inside it. For each example, a Gaussian of the logit-scaled
    confidence over the models that forgot it ("inside": trained on it, then unlearned) and one over the models
    that never had it ("outside": not in their half), fitted on the models of every other half (each half's
    models are targets in turn: leave one half out, as LiRA's evaluation leaves one model out). Every target
    (model, example) pair with the example inside or outside is scored by the log likelihood ratio; an example
    with fewer than MIN_SHADOWS shadow values on either side is not attacked for that half. stat, inside,
    outside: models x examples; halves: each model's half."""
    members, others, skipped = [], [], 0
    total_in, total_out = moments(stat, inside), moments(stat, outside)
    for k in np.unique(halves):
        target = halves == k
        fits = []
        for total, mask in ((total_in, inside), (total_out, outside)):
            count, s1, s2 = total - moments(stat[target], mask[target])
            mean = s1 / np.maximum(count, 1)
            std = np.sqrt(np.maximum(s2 / np.maximum(count, 1) - mean ** 2, 0))
            fits.append((count, mean, np.maximum(std, STD_FLOOR)))
        (n_in, mu_in, sd_in), (n_out, mu_out, sd_out) = fits
        ready = (n_in >= MIN_SHADOWS) & (n_out >= MIN_SHADOWS)
        ratio = gaussian_logpdf(stat[target], mu_in, sd_in) - gaussian_logpdf(stat[target], mu_out, sd_out)
        members.append(ratio[inside[target] & ready])
        others.append(ratio[outside[target] & ready])
        skipped += int(((inside[target] | outside[target]) & ~ready).sum())
    members, others = np.concatenate(members), np.concatenate(others)
    attacked = len(members) and len(others)
    rates = attack_rates(members, others) if attacked else dict.fromkeys(("acc", "tpr_at_1%", "tpr_at_0.1%"))
    return {**rates, "pairs": [len(members), len(others)], "skipped": skipped, "halves": len(np.unique(halves)),
            "models": len(halves)}


# ----------------------------------------------------------------------------- scoring a pool

def spread(values):
    values = np.asarray([v for v in values if v is not None], dtype=np.float64)
    return {"mean": float(values.mean()), "std": float(values.std()), "n": len(values)} if len(values) else None


def model_metrics(o):
    """One model's forget / retain / test accuracy and our MIA (forget losses vs the forgotten class's test images,
    or the whole test set for sample forgetting), from its outputs file's arrays (None without a forget set)."""
    def losses(logits, labels):
        return F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels), reduction="none").numpy()
    labels = o["test_labels"]
    nonmember = labels == o["forget_class"] if o["forget_class"] >= 0 else np.ones(len(labels), bool)
    forgets = len(o["forget_labels"]) > 0
    return {"forget_acc": float(accuracy(o["forget_logits"], o["forget_labels"])) if forgets else None,
            "retain_acc": float(accuracy(o["retain_logits"], o["retain_labels"])),
            "test_acc": float(accuracy(o["test_logits"], labels)),
            "mia": mia_score(losses(o["forget_logits"], o["forget_labels"]),
                             losses(o["test_logits"][nonmember], labels[nonmember])) if forgets else None}


def group_metrics(outputs):
    """Every model's metrics (model_metrics), as their mean and std over the group's models."""
    per_model = [model_metrics(o) for o in outputs]
    return {key: spread([m[key] for m in per_model]) for key in per_model[0]}


def score_group(group, reference):
    """Every score of a group's first N/2 models against the reference (retrained) models N/2..N-1."""
    half = len(reference["models"]) // 2
    if half < 3 or len(group["models"]) < half:
        raise ValueError(f"a pool needs N >= 6 models per group (3 a side: the score's top epsilon is ln(N/2 - 1)); "
                         f"found {len(reference['models'])} retrained, {len(group['models'])} in a group")
    ours = {s: (group[s][0][:half], group[s][1]) for s in GROUPS}
    theirs = {s: (reference[s][0][half:2 * half], reference[s][1]) for s in GROUPS}
    quality, eps = forget_quality(logit_scaled_confidence(*ours["forget"]), logit_scaled_confidence(*theirs["forget"]))
    ratio = ((accuracy(*ours["retain"]).mean() / accuracy(*theirs["retain"]).mean()) *
             (accuracy(*ours["test"]).mean() / accuracy(*theirs["test"]).mean()))
    index = {s: group["outputs"][0][f"{s}_index"] for s in GROUPS}  # a pool's examples are one
    kloms = {s: klom_summary(klom(margins(*ours[s]), margins(*theirs[s])), index[s])
             for s in GROUPS}
    return {"models": half, "forget_quality": quality, "utility": float(ratio), "score": float(quality * ratio),
            "epsilons": eps.tolist(), "klom_quantiles": {s: kloms[s][0] for s in GROUPS},
            "klom_undefined": {s: kloms[s][1] for s in GROUPS},
            "ulira": ulira(logit_scaled_confidence(*group["forget"]), logit_scaled_confidence(*reference["forget"])),
            "spread": group_metrics(group["outputs"]), "seconds": spread(group["seconds"])}


def score_pool(folder):
    """scores.json of a pool: every group against the retrained models, the retrained models' first half (the
    ceiling) included as "retrain"."""
    pool = read_pool(folder)
    reference = pool["retrain"]
    scores = {"kind": SCORES_KIND, "pool": os.path.basename(os.path.abspath(folder)),
              "forget_class": reference["forget_class"],
              "n": len(reference["models"]), "quantiles": QUANTILES,
              "examples": {s: len(reference[s][1]) for s in GROUPS}, "groups": {}}
    for name, group in pool.items():
        print(f"scoring {name} ({len(group['models'])} models)", file=sys.stderr, flush=True)
        scores["groups"][name] = score_group(group, reference)
    return scores


def score_halves(folder):
    """scores.json of a halves pool: U-LiRA (ulira_halves) and the metrics' spread for every group."""
    pool = read_halves(folder)
    scores = {"kind": SCORES_KIND, "pool": os.path.basename(os.path.abspath(folder)), "design": "halves",
              "examples": int(next(iter(pool.values()))["lsc"].shape[1]), "groups": {}}
    for name, group in pool.items():
        print(f"scoring {name} ({len(group['models'])} models)", file=sys.stderr, flush=True)
        attack = ulira_halves(group["lsc"], group["inside"], group["outside"], group["halves"])
        if attack["acc"] is None:
            print(f"warning: {name}: no example has {MIN_SHADOWS} shadow models on each side in the other halves; "
                  f"U-LiRA needs more halves (N) or forget draws (DRAWS): about (N - 1) x DRAWS x FRACTION / 2 "
                  f"models forget each example", file=sys.stderr)
        scores["groups"][name] = {"models": len(group["models"]), "ulira": attack,
                                  "spread": group_metrics(group["outputs"]), "seconds": spread(group["seconds"])}
    return scores


def format_scores(scores):
    """The terminal's summary: one line per group (report.py has the full table)."""
    if scores.get("design") == "halves":
        def percent(x):
            return "-" if x is None else f"{x:.1f}%"
        return "\n".join(f"{name:>12}: U-LiRA acc {percent(g['ulira']['acc'])}, TPR at 1% FPR "
                         f"{percent(g['ulira']['tpr_at_1%'])} ({g['ulira']['pairs'][0]} forgotten, "
                         f"{g['ulira']['pairs'][1]} unseen pairs attacked, {g['ulira']['halves']} halves)"
                         for name, g in scores["groups"].items())
    mid = QUANTILES.index(0.5)
    lines = []
    for name, g in scores["groups"].items():
        quantiles = g["klom_quantiles"]
        klom_medians = " / ".join("-" if quantiles[s] is None else f"{quantiles[s][mid]:.3f}"
                                  for s in GROUPS)
        lines.append(f"{name:>12}: F {g['forget_quality']:.3f}, score {g['score']:.3f}, KLOM median forget / retain / "
                     f"test {klom_medians}{undefined_phrase(g)}, "
                     f"U-LiRA acc {g['ulira']['acc']:.1f}%, forget acc "
                     f"{g['spread']['forget_acc']['mean']:.2f} +- {g['spread']['forget_acc']['std']:.2f}")
    return "\n".join(lines)


def undefined_phrase(g):
    """' (KLOM undefined for 3 forget examples, left out: ...)', or '' where every example's is
    defined (or the scores predate klom_undefined)."""
    undefined = g.get("klom_undefined", {})
    counts = [f"{len(undefined[s])} {s}" for s in GROUPS if undefined.get(s)]
    return (f" (KLOM undefined for {', '.join(counts)} examples, left out: every unlearned margin "
            f"at the top bin edge)") if counts else ""


# --------------------------------------------------------------------- the jobs that make a pool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout: train.py's
# train.py; unlearn.py from the originals; privacy.py outputs of each model
STAGES = ("models", "unlearn", "outputs")
# the flags `jobs` sets on each command: given in the scripts' flags as well, they would make other
# models
SET_BY_JOBS = ("--out", "--model", "--seed", "--method", "--forget-class", "--forget-fraction",
               "--forget-seed", "--forget-indices", "--forget-positions", "--keep-half",
               "--resume", "--wait", "--overwrite", "--no-eval")
ULIRA_FRACTION = 0.1  # a halves pool's default forget fraction (of each half)
# characters no word of a jobs line may hold: control characters (newline, carriage return, tab,
# escape, NEL...), surrogates (a name's bytes that are not UTF-8) and the line and paragraph
# separators; shlex.join keeps them inside its quotes, so a line would be cut there (J02)
LINE_BREAKING = ("Cc", "Cs", "Zl", "Zp")


@dataclasses.dataclass
class Job:
    """One command of a pool: `script` (the file or module, then a subcommand if any) run with
    `words` after the scripts' common flags writes `out`, from `model` (the input checkpoint; None
    for a training)."""
    stage: str
    script: list
    words: list
    out: str
    model: str = None


def pool_jobs(pool, n, groups, forget, draws=None, train_flags=(), unlearn_flags=()):
    """Every command that makes a pool, stage by stage (STAGES): the trainings (originals, then
    retrains), the methods' runs from the originals, then each model's outputs.

    A seed pool (draws None): original/s<k> and retrain/s<k> (without the forget set) trained
    with --seed k, <method>/s<k> from original/s<k> with --seed k, k = 0..n-1; `forget` the
    pool's forget set flags. A halves pool (U-LiRA's design, `draws` forget sets a half):
    original/h<k> trained on the random half k (--keep-half k --seed k), <method>/h<k>_f<j> from
    it on the forget set j of FRACTION of the half (forget = ["--forget-fraction", F],
    --forget-seed j, --seed j), and retrain/h<k>_f<j> the half without it (--seed k),
    j = 0..draws-1.

    groups: "original", "retrain" and method names, the group folders to make; a method's originals
    are trained where they are missing (their outputs only when "original" is asked for)."""
    halves = draws is not None
    methods = [g for g in groups if g not in ("original", "retrain")]
    originals = [(k, None) for k in range(n)]
    drawn = [(k, j) for k in range(n) for j in range(draws)] if halves else originals

    def path(group, k, j, ext="pth"):
        name = f"s{k}" if not halves else f"h{k}" if j is None else f"h{k}_f{j}"
        return os.path.join(pool, group, f"{name}.{ext}")

    def split(k, j):  # the flags that name a model's split: its half and its forget set
        if not halves:
            return list(forget)
        return ["--keep-half", str(k)] + ([] if j is None else [*forget, "--forget-seed", str(j)])

    def train(group, k, j, flags):
        out = path(group, k, j)
        words = [*train_flags, "--resume", "--wait", *flags, "--seed", str(k), "--out", out]
        return Job("models", ["train.py"], words, out)

    def unlearn(method, k, j):
        original, out = path("original", k, None), path(method, k, j)
        seed = k if j is None else j
        words = ["--method", method, "--wait", "--model", original, *split(k, j),
                 "--seed", str(seed), "--no-eval", "--out", out, *unlearn_flags]
        return Job("unlearn", ["unlearn.py"], words, out, original)

    def outputs(group, k, j):
        model, out = path(group, k, j), path(group, k, j, "npz")
        words = [*split(k, j), "--model", model, "--out", out]
        return Job("outputs", ["studies.privacy", "outputs"], words, out, model)

    models = []  # (group, k, j) of every model whose outputs are asked for, in order
    jobs = []
    if "original" in groups or methods:
        jobs += [train("original", k, None, ["--keep-half", str(k)] if halves else [])
                 for k, _ in originals]
        if "original" in groups:
            models += [("original", k, None) for k, _ in originals]
    if "retrain" in groups:
        jobs += [train("retrain", k, j, split(k, j)) for k, j in drawn]
        models += [("retrain", k, j) for k, j in drawn]
    for method in methods:
        jobs += [unlearn(method, k, j) for k, j in drawn]
        models += [(method, k, j) for k, j in drawn]
    jobs += [outputs(group, k, j) for group, k, j in models]
    return jobs


def job_done(job, finished_model):
    """Whether a job's output is finished already: a checkpoint that models.finished accepts (its
    sidecar names its sha256), or outputs (.npz) whose stamp names the sha256 of its model, itself
    finished. finished_model: models.finished, cached."""
    if job.stage != "outputs":
        return finished_model(job.out)
    if not (os.path.isfile(job.out) and finished_model(job.model)):
        return False
    stamp = read_stamp(job.out)
    recorded = read_json(sidecar_path(job.model)).get("sha256") or sha256_file(job.model)
    return stamp is not None and stamp["source_sha256"] == recorded


def check_one_line(word, where):
    """One command a line, whatever a user names: make's run_jobs (xargs -d '\\n' ... sh -c) and a
    SLURM array read the lines one by one, so a newline kept inside shlex.join's quotes would cut a
    command in two and run its second half as a command of its own. A word holding a line break,
    another control character or a byte that is not UTF-8 is refused, naming where it came from."""
    bad = next((c for c in word if unicodedata.category(c) in LINE_BREAKING), None)
    if bad is not None:
        what = ("a byte that is not UTF-8" if unicodedata.category(bad) == "Cs" else
                "a line break or control character")
        raise ValueError(f"{where} {word!r} holds {bad!r} ({what}): privacy.py jobs prints one "
                         f"command a line, which it would split; rename it, or run the scripts "
                         f"directly")


def script_words(python, script):
    """How a line starts `script`: a core script (train.py) by its path in the checkout; a module of
    studies/ as `python -m studies.privacy`, which finds it from the current folder, so listed from
    another folder the line puts the checkout on PYTHONPATH itself."""
    if script.endswith(".py"):
        return [python, os.path.join(ROOT, script)]
    here = os.path.samefile(os.getcwd(), ROOT)
    return [python, "-m", script] if here else ["env", f"PYTHONPATH={ROOT}", python, "-m", script]


def job_lines(jobs, python, flags, devices=None, stage=None):
    """(lines, finished): the command line of every job of `stage` (every stage when None) that is
    not finished, quoted for sh, the common `flags` after the script's name, then --device,
    round-robin over `devices`; and how many were left out as finished."""
    cache = {}

    def finished_model(path):
        if path not in cache:
            cache[path] = finished(path)
        return cache[path]
    lines, done = [], 0
    for job in jobs:
        if stage not in (None, job.stage):
            continue
        if job_done(job, finished_model):
            done += 1
            continue
        device = ["--device", devices[len(lines) % len(devices)]] if devices else []
        script, *sub = job.script
        words = [*script_words(python, script), *sub, *flags, *device, *job.words]
        for word in words:  # the flags are checked where they are read; this catches the rest
            check_one_line(word, "a word of the command")
        lines.append(shlex.join(words))
    return lines, done


# ----------------------------------------------------------------------------- the command line

def parse_args(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    flags = []
    if argv[:1] == ["jobs"] and "--" in argv:  # jobs: what follows -- goes to every script as is
        argv, flags = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    if argv[:1] == ["jobs"]:  # --unlearn-flags '--no-augment': a value that starts with a dash
        argv = glue_values(argv, ("--train-flags", "--unlearn-flags"))
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    outputs = add_data_args(commands.add_parser(
        "outputs", allow_abbrev=False, help="one model's logits on the pool's examples -> .npz"))
    outputs.add_argument("--model", required=True, help="the checkpoint (a path, an https:// URL or an hf:// name)")
    outputs.add_argument("--out", required=True, help="the .npz to write")
    outputs.add_argument("--retain-sample", type=non_negative_int, default=1000,
                         help="retain-set examples kept, a fixed seeded sample (default: 1000)")
    add_runtime_args(outputs, precision="fp32", seed=None)  # the scores compare logits: fp32 unless asked
    outputs.add_argument("--overwrite", action="store_true",
                         help="replace --out even when it is not this model's outputs, and make them again")
    score = commands.add_parser("score", allow_abbrev=False,
                                help="every score of a pool (or halves pool) folder -> "
                                     "POOL/scores.json")
    score.add_argument("pool", help="the pool folder (make pool writes one)")
    score.add_argument("--out", default=None, help="the scores' JSON (default: POOL/scores.json)")
    score.add_argument("--overwrite", action="store_true",
                       help="replace --out even when it is not a pool's scores")
    jobs = commands.add_parser(
        "jobs", allow_abbrev=False,
        usage="%(prog)s POOL --n N [options] [-- FLAGS OF EVERY SCRIPT]",
        help="every command that makes a pool's models and outputs, one a line, finished ones "
             "left out (for sh, xargs -P or a SLURM array)",
        description="Every train.py, unlearn.py and privacy.py outputs command that makes the "
                    "pool's models and their outputs, one a line quoted for sh, in stages "
                    "(models, unlearn, outputs: a stage's inputs are made by the stages before "
                    "it); a command whose output is finished is left out. The paths are as "
                    "given: run the lines from the folder they were listed in. What follows -- "
                    "goes to every command: the data flags, e.g. -- --dataset cifar10 "
                    "--data-dir ./data --subset 100.")
    jobs.add_argument("pool",
                      help="the pool folder (its groups' subfolders are made by the commands)")
    jobs.add_argument("--n", type=positive_int, required=True,
                      help="models a group: training seeds 0..N-1, or the halves 0..N-1 with "
                           "--halves")
    jobs.add_argument("--groups", nargs="+", default=["original", "retrain"], metavar="GROUP",
                      help="the groups to make: original, retrain and methods (unlearn.py "
                           "--method, each run from the originals, which are trained first where "
                           "missing) (default: original retrain)")
    forget = jobs.add_mutually_exclusive_group()
    forget.add_argument("--forget-class", default=None,
                        help="a seed pool's forget set: this class")
    forget.add_argument("--forget-fraction", type=float_in("(0, 1)"), default=None,
                        help="a seed pool's forget set: this seeded random fraction of the train "
                             f"set; with --halves, of each half (default there: {ULIRA_FRACTION})")
    jobs.add_argument("--halves", action="store_true",
                      help="U-LiRA's design instead of training seeds: original/h<k> on the "
                           "random half k, <method>/h<k>_f<j> and retrain/h<k>_f<j> for DRAWS "
                           "forget sets j of each")
    jobs.add_argument("--draws", type=positive_int, default=None,
                      help="with --halves: forget sets a half (default: 4)")
    jobs.add_argument("--stage", choices=STAGES, default=None,
                      help="print this stage only: its commands are independent of each other, so "
                           "they can run at once (default: every stage, in order: run them one "
                           "after another)")
    jobs.add_argument("--python", default=sys.executable,
                      help="the interpreter the commands run (default: this one, %(default)s)")
    jobs.add_argument("--train-flags", default="",
                      help="more flags for train.py, e.g. '--arch resnet20 --epochs 30'")
    jobs.add_argument("--unlearn-flags", default="",
                      help="more flags for unlearn.py, e.g. '--epochs 2'")
    jobs.add_argument("--devices", nargs="+", default=None, metavar="DEVICE",
                      help="--device of each command, round-robin over these in the order printed "
                           "(default: none given: each script picks)")
    args = parser.parse_args(argv)
    if args.command == "jobs":
        args.flags = flags
    return args


def scores_file(path):
    """mine= for check_out: a pool's scores (kind pool-scores), or scores written before they had a kind."""
    if json_of_kind(SCORES_KIND)(path):
        return True
    try:
        old = read_json(path)
    except (ValueError, OSError):
        return False
    return isinstance(old, dict) and "kind" not in old and {"pool", "groups"} <= old.keys()


def forgets(args):
    """Whether the flags name a forget set."""
    return any(flag is not None for flag in (args.forget_class, args.forget_fraction, args.forget_indices,
                                             args.forget_positions))


def check_outputs_flags(args):
    """Before any work, the flags whose files `score` would crash on or refuse later."""
    if not args.out.endswith(".npz"):
        raise ValueError(f"--out {args.out}: give a .npz path")
    if args.retain_sample == 0:
        raise ValueError("--retain-sample 0 keeps no retain image, and every score reads them: give 1 or "
                         "more (default: 1000)")
    if not forgets(args) and args.keep_half is None:  # only a halves pool's original forgets nothing
        raise ValueError("give the pool's forget set (--forget-class, --forget-fraction or "
                         "--forget-indices): every model of a pool, its originals too, is scored on it")


def main(argv=None):
    args = parse_args(argv)
    if args.command == "outputs":
        return outputs_command(args)
    if args.command == "jobs":
        return jobs_command(args)
    if not os.path.isdir(args.pool):
        raise ValueError(f"{args.pool} is not a folder: give a pool folder (make pool writes one)")
    out = args.out or os.path.join(args.pool, "scores.json")
    groups = [os.path.join(args.pool, g) for g in sorted(os.listdir(args.pool))]
    check_out(out, "--out", [g for g in groups if os.path.isdir(g)], scores_file, args.overwrite)
    scores = score_halves(args.pool) if halves_pool(args.pool) else score_pool(args.pool)
    write_json(out, scores)
    print(format_scores(scores))
    print(f"wrote {out}", file=sys.stderr)


def check_not_set_by_jobs(word, where, set_here):
    """One line naming `word` where it is a flag that jobs sets on each command (set_here), given
    whole or abbreviated (--forget-cl, --ou: the scripts refuse abbreviations, but only when the
    command runs, long after the list was made)."""
    flag = word.split("=", 1)[0]
    full = [f for f in set_here if f == flag or (len(flag) > 2 and f.startswith(flag))]
    if flag.startswith("--") and full:
        what = "" if flag == full[0] else f"an abbreviation of {' or '.join(full)}: "
        raise ValueError(f"{word} {where}: {what}jobs sets it on each command itself (the "
                         f"pool's forget set is jobs' own --forget-class / --forget-fraction, "
                         f"the devices --devices); leave it out")


def jobs_command(args):
    """privacy.py jobs: the flags checked, then the commands of the pool that are not finished,
    one a line."""
    named = [("the pool folder", args.pool), ("--python", args.python),
             ("--forget-class", args.forget_class), ("--train-flags", args.train_flags),
             ("--unlearn-flags", args.unlearn_flags), *(("--groups", g) for g in args.groups),
             *(("--devices", d) for d in args.devices or ()),
             *(("after --", w) for w in args.flags)]
    for where, word in named:  # before anything else: an error message must not print them raw
        if word is not None:
            check_one_line(word, where)
    train_flags, unlearn_flags = shlex.split(args.train_flags), shlex.split(args.unlearn_flags)
    set_here = SET_BY_JOBS + (("--device",) if args.devices else ())
    for name, words in (("after --", args.flags), ("--train-flags", train_flags),
                        ("--unlearn-flags", unlearn_flags)):
        for word in words:
            check_not_set_by_jobs(word, name, set_here)
    unknown = [g for g in args.groups if g not in ("original", "retrain") + METHOD_ORDER]
    if unknown:
        raise ValueError(f"--groups {unknown[0]}: a group is original, retrain or a method "
                         f"({', '.join(m for m in METHOD_ORDER if m != 'retrain')})")
    if args.halves:
        if args.forget_class is not None:
            raise ValueError("--halves forgets random examples of each half: give "
                             "--forget-fraction, not --forget-class")
        forget = ["--forget-fraction", str(args.forget_fraction or ULIRA_FRACTION)]
    elif args.draws is not None:
        raise ValueError("--draws is the forget sets of each half: give --halves too")
    elif args.forget_class is None and args.forget_fraction is None:
        raise ValueError("give the pool's forget set (--forget-class or --forget-fraction): "
                         "every model of a pool is scored on it")
    else:
        forget = (["--forget-class", args.forget_class] if args.forget_class is not None else
                  ["--forget-fraction", str(args.forget_fraction)])
    draws = (args.draws or 4) if args.halves else None
    groups = list(dict.fromkeys(args.groups))
    jobs = pool_jobs(args.pool, args.n, groups, forget, draws, train_flags, unlearn_flags)
    lines, done = job_lines(jobs, args.python, args.flags, args.devices, args.stage)
    for line in lines:
        print(line)
    stage = f"stage {args.stage}" if args.stage else "every stage"
    print(f"{args.pool}: {len(lines)} commands to run ({stage}), {done} finished", file=sys.stderr)


def outputs_command(args):
    """privacy.py outputs: the flags and --out checked before any work; nothing done when --out already holds
    this model file's outputs with these settings."""
    check_outputs_flags(args)
    inputs = [] if is_remote(args.model) else [args.model, sidecar_path(args.model)]
    inputs += input_files(args)  # the data too: no --out in the image folder, even --overwrite
    check_out(args.out, "--out", inputs, outputs_of(args.model), args.overwrite)
    with lock(args.out):  # a second run on this --out stops at once: both would say "wrote" (CC04)
        make_outputs(args)


def make_outputs(args):
    """The outputs of --model at --out, unless --out holds them already."""
    data = with_normalization(load_dataset(args.dataset, args.data_dir), normalization_of(args.model), args.model)
    split = split_from_args(args, data)
    if forgets(args) and len(split.forget) == 0:  # a --forget-fraction that rounds to no image
        raise ValueError(f"the forget set is empty (of {len(split.train)} train images in use): give a "
                         f"larger --forget-fraction or another forget set")
    every = None if args.keep_half is None else subset_indices(data.train_y, args.subset)
    plan = outputs_plan(split, args.retain_sample, every)
    stamp = {"source": source_name(args.model), "source_sha256": sha256_file(fetch(args.model)),
             "split_sha256": describe_split(split, data.classes)["sha256"]}
    check_made_with(args.model, stamp["source_sha256"], split, data.classes)
    if not args.overwrite and up_to_date(args.out, stamp, plan, len(data.classes)):
        return print(f"{args.out} already holds these outputs of {args.model}; nothing to do (--overwrite "
                     f"makes them again)")
    device, amp = pick_device(args.device, args.precision)
    model = to_device(load_model(args.model, num_classes=len(data.classes)), device)
    write_outputs(args.out, model, data, split, device, args.retain_sample, every, stamp, amp)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run(main)
