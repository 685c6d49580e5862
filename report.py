"""One Markdown report of a `make reproduce` run: our numbers beside the published ones, plots, model cards.

    make reproduce-small                   # a CPU run (resnet20, CIFAR-10 subset), then this report
    python report.py runs/reproduce-small  # -> report.md, plots/*.png, cards/*.md in that folder
    python report.py --card checkpoints/resnet18_cifar10_full.pth
                                           # one model card, from the checkpoint's sidecar

A run folder holds what the Makefile's reproduce targets write: full.pth (+ full.log.jsonl),
no_<class>.pth, unlearn/<method>/<class>.pth, each with its JSON sidecar (x.pth.json; an older
run's x.json is read too), eval_<class>.json (evaluate.py --json --losses), sisa/eval.json,
ensemble/eval.json. Every number comes from those JSON files; parts not run are named as missing.
Plots need matplotlib (optional: `pip install matplotlib`); without it the report is written
without them and says so.
"""
import argparse
import glob
import json
import os
import sys

import numpy as np

from cli import (ANY, COUNT, FILE_PART, OBJECT, REMAKE, TEXT, Each, ListOf, Maybe, atomic_write,
                 check_out, checked, checkpoint_of, number, read_json, run, sidecar_path,
                 sidecars_of, text_of_kind)
from published import (DATASET_IDS, PUBLISHED_ENSEMBLE, PUBLISHED_FULL, PUBLISHED_RETRAIN,
                       PUBLISHED_SISA, PUBLISHED_UNLEARN, hub_name, published_names)

# The methods in the order the report lists them: unlearn.METHODS's (a test keeps the two equal;
# report.py reads JSON and imports no torch)
METHOD_ORDER = ("ssd", "advneggrad", "neggrad+", "finetune", "ga", "rl", "salun", "scrub", "lfssd",
                "ct", "msg", "bad-teacher", "unsir", "amnesiac", "l1-sparse", "boundary-shrink",
                "boundary-expand", "retrain")


# ----------------------------------------------------------------- a run's files, checked as read

# What this script (and evaluate.py --table) reads of each file, with the types and ranges its
# tables and plots need: cli.checked makes a field of another type or out of range one line naming
# the file and the field.
PERCENT, FRACTION, SECONDS = number(0, 100), number(0, 1), number(0)
SUMMARY = {"acc": PERCENT, "loss": number(0)}  # one set's (evaluate.summarize), without its losses
CKA = Maybe({"test": Maybe(number(0)), "forget": Maybe(number(0))})  # evaluate.linear_cka's
METRICS = {"test": {**SUMMARY, "top5": PERCENT}, "test_forget": Maybe(SUMMARY),  # evaluate_model's
           "test_retain": SUMMARY, "train_forget": Maybe(SUMMARY), "train_retain": SUMMARY,
           "mia": Maybe(FRACTION), "member_mia": Maybe(ListOf(FRACTION)),
           # evaluate.beneath_outputs' (--probe): absent, so None, without it
           "probe_forget_acc": Maybe(PERCENT), "probe_test_acc": Maybe(PERCENT),
           "cka_retrained": CKA, "cka_original": CKA, "relearn_steps": Maybe(COUNT),
           "relearn_cap": Maybe(COUNT)}
SPLIT = {"forget_class": Maybe(TEXT), "n_forget": COUNT, "n_train": COUNT, "n_test": COUNT}
SIDECAR = {"arch": TEXT, "dataset": TEXT, "device": TEXT, "seconds": SECONDS, "config": OBJECT,
           "split": SPLIT, "argv": Maybe(ListOf(TEXT)), "versions": Maybe(OBJECT),
           "source": Maybe(TEXT), "recipe": Maybe(TEXT)}
TRAINED = {**SIDECAR, "metrics": {"test_acc": PERCENT}}  # train.py's: its last epoch's log line
FULL = {**TRAINED, "config": {"epochs": COUNT}}
UNLEARNED = {**SIDECAR, "method": TEXT, "metrics": Maybe(METRICS),
             "retrained_metrics": Maybe(METRICS)}
LOG_LINE = {"epoch": COUNT, "loss": number(0), "train_acc": PERCENT, "test_acc": PERCENT}
WITH_LOSSES = {**SUMMARY, "losses": ListOf(number(0), least=1)}  # evaluate.py --losses keeps them
EVALUATED = {**METRICS, "train_forget": WITH_LOSSES, "test_forget": WITH_LOSSES,
             "per_class": ListOf(PERCENT), "confusion": ListOf(ListOf(COUNT))}
EVALUATION = {"classes": ListOf(TEXT, least=1), "retrained": Maybe(TEXT),
              "split": {"forget_class": FILE_PART}, "models": Each(EVALUATED)}
SISA_EVALUATION = {"models": Each({**METRICS, "mia": FRACTION})}  # evaluated with --mia
ENSEMBLE_EVALUATION = {"models": Each({"test": {"acc": PERCENT}})}
STAT = Maybe({"mean": number(), "std": number(0)})  # privacy.spread's
KLOM_SETS = ("forget", "retain", "test")  # privacy.py's example sets
GROUP = {"models": COUNT, "seconds": STAT,
         "spread": {k: STAT for k in ("forget_acc", "retain_acc", "test_acc", "mia")}}
SEEDS_GROUP = {**GROUP, "forget_quality": FRACTION, "utility": number(0), "score": number(0),
               "epsilons": ListOf(number(0), least=1),
               "ulira": {"acc": PERCENT, "tpr_at_1%": PERCENT},
               "klom_quantiles": {s: Maybe(ListOf(number(), least=3))  # None: none defined
                                  for s in KLOM_SETS},
               "klom_undefined": Maybe({s: Maybe(ListOf(COUNT)) for s in KLOM_SETS})}
HALVES_GROUP = {**GROUP, "ulira": {"acc": Maybe(PERCENT), "tpr_at_1%": Maybe(PERCENT),
                                   "tpr_at_0.1%": Maybe(PERCENT), "halves": COUNT,
                                   "pairs": ListOf(COUNT, least=2), "skipped": COUNT}}
SCORES = {"pool": FILE_PART, "examples": ANY, "n": COUNT, "groups": Each(SEEDS_GROUP)}
HALVES_SCORES = {"pool": FILE_PART, "examples": ANY, "groups": Each(HALVES_GROUP)}


def read_log(path):
    """A train.py .log.jsonl: one dict per epoch, checked (LOG_LINE); [] when absent."""
    if not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            log = [json.loads(line) for line in f if line.strip()]
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a train.py log ({e}); make it again") from None
    return [checked(line, LOG_LINE, f"{path} line {k}") for k, line in enumerate(log, 1)]


def read_object(path):
    """A JSON file that must hold an object (a sidecar, an evaluation, scores); anything else is
    one line."""
    obj = read_json(path)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: holds a JSON {type(obj).__name__}, not the object this "
                         f"project's scripts write; make it again")
    return obj


def read_checked(path, spec):
    """A run file holding a JSON object, checked whole against `spec` (cli.checked)."""
    return checked(read_object(path), spec, path)


def read_sidecar(path):
    """A checkpoint's sidecar, checked as train.py's (TRAINED) or, with a method, unlearn.py's."""
    meta = read_object(path)
    return checked(meta, UNLEARNED if "method" in meta else TRAINED, path)


def read_evaluation(path):
    """An evaluate.py --json --losses file of class-wise forgetting, as the plots read it: every
    model's per-class accuracies and confusion matrix over its classes."""
    evaluation = read_checked(path, EVALUATION)
    n = len(evaluation["classes"])
    for name, m in evaluation["models"].items():
        if {len(m["per_class"]), len(m["confusion"]), *map(len, m["confusion"])} != {n}:
            raise ValueError(f"{path}: models[{json.dumps(name)}] has per_class or confusion of "
                             f"another size than its {n} classes; {REMAKE}")
    return evaluation


def read_scores(path):
    """A pool's scores.json (privacy.py score), as its design: seeds (SCORES) or HALVES_SCORES."""
    scores = read_object(path)
    if scores.get("design") == "halves":
        return checked(scores, HALVES_SCORES, path)
    checked(scores, SCORES, path)
    for name, g in scores["groups"].items():  # the plot takes one median index for every set
        if len({len(q) for q in g["klom_quantiles"].values() if q is not None}) > 1:
            raise ValueError(f"{path}: groups[{json.dumps(name)}].klom_quantiles: the example "
                             f"sets have different numbers of quantiles; {REMAKE}")
    return scores


# ---------------------------------------------------------------- result tables (evaluate.py's too)

def headline(metrics):
    """The published columns: forget / retain class on the test set
    (class-wise), else the train forget / retain sets."""
    if metrics["test_forget"]:
        return metrics["test_forget"], metrics["test_retain"]
    return metrics["train_forget"], metrics["test_retain"]


def avg_gap(metrics, reference):
    """Mean |difference| to the retrained model over forget acc, retain acc, test acc and MIA
    (x100), the 'Avg. Gap' of Fan et al. (SalUn, 2024)."""
    pairs = [(headline(metrics)[0], headline(reference)[0]),
             (headline(metrics)[1], headline(reference)[1]), (metrics["test"], reference["test"])]
    gaps = [abs(a["acc"] - b["acc"]) for a, b in pairs if a and b]
    if metrics["mia"] is not None and reference["mia"] is not None:
        gaps.append(100 * abs(metrics["mia"] - reference["mia"]))
    return float(np.mean(gaps))


def cell(summary):
    return "-" if summary is None else f"{summary['acc']:.2f}% ({summary['loss']:.3f})"


# evaluate.py --probe's columns (docs/PRIVACY.md): shown where computed
BENEATH_HEADER = ["Probe forget acc", "Probe test acc", "CKA retrained (test / forget)",
                  "CKA original (test / forget)", "Relearn steps"]


def beneath_cells(m):
    """BENEATH_HEADER's cells for one model's metrics; None when evaluated without --probe (no
    probe_test_acc, or None where a checked reader filled the absent field in). Relearn steps:
    '>cap' when the cap came first, '-' without an original."""
    if m.get("probe_test_acc") is None:
        return None

    def percent(x):
        return "-" if x is None else f"{x:.2f}%"

    def cka(c):
        return "-" if not c else " / ".join("-" if c[s] is None else f"{c[s]:.3f}"
                                            for s in ("test", "forget"))
    cap, steps = m.get("relearn_cap"), m.get("relearn_steps")
    relearn = "-" if cap is None else f">{cap}" if steps is None else str(steps)
    return [percent(m["probe_forget_acc"]), percent(m["probe_test_acc"]),
            cka(m.get("cka_retrained")), cka(m.get("cka_original")), relearn]


def with_beneath(header, rows, metrics):
    """header and rows (lists of cells), BENEATH_HEADER's columns added when any of `metrics` has
    them ('-' in the rows that have not)."""
    cells = [beneath_cells(m) for m in metrics]
    if not any(cells):
        return header, rows
    blank = ["-"] * len(BENEATH_HEADER)
    return header + BENEATH_HEADER, [row + (c or blank) for row, c in zip(rows, cells)]


def format_table(rows, reference=None):
    """Markdown table, one row per (name, metrics); with a reference (the retrained model), its
    gap; the --probe columns where computed."""
    header = ["Model", "Forget acc (loss)", "Retain acc (loss)", "Test top-1", "Test top-5",
              "Train forget acc", "Train retain acc", "MIA", "Avg gap", "Seconds"]
    cells = []
    for name, m in rows:
        forget, retain = headline(m)
        mia = "-" if m["mia"] is None else f"{m['mia']:.3f}"
        if m.get("member_mia"):
            mia += f" (shards {np.mean(m['member_mia']):.3f})"
        gap = "-" if reference is None else f"{avg_gap(m, reference):.2f}"
        train_forget = "-" if m["train_forget"] is None else f"{m['train_forget']['acc']:.2f}%"
        seconds = f"{m['seconds']:.1f}" if m.get("seconds") is not None else "-"
        test, retained = m["test"], m["train_retain"]
        cells.append([name, cell(forget), cell(retain), f"{test['acc']:.2f}%",
                      f"{test['top5']:.2f}%", train_forget, f"{retained['acc']:.2f}%", mia, gap,
                      seconds])
    return table(*with_beneath(header, cells, [m for _, m in rows]))


def in_words(rows, name, retrained):
    """The table's message in sentences: how well each model knows the forgotten class against the
    others, and what the MIA says (0.5: its forget images look like images it never saw)."""
    lines = [f"In words ({name} is the class to forget; accuracies on the test set):"]
    for path, m in rows:
        forget, retain = m["test_forget"]["acc"], m["test_retain"]["acc"]
        role = ("the retrained model (never saw it)" if path == retrained
                else os.path.basename(str(path)))
        verdict = ("does not recognise it: forgotten, or never learnt"
                   if forget < max(retain / 4, 5) else
                   "recognises it" if forget > retain / 2 else
                   "recognises it less than the other classes")
        mia = "" if m["mia"] is None else (f"; MIA {m['mia']:.2f} "
                                           f"({'about' if abs(m['mia'] - 0.5) < 0.05 else 'not'} "
                                           "0.5: an attacker "
                                           f"{'cannot' if abs(m['mia'] - 0.5) < 0.05 else 'can'} "
                                           f"tell its {name} training images from unseen ones)")
        lines.append(f"- {role}: {name} {forget:.1f}%, the other classes "
                     f"{retain:.1f}%: it {verdict}{mia}.")
    return "\n".join(lines)


def format_per_class(rows, classes):
    lines = ["| Class | " + " | ".join(name for name, _ in rows) + " |",
             "|" + "---|" * (len(rows) + 1)]
    lines += [f"| {c} | " + " | ".join(f"{m['per_class'][i]:.1f}%" for _, m in rows) + " |"
              for i, c in enumerate(classes)]
    return "\n".join(lines)


CARD_HEADER = ("| Model | Forget Class | Forget class acc(loss) | Retain class acc(loss) | MIA |\n"
               "|---|---|---|---|---|")


def forget_label(meta):
    """What a sidecar's split forgot: the class name, or 'random N' for sample forgetting."""
    return meta["split"]["forget_class"] or f"random {meta['split']['n_forget']}"


def card_header(beneath=False):
    """CARD_HEADER, and BENEATH_HEADER's columns after it when `beneath` (its first line starts as
    CARD_HEADER's: what evaluate.py --table's --out check reads)."""
    if not beneath:
        return CARD_HEADER
    first, rule = CARD_HEADER.split("\n")
    return f"{first} {' | '.join(BENEATH_HEADER)} |\n{rule}{'---|' * len(BENEATH_HEADER)}"


def card_row(meta, name, beneath=False):
    """One row of the model cards' table, in their layout (acc (loss), no % sign), plus
    the MIA, from the JSON sidecar that unlearn.py writes; with `beneath`, the --probe
    columns ('-' where none)."""
    if not meta.get("metrics"):
        raise ValueError(f"{name} holds no metrics (made with --no-eval?)")
    forget, retain = headline(meta["metrics"])
    mia = "-" if meta["metrics"]["mia"] is None else f"{meta['metrics']['mia']:.3f}"
    cells = (beneath_cells(meta["metrics"]) or ["-"] * len(BENEATH_HEADER)) if beneath else []
    extra = "".join(f" {c} |" for c in cells)
    return (f"| `{name}` | {forget_label(meta)} | {forget['acc']:.2f} ({forget['loss']:.3f}) | "
            f"{retain['acc']:.2f} ({retain['loss']:.3f}) | {mia} |{extra}")


def has_beneath(meta):
    """Whether a sidecar's metrics hold the --probe measures."""
    return bool(meta.get("metrics") and beneath_cells(meta["metrics"]))


def card_table(sidecars):
    """The model cards' per-class table (Model | Forget Class | Forget class acc(loss) | Retain
    class acc(loss)), plus MIA, from the JSON sidecars that unlearn.py writes; with --probe's
    columns where any has them."""
    metas = []
    for path in sidecars:
        meta = read_json(path)
        if not isinstance(meta, dict) or "method" not in meta:
            raise ValueError(f"{path} is not an unlearn.py sidecar (a train.py one?): --table "
                             "reads those of unlearned models")
        checked(meta, UNLEARNED, path)
        metas.append((meta, os.path.basename(checkpoint_of(path))))
    beneath = any(has_beneath(meta) for meta, _ in metas)
    rows = [card_row(meta, name, beneath) for meta, name in metas]
    return "\n".join([card_header(beneath), *rows]) + "\n"



# ----------------------------------------------------------------------------- reading a run

def read_run(rundir):
    """Every sidecar of a run folder, by role, each checked as read (its layout above); a part that
    was not run is None or empty."""
    def one(name, spec):
        path = os.path.join(rundir, name)
        return read_checked(path, spec) if os.path.exists(path) else None

    def many(pattern, read):
        paths = sorted(glob.glob(os.path.join(rundir, pattern)))
        return {os.path.relpath(p, rundir): read(p) for p in paths}

    def sidecars(pattern, spec):  # of the checkpoints `pattern` names (cli.sidecars_of)
        found = sidecars_of(os.path.join(rundir, pattern))
        return {os.path.relpath(p, rundir): read_checked(p, spec) for p in found}
    full = os.path.relpath(sidecar_path(os.path.join(rundir, "full.pth")), rundir)
    return {"full": one(full, FULL),
            "log": read_log(os.path.join(rundir, "full.log.jsonl")),
            "retrains": sidecars("no_*.pth", TRAINED),
            "unlearn": sidecars("unlearn/*/*.pth", UNLEARNED),
            "evals": many("eval_*.json", read_evaluation),
            "sisa": one("sisa/eval.json", SISA_EVALUATION),
            "ensemble": one("ensemble/eval.json", ENSEMBLE_EVALUATION),
            "pools": many("pools/*/scores.json", read_scores)}


def diff(ours, published):
    return "-" if ours is None or published is None else f"{ours - published:+.2f}"


def table(header, rows):
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] +
                     ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def section_full(run):
    full = run["full"]
    if full is None:
        return "## Full model\n\nNot run (no full.pth.json)."
    acc = full["metrics"]["test_acc"]
    rows = [["full", full["arch"], f"{acc:.2f}%", f"{PUBLISHED_FULL:.1f}%",
             diff(acc, PUBLISHED_FULL), f"{full['seconds']:.1f}"]]
    return "## Full model\n\n" + table(["Model", "Arch", "Test top-1", "Published", "Diff",
                                        "Seconds"], rows)


def retained_accuracy(run, name):
    """The retrained model's test accuracy on the classes it kept,
    from any unlearn sidecar that evaluated it."""
    for meta in run["unlearn"].values():
        if meta["split"]["forget_class"] == name and meta.get("retrained_metrics"):
            return headline(meta["retrained_metrics"])[1]["acc"]
    return None


def section_retrains(run):
    rows = []
    for meta in run["retrains"].values():
        name = meta["split"]["forget_class"]
        kept, published = retained_accuracy(run, name), PUBLISHED_RETRAIN.get(name)
        rows.append([name, f"{meta['metrics']['test_acc']:.2f}%",
                     "-" if kept is None else f"{kept:.2f}%",
                     "-" if published is None else f"{published:.1f}%", diff(kept, published),
                     f"{meta['seconds']:.1f}"])
    if not rows:
        return "## Retrained without a class\n\nNot run (no no_<class>.pth.json)."
    return ("## Retrained without a class (the gold standard)\n\nThe card's accuracies are on the "
            "nine kept classes (96.6% without cat cannot be on all ten), so they are compared "
            "with ours on those.\n\n" +
            table(["Forgotten class", "Test top-1 (all classes)", "Test top-1 (kept classes)",
                   "Published", "Diff", "Seconds"], rows))


def mean_std(stat, scale=1.0, digits=2):
    return ("-" if stat is None
            else f"{scale * stat['mean']:.{digits}f} +- {scale * stat['std']:.{digits}f}")


def spread_cells(g):
    """A pool group's spread over its models:
    forget / retain / test accuracy, MIA, seconds per model."""
    s = g["spread"]
    return [mean_std(s["forget_acc"]), mean_std(s["retain_acc"]), mean_std(s["test_acc"]),
            mean_std(s["mia"], 1, 3), mean_std(g["seconds"], 1, 1)]


def klom_cell(g, s):
    """An example set's KLOM: median [25%, 75%] over the examples where it is defined, and how
    many are not."""
    q, undefined = g["klom_quantiles"][s], len((g.get("klom_undefined") or {}).get(s) or [])
    mid = len(q) // 2 if q else 0  # the median of the stored quantiles
    cell = "-" if q is None else f"{q[mid]:.2f} [{q[1]:.2f}, {q[-2]:.2f}]"
    return cell + (f" ({undefined} undefined)" if undefined else "")


def pool_row(name, g):
    return [name if name != "retrain" else "retrain (ceiling)", g["models"],
            f"{g['forget_quality']:.3f}", f"{g['utility']:.3f}", f"{g['score']:.3f}",
            *[klom_cell(g, s) for s in ("forget", "retain", "test")],
            f"{g['ulira']['acc']:.1f}", f"{g['ulira']['tpr_at_1%']:.1f}", *spread_cells(g)]


def halves_row(name, g):
    u = g["ulira"]
    def percent(x):
        return "-" if x is None else f"{x:.1f}"
    label = {"retrain": "retrain (ceiling)",
             "original": "original (floor: not unlearned)"}.get(name, name)
    return [label, g["models"], u["halves"], percent(u["acc"]), percent(u["tpr_at_1%"]),
            percent(u["tpr_at_0.1%"]), f"{u['pairs'][0]} / {u['pairs'][1]}", u["skipped"],
            *spread_cells(g)]


def section_halves(scores):
    """A halves pool (U-LiRA's own design):
    the attack per group, each half's models held out in turn."""
    header = ["Group", "Models", "Halves", "U-LiRA acc", "TPR@1%", "TPR@0.1%",
              "Pairs forgotten / unseen", "Not attacked", "Forget acc", "Retain acc", "Test acc",
              "MIA", "Seconds"]
    groups = scores["groups"]
    order = ["retrain", "original"] + sorted(set(groups) - {"retrain", "original"})
    return (f"### {scores['pool']}: U-LiRA on random halves ({scores['examples']} train "
            "examples)\n\nEvery model trained on a random half of the train set, then (but for "
            "the originals) unlearned a random forget set inside it; per example, Gaussians of "
            "the logit-scaled confidence over the other halves' models that forgot it and that "
            "never saw it, and each (model, example) pair scored by the likelihood ratio. U-LiRA "
            "accuracy 50 = cannot tell a forgotten example from one never seen; the originals' "
            "row is plain LiRA (trained on it vs never). Pairs with under 2 shadow values a side "
            "are not attacked.\n\n" +
            table(header, [halves_row(name, groups[name]) for name in order if name in groups]))


def section_pools(run):
    if not run["pools"]:
        return ("## Pools: did it really forget?\n\nNot run (no pools/<name>/scores.json; "
                "`make pool` then `make pool-score`).")
    parts = ["## Pools: did it really forget?\n\nA pool of training seeds (`make pool`): each "
             "group's first N/2 models against the retrained models N/2..N-1 "
             "(`studies/privacy.py`): F, the NeurIPS 2023 competition's forgetting quality (1 = "
             "indistinguishable from retraining, per example, at delta 1e-5), times the utility "
             "factor (retain and test accuracy over the retrained models'), is the score; KLOM "
             "median [25%, 75%] per example set (0 = the same margin distributions) over the "
             "examples where it is defined, the others counted (\"undefined\": every unlearned "
             "margin at the top bin edge); U-LiRA accuracy (50 = chance) and TPR at 1% FPR; the "
             "other columns: mean +- std over training seeds. The retrained models' own first "
             "half is the ceiling."]
    header = ["Group", "Models a side", "F", "Utility", "Score", "KLOM forget", "KLOM retain",
              "KLOM test", "U-LiRA acc", "U-LiRA TPR@1%", "Forget acc", "Retain acc", "Test acc",
              "MIA", "Seconds"]
    for path, scores in run["pools"].items():
        if scores.get("design") == "halves":
            parts.append(section_halves(scores))
            continue
        groups = scores["groups"]
        order = ["retrain", "original"] + sorted(set(groups) - {"retrain", "original"})
        rows = [pool_row(name, groups[name]) for name in order if name in groups]
        parts.append(f"### {scores['pool']} (N = {scores['n']}; examples: "
                     f"{scores['examples']})\n\n" +
                     table(header, rows))
    return "\n\n".join(parts)


def unlearn_row(method, meta):
    m, name = meta["metrics"], forget_label(meta)
    forget, retain = headline(m)
    published = PUBLISHED_UNLEARN.get(method, {}).get(name)
    gap = ("-" if not meta.get("retrained_metrics")
           else f"{avg_gap(m, meta['retrained_metrics']):.2f}")
    return [method, name, cell(forget), cell(retain), f"{m['test']['acc']:.2f}%",
            f"{m['test']['top5']:.2f}%",
            "-" if m["mia"] is None else f"{m['mia']:.3f}", gap, f"{meta['seconds']:.1f}",
            "-" if published is None else f"{published[0]:.2f}% ({published[1]:.3f})",
            "-" if published is None else f"{published[2]:.2f}% ({published[3]:.3f})",
            diff(retain["acc"], published and published[2])]


def section_unlearn(run):
    order = {name: k for k, name in enumerate(METHOD_ORDER)}
    metas = sorted((meta for meta in run["unlearn"].values() if meta.get("metrics")),
                   key=lambda meta: (order.get(meta["method"], len(order)), forget_label(meta)))
    if not metas:
        return "## Unlearning\n\nNot run (no unlearn/<method>/<class>.pth.json)."
    header = ["Method", "Class", "Forget acc (loss)", "Retain acc (loss)", "Test top-1",
              "Test top-5", "MIA", "Avg gap to retrained", "Seconds", "Published forget",
              "Published retain", "Diff retain"]
    header, rows = with_beneath(header, [unlearn_row(meta["method"], meta) for meta in metas],
                                [meta["metrics"] for meta in metas])
    beneath = (" Probe, CKA, relearn steps: beneath the outputs (evaluate.py --probe, "
               "docs/PRIVACY.md)." if len(header) > 12 else "")
    return ("## Unlearning, per method and forgotten class\n\nForget / "
            "retain: the test images of the forgotten class and of the "
            "others. Avg gap: mean |difference| to the retrained model over "
            f"forget, retain and test accuracy and MIA x 100.{beneath}\n\n" + table(header, rows))


def section_sisa(run):
    sisa = run["sisa"]
    if sisa is None:
        return "## SISA\n\nNot run (no sisa/eval.json)."
    rows = []
    for (path, m), when in zip(sisa["models"].items(), ("before", "after")):
        acc, mia = m["test"]["acc"], np.mean(m["member_mia"]) if m.get("member_mia") else m["mia"]
        pub_acc, pub_mia = PUBLISHED_SISA[when]
        rows.append([when, os.path.basename(path), f"{acc:.2f}%", f"{m['mia']:.3f}", f"{mia:.3f}",
                     f"{pub_acc:.1f}%", f"{pub_mia:.3f}", diff(acc, pub_acc),
                     diff(100 * mia, 100 * pub_mia)])
    return ("## SISA: before and after forgetting a random 20%\n\nMIA of the aggregate and the "
            "mean of the shard models' MIAs (the report's); MIA differences x 100.\n\n" +
            table(["", "Model", "Test top-1", "MIA", "Shard MIA", "Published top-1",
                   "Published MIA", "Diff top-1", "Diff MIA"], rows))


def section_ensemble(run):
    ensemble = run["ensemble"]
    if ensemble is None:
        return "## Ensemble\n\nNot run (no ensemble/eval.json)."
    rows = [[os.path.basename(p), f"{m['test']['acc']:.2f}%",
             f"{PUBLISHED_ENSEMBLE:.2f}%" if p == "ensemble" else "-",
             diff(m["test"]["acc"], PUBLISHED_ENSEMBLE) if p == "ensemble" else "-"]
            for p, m in ensemble["models"].items()]
    return "## Ensemble\n\n" + table(["Model", "Test top-1", "Published", "Diff"], rows)


# --------------------------------------------------------------------- plots (matplotlib, optional)

def pyplot():
    """matplotlib's pyplot on a file-only backend; ImportError when matplotlib is not installed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save(fig, path):
    fig.tight_layout()  # titles of a grid's second row clear the first row's axis labels
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"))
    pyplot().close(fig)


def grid(plt, n, size=3):
    """A figure with n panels, at most 5 a row;
    returns (figure, the n axes) and hides the unused ones."""
    cols, rows = min(5, n), -(-n // 5)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes.flat[:n]


def labelled(evaluation):
    """{label: metrics} of an evaluate.py --json file:
    'retrained', 'full', and unlearn/<method>/... as the method."""
    def label(path):
        if path == evaluation["retrained"]:
            return "retrained"
        parts = path.split("/")  # <run>/unlearn/<method>/<class>.pth: the method; else the name
        unlearned = len(parts) >= 3 and parts[-3] == "unlearn"
        return parts[-2] if unlearned else os.path.splitext(parts[-1])[0]
    return {label(p): m for p, m in evaluation["models"].items()}


def plot_per_class(evaluation, classes, path):
    plt = pyplot()
    models = labelled(evaluation)
    fig, ax = plt.subplots(figsize=(max(8, len(classes)), 4))
    width = 0.8 / len(models)
    for k, (name, m) in enumerate(models.items()):
        ax.bar(np.arange(len(classes)) + k * width, m["per_class"], width, label=name)
    ax.set(xticks=np.arange(len(classes)) + 0.4 - width / 2, ylabel="test accuracy (%)",
           title=f"Per-class test accuracy, {evaluation['split']['forget_class']} forgotten")
    ax.set_xticklabels(classes, rotation=45)
    ax.legend(fontsize="small", ncol=2)
    save(fig, path)


def plot_losses(evaluation, path):
    """What the MIA sees: per-example losses of the train forget set
    (members) and the test forget set."""
    plt = pyplot()
    models = labelled(evaluation)
    fig, axes = grid(plt, len(models))
    for ax, (name, m) in zip(axes, models.items()):
        bins = np.histogram_bin_edges(m["train_forget"]["losses"] + m["test_forget"]["losses"], 30)
        ax.hist(m["train_forget"]["losses"], bins, alpha=0.6, label="train forget (member)")
        ax.hist(m["test_forget"]["losses"], bins, alpha=0.6, label="test forget")
        ax.set(title=name, xlabel="loss")
    axes[0].legend(fontsize="small")
    save(fig, path)


def plot_confusion(evaluation, classes, path):
    plt = pyplot()
    models = labelled(evaluation)
    fig, axes = grid(plt, len(models))
    for ax, (name, m) in zip(axes, models.items()):
        ax.imshow(np.array(m["confusion"]), cmap="Blues")
        ax.set(title=name, xlabel="predicted", ylabel="true", xticks=[], yticks=[])
    save(fig, path)


def plot_curves(log, path):
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3))
    epochs = [r["epoch"] for r in log]
    left.plot(epochs, [r["loss"] for r in log])
    left.set(xlabel="epoch", ylabel="train loss", title="Full model: training loss")
    right.plot(epochs, [r["train_acc"] for r in log], label="train")
    right.plot(epochs, [r["test_acc"] for r in log], label="test")
    right.set(xlabel="epoch", ylabel="accuracy (%)", title="Full model: accuracy")
    right.legend()
    save(fig, path)


def plot_seconds(run, path):
    plt = pyplot()
    seconds = {}
    for meta in run["unlearn"].values():
        seconds.setdefault(meta["method"], []).append(meta["seconds"])
    if run["retrains"]:
        seconds["retrain (train.py)"] = [m["seconds"] for m in run["retrains"].values()]
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.bar(list(seconds), [np.mean(v) for v in seconds.values()])
    ax.set(ylabel="seconds (mean over classes)", yscale="log", title="Time per method")
    save(fig, path)


def plot_pool(scores, path):
    """Per group: the histogram of the forget examples' epsilons,
    and the KLOM quantiles of each example set."""
    plt = pyplot()
    groups = scores["groups"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.5))
    bins = np.linspace(0, max(max(g["epsilons"]) for g in groups.values()) + 0.5, 30)
    for name, g in groups.items():
        left.hist(g["epsilons"], bins=bins, histtype="step", label=name)
    left.set(xlabel="per-example epsilon (forget set)", ylabel="examples",
             title=f"{scores['pool']}: epsilons")
    left.legend(fontsize=7)
    sets = ("forget", "retain", "test")
    for k, (name, g) in enumerate(groups.items()):
        q = {s: g["klom_quantiles"][s] or [np.nan] * 5 for s in sets}  # None: no point to draw
        x = np.arange(len(sets)) + (k - len(groups) / 2) * 0.8 / len(groups)
        mid = len(q["forget"]) // 2
        right.errorbar(x, [q[s][mid] for s in sets], fmt="o", label=name,
                       yerr=[[q[s][mid] - q[s][0] for s in sets],
                             [q[s][-1] - q[s][mid] for s in sets]])
    right.set(xticks=range(len(sets)), xticklabels=sets, ylabel="KLOM (median, 5-95%)",
              title="KLOM per example set")
    save(fig, path)


def write_plots(run, folder):
    """Every plot the run's files allow, drawn into folder;
    returns [(title, file name)], or None without matplotlib."""
    try:
        pyplot()
    except ImportError:
        return None
    plots = []
    for evaluation in run["evals"].values():
        classes, c = evaluation["classes"], evaluation["split"]["forget_class"]
        plot_per_class(evaluation, classes, os.path.join(folder, f"per_class_{c}.png"))
        plot_losses(evaluation, os.path.join(folder, f"losses_{c}.png"))
        plot_confusion(evaluation, classes, os.path.join(folder, f"confusion_{c}.png"))
        plots += [(f"Per-class test accuracy, {c} forgotten", f"per_class_{c}.png"),
                  (f"Losses the MIA sees, {c} forgotten", f"losses_{c}.png"),
                  (f"Confusion matrices, {c} forgotten", f"confusion_{c}.png")]
    if run["log"]:
        plot_curves(run["log"], os.path.join(folder, "curves.png"))
        plots.append(("Training curves of the full model", "curves.png"))
    if run["unlearn"] or run["retrains"]:
        plot_seconds(run, os.path.join(folder, "seconds.png"))
        plots.append(("Time per method", "seconds.png"))
    for scores in run["pools"].values():
        if scores.get("design") == "halves":  # one attack per group: the table says it all
            continue
        plot_pool(scores, os.path.join(folder, f"pool_{scores['pool']}.png"))
        plots.append((f"Pool {scores['pool']}: per-example epsilons and KLOM",
                      f"pool_{scores['pool']}.png"))
    return plots


# ----------------------------------------------------------------------------- model cards

# A YAML comment only our cards carry, first in their front matter: --card replaces a file that
# starts with it, never a note of the user's that merely starts with front matter (Jekyll, Hugo and
# Obsidian write those).
CARD_MARK = "# model card written by report.py of unlearning-recipes: it writes this file again"
CARD_START = f"---\n{CARD_MARK}\n"


def card_front_matter(meta, license):
    """The published cards' YAML front matter (license, dataset, metrics, base model, tags), after
    CARD_MARK."""
    method = meta.get("method")
    dataset = DATASET_IDS.get(meta["dataset"], meta["dataset"])
    lines = ["---", CARD_MARK, f"license: {license}", "datasets:", f"- {dataset}", "metrics:",
             "- accuracy"]
    # a published source by its Hub repository, as the published cards name theirs
    if meta.get("source"):
        source = hub_name(meta["source"])
        repository = (source[len("hf://"):].rsplit("/", 1)[0].split("@")[0]
                      if source.startswith("hf://") else source)
        lines += ["base_model:", f"- {repository}"]
    tags = ["machine_unlearning", method] if method else ["machine-unlearning", meta["arch"]]
    lines += ["tags:", *[f"- {t}" for t in tags], "library_name: pytorch",
              "pipeline_tag: image-classification", "---"]
    return "\n".join(lines)


def card_results(meta, name):
    """The cards' results table: forget / retain class acc(loss)
    for an unlearned model, test top-1 for a trained one."""
    if meta.get("method"):
        beneath = has_beneath(meta)
        if not meta.get("metrics"):
            return "Not evaluated (made with --no-eval)."
        return card_header(beneath) + "\n" + card_row(meta, name, beneath)
    return table(["Model", "Excluded Class", "Test accuracy"],
                 [[f"`{name}`", meta["split"]["forget_class"] or "None",
                   f"{meta['metrics']['test_acc']:.2f}%"]])


def model_card(meta, name, license="mit"):
    """A Markdown card in the layout of the published Hugging Face cards,
    from a checkpoint's JSON sidecar."""
    versions, argv = meta.get("versions") or {}, meta.get("argv") or []  # absent: None (checked)
    what = (f"unlearned with {meta['method']}" if meta.get("method") else
            f"trained with the {meta.get('recipe') or 'sgd'} recipe")
    details = [f"- **Base Model**: {meta['arch']}", f"- **Dataset**: {meta['dataset']}",
               "- **Excluded Class**: "
               f"{forget_label(meta) if meta['split']['n_forget'] else 'None'}",
               "- **Loss Function**: cross-entropy",
               *[f"- **{k}**: {v}" for k, v in meta["config"].items()],
               f"- **Seconds**: {meta['seconds']:.1f} on {meta['device']}",
               "- **Versions**: " + ", ".join(f"{k} {v}" for k, v in versions.items())]
    if meta.get("source"):
        details.insert(0, f"- **Unlearned from**: `{hub_name(meta['source'])}`")
    if name in published_names():
        details.insert(0, f"- **Published counterpart**: `{published_names()[name]}` "
                          f"(`python -m studies.verify_published` compares them)")
    return "\n".join([card_front_matter(meta, license), "", f"# {name}", "",
                      f"A {meta['arch']} on {meta['dataset']}, {what} (`{' '.join(argv)}`).", "",
                      "## Testing Data", "", f"**Dataset**: {meta['dataset']} test set  ",
                      "**Metrics**: Forget class accuracy(loss), Retain class accuracy(loss), MIA"
                      + (", linear-probe accuracy, linear CKA, relearn steps (docs/PRIVACY.md)"
                         if has_beneath(meta) else "") if meta.get("method")
                      else "**Metrics**: Top-1 accuracy", "", "## Training Details", "",
                      "### Training Procedure", "",
                      *details, "", "## Results", "", card_results(meta, name), ""])


def write_cards(rundir):
    """A card for every checkpoint of the run (a .pth with a JSON sidecar):
    cards/<path with / as _>.md."""
    written = []
    for pth in sorted(glob.glob(os.path.join(rundir, "**", "*.pth"), recursive=True)):
        sidecar = sidecar_path(pth)
        if not os.path.exists(sidecar):
            continue
        if "split" not in read_object(sidecar) or os.path.relpath(pth, rundir).startswith("pools"):
            continue  # SISA slices, pools' models
        meta = read_sidecar(sidecar)
        name = os.path.relpath(os.path.splitext(pth)[0], rundir).replace(os.sep, "_")
        card = model_card(meta, os.path.basename(pth))
        atomic_write(os.path.join(rundir, "cards", name + ".md"), lambda f: f.write(card.encode()))
        written.append(name + ".md")
    return written


# ----------------------------------------------------------------------------- the report

def build_report(rundir, run, plots, cards):
    full = run["full"]
    scope = (f"This run: {full['arch']} on {full['dataset']}, {full['split']['n_train']} train / "
             f"{full['split']['n_test']} test images, {full['config']['epochs']} "
             f"epochs, {full['device']}."
             if full else "This run has no full model.")
    if plots is None:
        figures = ("No plots: matplotlib is not installed (`pip install matplotlib`, then run "
                   "report.py again).")
    else:
        figures = "\n\n".join(f"### {title}\n\n![{title}](plots/{name})"
                              for title, name in plots) or "No plots."
    parts = [f"# Report: {os.path.basename(os.path.abspath(rundir))}",
             f"{scope} Published: ResNet18 on all of CIFAR-10 for 200 epochs (the model cards), "
             "SISA on CIFAR-100 (ResNet34 from ImageNet), the ensemble of 5 ImageNet ResNet18s. A "
             "smaller run is not expected to match them; the columns show where it stands.",
             section_full(run), section_retrains(run), section_unlearn(run), section_sisa(run),
             section_ensemble(run), section_pools(run),
             "## Plots\n\n" + figures,
             "## Model cards\n\n" + ("\n".join(f"- [{c}](cards/{c})" for c in cards)
                                      or "No checkpoints.")]
    return "\n\n".join(parts) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    parser.add_argument("rundir", nargs="?", default=None,
                        help="a run folder of make reproduce / reproduce-small")
    parser.add_argument("--out", default=None,
                        help="the report's path (default: RUNDIR/report.md)")
    parser.add_argument("--card", default=None,
                        help="instead: write the model card of this checkpoint beside it, as "
                        "<name>.md, from its JSON sidecar (default: off)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out (or card) that this script did not write "
                        "(default: refuse)")
    parser.add_argument("--license", default="mit",
                        help="license in a --card's front matter (default: mit, as the published "
                        "cards)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.card:
        sidecar = sidecar_path(args.card)
        if not os.path.exists(sidecar):
            raise ValueError(f"{sidecar} not found: a card is built from the JSON "
                             "sidecar the scripts write")
        out = os.path.splitext(args.card)[0] + ".md"
        check_out(out, "--card", [args.card], text_of_kind(CARD_START), args.overwrite)
        card = model_card(read_sidecar(sidecar), os.path.basename(args.card), args.license)
        atomic_write(out, lambda f: f.write(card.encode()))
        return print(f"wrote {out}")
    if not args.rundir or not os.path.isdir(args.rundir):
        raise ValueError(f"give a run folder (make reproduce writes one), got {args.rundir!r}")
    out = args.out or os.path.join(args.rundir, "report.md")
    read = [p for pattern in ("**/*.json", "**/*.jsonl", "**/*.pth") for p in
            glob.glob(os.path.join(args.rundir, pattern), recursive=True)]
    check_out(out, "--out", read, text_of_kind("# Report: "), args.overwrite)
    for folder in ("cards", "plots"):  # written after this check: the report would replace a card
        inside = os.path.join(os.path.realpath(args.rundir), folder)
        if os.path.realpath(out).startswith(inside + os.sep):
            raise ValueError(f"--out {out} is inside {os.path.join(args.rundir, folder)}, where "
                             f"report.py writes the run's {folder}; write the report elsewhere")
    try:
        run = read_run(args.rundir)
        plots = write_plots(run, os.path.join(args.rundir, "plots"))
        report = build_report(args.rundir, run, plots, write_cards(args.rundir))
    except KeyError as e:
        raise ValueError(f"a JSON file in {args.rundir} lacks the field {e}; report.py reads the "
                         "files this project's scripts write") from None
    atomic_write(out, lambda f: f.write(report.encode()))
    print(report if plots is not None else report + "\n(no plots: matplotlib is not installed)")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    run(main)
