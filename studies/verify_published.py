"""Check the published checkpoints against their model cards, and our SSD against the published SSD models.

    make verify-published                      # all 31 published ResNet18s (1.4 GB, downloaded once); GPU advised
    make verify-published-small                # on a CPU: the first 100 test and 100 train images of each class
    python -m studies.verify_published --classes cat dog --test-subset 100 --subset 100 \\
        --out runs/verify-cat-dog

Every checkpoint of the three cards (published.PUBLISHED_CHECKPOINTS) is fetched by its hf:// name and evaluated on the
test set with our evaluation: the cards' columns (full and retrain top-1, SSD and AdvNegGrad forget / retain class
acc (loss)) beside ours, with the differences. Then our SSD with the card's lambda 1 and alpha 10 unlearns each
class, starting at the published original, and is compared with the published SSD checkpoint weight by weight
(the fraction of weights each changed, the fraction equal, the largest difference) and by its table row. Each
step is a file under --out that a rerun with the same settings reuses; --out/report.md holds the tables and a
plain verdict for each.
The first run needs network access (or the files placed in torch's hub cache: the error says where).
"""
import argparse
import dataclasses
import os

import numpy as np
import torch
import torch.nn.functional as F

from cli import (Progress, add_runtime_args, atomic_write, check_writable, eval_batch_size, lock, pick_device, positive_int,
                 read_json, run, write_json)
from data import STATS, Loader, load_dataset, make_split, resolve_class
from evaluate import predict
from models import check_output, fetch, input_size, load_model, save_model, sha256_file, to_device
from published import CIFAR10, PUBLISHED_FULL, PUBLISHED_RETRAIN, PUBLISHED_UNLEARN, published_name
from report import table
from methods import SSDConfig, unlearn_ssd
from unlearn import make_loaders, run_method

# A row agrees with its card when our evaluation of the same weights on the same test set is within these: the cards
# print accuracies to 0.01 and losses to 0.001, so anything beyond is a difference in the evaluation or the weights.
ACC_TOLERANCE = 0.5  # percentage points
LOSS_TOLERANCE = 0.05  # relative


def class_sums(model, data, split, device):
    """Per class of the test set: images, correct top-1 and summed cross-entropy (fp32), from one pass."""
    loader = Loader(data, split.test, train_set=False, batch_size=eval_batch_size(device), device=device,
                    size=input_size(model))
    logits, labels = predict(model, Progress(loader, "evaluating test"))
    correct = (logits.argmax(1) == labels).double()
    losses = F.cross_entropy(logits, labels, reduction="none").double()
    count = lambda values: torch.zeros(len(data.classes), dtype=torch.float64).index_add_(0, labels, values).tolist()
    return {"n": count(torch.ones_like(losses)), "correct": count(correct), "loss": count(losses)}


def columns(sums, k=None):
    """(acc %, loss) of the test images of class k and of all other classes; k None: of every class (top-1)."""
    n, correct, loss = (np.array(sums[key]) for key in ("n", "correct", "loss"))
    def cell(mask):
        return 100 * correct[mask].sum() / n[mask].sum(), loss[mask].sum() / n[mask].sum()
    mask = np.arange(len(n)) == k
    return cell(np.ones(len(n), bool)) if k is None else (cell(mask), cell(~mask))


def evaluate_published(name, data, split, device, settings, folder):
    """The class sums of one published checkpoint (fetched once), with its file's sha256; reused from
    folder/<file>.json when made with the same settings from the same file (by sha256, not by name: $HF_ENDPOINT
    or a new revision can serve other weights under one name)."""
    path = os.path.join(folder, os.path.basename(name) + ".json")
    saved = read_json(path) if os.path.exists(path) else {}
    sha256 = sha256_file(fetch(name))
    if saved.get("settings") == settings and saved.get("sha256") == sha256:
        return saved
    model = to_device(load_model(name, num_classes=len(data.classes)), device)
    result = {"name": name, "sha256": sha256, "settings": settings, **class_sums(model, data, split, device)}
    write_json(path, result)
    return result


def unlearn_ours(original_name, k, data, args, device, settings, folder):
    """Our SSD (SSDConfig's defaults, the card's lambda 1 and alpha 10, with --full-set) of class k from the
    published original, saved as folder/<the original's sha256>/<the published file name> (other weights under
    the same name make other files); reused when finished with the same settings."""
    source = sha256_file(fetch(original_name))
    out = os.path.join(folder, source[:16], os.path.basename(published_name("ssd", k)))
    cfg = SSDConfig(full_set=args.full_set)
    identity = {"source": original_name, "source_sha256": source, "config": dataclasses.asdict(cfg), **settings,
                "forget_class": k}
    if not check_output(out, identity, args.overwrite):
        split = make_split(data, forget_class=k, subset=args.subset, test_subset=args.test_subset)
        model = load_model(original_name, num_classes=len(data.classes))
        retain_loader, forget_loader = make_loaders(data, split, cfg, device, 0, input_size(model))
        with lock(out):
            model, seconds = run_method(unlearn_ssd, to_device(model, device), Progress(retain_loader, "retain"),
                                        Progress(forget_loader, "forget"), cfg, device)
            save_model(out, model, {"method": "ssd", "config": identity["config"], "source": original_name,
                                    "seconds": seconds, "identity": identity})
    return out


def compare_weights(original, ours, theirs):
    """Over every floating-point entry of three state_dicts with the same keys (weights and BN statistics): the
    fraction that ours and theirs each changed from the original, the fraction where both made the same choice to
    change or keep, the fraction where ours equals theirs exactly, and the largest |ours - theirs|."""
    keys = [key for key, value in original.items() if value.is_floating_point()]
    o, a, b = (torch.cat([state[key].flatten().double() for key in keys]) for state in (original, ours, theirs))
    changed_ours, changed_theirs = a != o, b != o
    return {"n": o.numel(), "changed_ours": changed_ours.double().mean().item(),
            "changed_theirs": changed_theirs.double().mean().item(),
            "same_selection": (changed_ours == changed_theirs).double().mean().item(),
            "equal": (a == b).double().mean().item(), "max_diff": (a - b).abs().max().item()}


# ----------------------------------------------------------------------------- the report

def acc_loss(cell):
    return f"{cell[0]:.2f} ({cell[1]:.3f})"


def delta(ours, published):
    return f"{ours[0] - published[0]:+.2f} ({ours[1] - published[1]:+.3f})"


def agrees(ours, published):
    return (abs(ours[0] - published[0]) <= ACC_TOLERANCE and
            (published[1] is None or abs(ours[1] - published[1]) <= LOSS_TOLERANCE * published[1]))


def verdict(rows_agree, comparable):
    """One plain sentence on a table: does every row agree with the card?"""
    if not comparable:
        return ("Not comparable with the card: evaluated on the first images of each class only (--test-subset), so "
                "this table checks the pipeline, not the published numbers.")
    bad = [name for name, ok in rows_agree if not ok]
    within = f"{ACC_TOLERANCE} points of accuracy and {LOSS_TOLERANCE:.0%} of the loss"
    if not bad:
        return f"Agrees with the card: every row within {within}."
    return f"Does not agree with the card for {', '.join(bad)} (each differs by more than {within})."


def section_trained(evals, classes, comparable):
    full = columns(evals["full"])
    rows = [["full", f"{full[0]:.2f}", "-", f"{PUBLISHED_FULL:.1f}", f"{full[0] - PUBLISHED_FULL:+.2f}"]]
    checks = [("full", abs(full[0] - PUBLISHED_FULL) <= ACC_TOLERANCE)]
    for k in classes:
        kept = columns(evals["retrain", k], k)[1][0]
        rows.append([f"no_{CIFAR10[k]}", f"{columns(evals['retrain', k])[0]:.2f}", f"{kept:.2f}",
                     f"{PUBLISHED_RETRAIN[CIFAR10[k]]:.1f}", f"{kept - PUBLISHED_RETRAIN[CIFAR10[k]]:+.2f}"])
        checks.append((f"no_{CIFAR10[k]}", abs(kept - PUBLISHED_RETRAIN[CIFAR10[k]]) <= ACC_TOLERANCE))
    return ("## The original and the retrained models (jaeunglee/resnet18-cifar10-unlearning)\n\n"
            "Test top-1 (%). The full model's card number is on all classes; a retrain's is compared on its nine kept "
            "classes (96.6% without cat cannot be on all ten).\n\n" +
            table(["Model", "Top-1, all classes", "Top-1, kept classes", "Card", "Diff"], rows) +
            "\n\n" + verdict(checks, comparable))


def section_unlearned(role, title, evals, classes, comparable):
    rows, checks = [], []
    for k in classes:
        forget, retain = columns(evals[role, k], k)
        card = PUBLISHED_UNLEARN[role][CIFAR10[k]]
        rows.append([f"`{os.path.basename(published_name(role, k))}`", CIFAR10[k], acc_loss(forget),
                     acc_loss(card[:2]), delta(forget, card[:2]), acc_loss(retain), acc_loss(card[2:]),
                     delta(retain, card[2:])])
        checks.append((CIFAR10[k], agrees(forget, card[:2]) and agrees(retain, card[2:])))
    return (f"## {title}\n\nForget / retain class acc % (loss) on the test set, the published weights evaluated here "
            f"beside the card's table.\n\n" +
            table(["Model", "Forget class", "Forget (ours)", "Forget (card)", "Diff", "Retain (ours)", "Retain (card)",
                   "Diff"], rows) + "\n\n" + verdict(checks, comparable))


def section_ssd_weights(comparisons, evals, ours, classes, full_data, full_set):
    rows, same = [], []
    for k in classes:
        c = comparisons[k]
        forget, retain = columns(ours[k], k)
        theirs = columns(evals["ssd", k], k)
        fractions = [f"{c[key]:.4%}" for key in ("changed_ours", "changed_theirs", "same_selection", "equal")]
        rows.append([CIFAR10[k], *fractions, f"{c['max_diff']:.3g}", acc_loss(forget), acc_loss(retain),
                     acc_loss(theirs[0]), acc_loss(theirs[1])])
        same.append(c["equal"] == 1.0)
    if not full_data:
        plain = ("Not comparable with the published SSD models: our importances came from the first images of each "
                 "class only (--subset), so the weights cannot match; this table checks the pipeline.")
    elif all(same):
        plain = "Ours equals the published SSD checkpoints, weight for weight, for every class checked."
    else:
        plain = (f"Ours differs from the published SSD checkpoints for "
                 f"{', '.join(CIFAR10[k] for k, s in zip(classes, same) if not s)}: see the fractions above.")
    return (f"## Our SSD (D = {full_set}) on the published original against the published SSD models\n\n"
            "Over every floating-point entry of the state_dict (weights and BN statistics): the fraction each changed "
            "from the original, the fraction where both chose the same (change or keep), the fraction exactly equal "
            "and the largest |ours - theirs|; then both models' forget / retain class acc % (loss) on the test "
            "set.\n\n" +
            table(["Class", "Changed by ours", "Changed by theirs", "Same selection", "Equal", "Max diff",
                   "Ours forget", "Ours retain", "Theirs forget", "Theirs retain"], rows) + "\n\n" + plain)


def build_report(args, data, evals, comparisons, ours, classes):
    comparable = args.test_subset is None
    scope = (f"Dataset {data.name}: {'all' if comparable else f'the first {args.test_subset}'} test images of each "
             f"class; our SSD's importances from {'all' if args.subset is None else f'the first {args.subset}'} train "
             f"images of each class. Checkpoints and their sha256 are listed at the end.")
    listing = table(["Checkpoint", "sha256"], [[f"`{e['name']}`", f"`{e['sha256']}`"] for e in evals.values()])
    parts = ["# The published checkpoints, checked", scope, section_trained(evals, classes, comparable),
             section_unlearned("ssd", "SSD (Yurim0507/Selective_Synapse_Dampening)", evals, classes, comparable),
             section_unlearned("advneggrad", "AdvNegGrad (Yurim0507/AdvNegGrad)", evals, classes, comparable)]
    if comparisons:
        parts.append(section_ssd_weights(comparisons, evals, ours, classes, args.subset is None, args.full_set))
    parts.append("## Checkpoints\n\n" + listing)
    return "\n\n".join(parts) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="cifar10", help="cifar10, or an image folder / .tar.gz of CIFAR-10 with "
                        "its class names (default: cifar10)")
    parser.add_argument("--data-dir", default="./data", help="where datasets are downloaded and cached "
                        "(default: ./data)")
    parser.add_argument("--classes", nargs="+", default=None, help="the classes to check, by name or index "
                        "(default: all ten)")
    parser.add_argument("--subset", type=positive_int, default=None, help="our SSD's importances from the first N "
                        "train images of each class (default: all, as the card)")
    parser.add_argument("--test-subset", type=positive_int, default=None, help="evaluate on the first N test images "
                        "of each class (default: all, as the cards)")
    parser.add_argument("--no-ssd", action="store_true", help="skip our SSD runs and the weight comparison "
                        "(default: off)")
    parser.add_argument("--full-set", default=SSDConfig.full_set, choices=("retain+forget", "retain"),
                        help="our SSD's D of I_D (default: retain+forget, the official scripts'); running both "
                        "shows which one the published SSD models were made with")
    parser.add_argument("--out", default="runs/verify-published", help="folder of the evaluations, our SSD models "
                        "and report.md (default: runs/verify-published)")
    parser.add_argument("--overwrite", action="store_true", help="replace our SSD models made with other settings "
                        "(default: off)")
    add_runtime_args(parser, precision=None, seed=None)  # fp32 always: the cards' losses
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    data = load_dataset(args.dataset, args.data_dir)
    if list(data.classes) != list(CIFAR10):
        raise ValueError(f"--dataset {args.dataset} has the classes {', '.join(data.classes)}; the published models "
                         f"are CIFAR-10's ({', '.join(CIFAR10)}), in that order")
    # the published models expect the card's Normalize, which an image folder's own statistics would not give
    data = dataclasses.replace(data, mean=STATS["cifar10"][0], std=STATS["cifar10"][1])
    classes = sorted({resolve_class(data.classes, c) for c in args.classes or range(len(CIFAR10))})
    report_path = os.path.join(args.out, "report.md")
    check_writable(report_path)
    device, _ = pick_device(args.device, "fp32")  # fp32: the cards' losses
    settings = {"dataset": data.name, "test_subset": args.test_subset}
    split = make_split(data, test_subset=args.test_subset)
    names = {"full": published_name("full")}
    names.update({(role, k): published_name(role, k) for role in ("retrain", "ssd", "advneggrad") for k in classes})
    evals = {}
    for key, name in names.items():
        print(name, flush=True)
        evals[key] = evaluate_published(name, data, split, device, settings, os.path.join(args.out, "evals"))
    comparisons, ours = {}, {}
    if not args.no_ssd:
        original = load_model(names["full"]).state_dict()
        for k in classes:
            print(f"our SSD, forgetting {CIFAR10[k]}", flush=True)
            path = unlearn_ours(names["full"], k, data, args, device, {**settings, "subset": args.subset},
                                os.path.join(args.out, "ssd", args.full_set))
            model = load_model(path)
            ours[k] = class_sums(to_device(model, device), data, split, device)
            comparisons[k] = compare_weights(original, model.state_dict(), load_model(names["ssd", k]).state_dict())
        write_json(os.path.join(args.out, f"ssd_comparison_{args.full_set}.json"),
                   {CIFAR10[k]: c for k, c in comparisons.items()})
    report = build_report(args, data, evals, comparisons, ours, classes)
    atomic_write(report_path, lambda f: f.write(report.encode()))
    print(report)
    print(f"wrote {report_path}")


if __name__ == "__main__":
    run(main, "interrupted; finished steps are kept under --out, and a rerun continues from them")
