"""The CIFAR-100 report as it was run: fine-tuning from its published ResNet32 and ResNet56, SISA 4 x 5, and its
forget set (positions 20000-29999 of the order SISA's shards cut), with the report's tables beside ours.

    make reproduce-c100                   # GPU, network once (CIFAR-100, the weights, ImageNet's ResNet34)
    make reproduce-c100-small             # a CPU: the same pipeline on a subset, SISA with a resnet20
    python -m studies.reproduce_c100 --dataset cifar100 --out runs/c100

For each published model (chenyaofo/pytorch-cifar-models:cifar100_resnet32 and _resnet56): top-1 and top-5 on the
train, test and forget sets and the MIA before and after fine-tuning 20 epochs on the retain set (unlearn.py
--method finetune: the report's settings), and its test top-1 under other plausible preprocessings (the weights'
own CIFAR-100 statistics, CIFAR-10's, ImageNet's, mean and std 0.5, none), to find which gives the report's
"before" numbers. SISA: the report's recipe (4 shards x 5 slices, ImageNet ResNet34 transfer), the forget set
unlearned, the top-1 and MIA before and after with the per-shard MIA. Every step is a file under --out; a rerun
continues. Writes OUT/c100.md and c100.json.
"""
import argparse
import dataclasses
import os
import time

from cli import (add_runtime_args, atomic_write, check_out, pick_device, positive_int, read_json, run, text_of_kind,
                 write_json)
from data import (add_data_args, input_files, load_dataset, make_split, positions,
                  with_normalization)
from models import sidecar_path
from published import CIFAR_MODELS, CIFAR_MODELS_STATS, PUBLISHED_CIFAR_MODELS, PUBLISHED_SISA
import sisa as sisa_py
from studies.reproduce_cards import (INTERRUPTED, check_settings, dataset_name, failure,
                                     metrics_of, parsed_flags, run_in_process)

MODELS = ("cifar100_resnet32", "cifar100_resnet56")
# The report's own numbers: its "before" test top-1 of the published weights (one table gives ResNet32 54.8% and
# ResNet56 56.0%, another ResNet56 66.0%), and SISA's per-shard MIA before and after forgetting its forget set
REPORT_BEFORE = {"cifar100_resnet32": (54.8,), "cifar100_resnet56": (56.0, 66.0)}
REPORT_SHARD_MIA = {"before": (0.494, 0.523, 0.584, 0.506), "after": (0.490, 0.496, 0.501, 0.507)}
# The preprocessings tried on the published weights: (mean, std) of ToTensor()'s [0, 1] pixels
PREPROCESSINGS = {"their CIFAR-100 statistics": CIFAR_MODELS_STATS["cifar100"],
                  "CIFAR-10 statistics": CIFAR_MODELS_STATS["cifar10"],
                  "ImageNet statistics": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                  "mean and std 0.5": ((0.5,) * 3, (0.5,) * 3), "none (ToTensor only)": ((0.0,) * 3, (1.0,) * 3)}


OUTPUTS = ("before/*", "finetune/*", "sisa.log", "sisa/manifest_full.*", "sisa/unlearned.*",
           "sisa/eval.*", "c100.*")  # the steps (SISA's slices, named by their making, are reused)
SISA_FLAGS_SET_HERE = {  # sisa.py train's flags that --sisa-flags cannot change: {dest: why}
    **dict.fromkeys(("dataset", "data_dir", "device", "subset", "test_subset", "forget_class",
                     "forget_fraction", "forget_seed", "forget_indices", "forget_positions",
                     "keep_half"), "is a flag of reproduce_c100.py itself: give it there"),
    **dict.fromkeys(("out", "shard", "overwrite", "wait"),
                    "is set by reproduce_c100.py"),
    "seed": "is --forget-seed's: the forget positions count in the order SISA's shards are cut "
            "with it (the report's design); give --forget-seed instead",
    **dict.fromkeys(("shards", "slices"), "is the report's design, 4 shards x 5 slices, which its "
                    "forget positions and per-shard MIA describe")}


def data_flags(args):
    """The data flags of every step: the forget set is positions A:B of --forget-seed's order."""
    flags = ["--dataset", args.dataset, "--data-dir", args.data_dir, "--device", args.device]
    flags += ["--subset", str(args.subset)] if args.subset else []
    flags += ["--test-subset", str(args.test_subset)] if args.test_subset else []
    return flags + ["--forget-positions", "{}:{}".format(*args.forget_positions), "--forget-seed",
                    str(args.forget_seed)]


def step(argv):
    """One script run in this process; a failure stops everything with its traceback or its last
    lines."""
    code, lines = run_in_process(argv)
    if code:
        raise ValueError(failure(argv, lines))


def summary(metrics):
    """top-1 / top-5 on the train set (forget + retain), the test set and the forget set, and the MIA."""
    forget, retain = metrics["train_forget"], metrics["train_retain"]
    n = forget["n"] + retain["n"]
    train = {k: (forget[k] * forget["n"] + retain[k] * retain["n"]) / n for k in ("acc", "top5")}
    return {"train": train, "test": {k: metrics["test"][k] for k in ("acc", "top5")},
            "forget": {k: forget[k] for k in ("acc", "top5")}, "mia": metrics["mia"]}


def evaluate_published(args, name, data, split, device, out):
    """The published weights, before any unlearning: the summary under their own normalisation and the test top-1
    under each preprocessing; reused from `out` when there."""
    if os.path.isfile(out):
        return read_json(out)
    from evaluate import evaluate_model
    from models import load_model, to_device
    model = to_device(load_model(CIFAR_MODELS + name, num_classes=len(data.classes)), device)
    own = with_normalization(data, PREPROCESSINGS["their CIFAR-100 statistics"], name)
    result = {"before": summary(evaluate_model(model, own, split, device, mia=True)), "preprocessing": {}}
    for label, (mean, std) in PREPROCESSINGS.items():
        result["preprocessing"][label] = test_accuracy(model, dataclasses.replace(data, mean=mean, std=std), split,
                                                       device)
    write_json(out, {"kind": "c100-published", **result})
    return result


def test_accuracy(model, data, split, device):
    """Test top-1 (%), fp32."""
    from cli import eval_batch_size
    from data import Loader
    from evaluate import predict
    loader = Loader(data, split.test, train_set=False, batch_size=eval_batch_size(device), device=device)
    logits, labels = predict(model, loader)
    return 100 * (logits.argmax(1) == labels).float().mean().item()


def finetune(args, name, out):
    """unlearn.py --method finetune from the published weights on the retain set: 20 epochs, the report's."""
    path = os.path.join(out, "finetune", f"{name}.pth")
    sidecar = sidecar_path(path)
    if not (os.path.isfile(sidecar) and metrics_of(sidecar)):  # not run, or stopped after 'saved'
        step(["unlearn.py", *data_flags(args), "--method", "finetune", "--model", CIFAR_MODELS + name, "--out", path,
              "--epochs", str(args.epochs)])
    metrics = metrics_of(sidecar)
    if metrics is None:
        raise ValueError(f"{sidecar} holds no evaluation: run the same command again to evaluate it")
    return {**summary(metrics), "epochs": read_json(sidecar)["config"]["epochs"]}


def sisa(args, out):
    """sisa.py train with the report's recipe on the whole train set, then sisa.py unlearn
    forgetting the forget positions (their order is the shards': sisa.py's --seed is
    --forget-seed), then both evaluated with the MIA. Results are looked up by file name, so that
    the folder may be copied or spelt otherwise."""
    folder = os.path.join(out, "sisa")
    manifest, unlearned, evaluation = (os.path.join(folder, f) for f in ("manifest_full.json", "unlearned.json",
                                                                         "eval.json"))
    flags = data_flags(args)
    plain = flags[:flags.index("--forget-positions")]
    if not os.path.isfile(manifest):
        step(["sisa.py", "train", *plain, *args.sisa_flags.split(), "--seed",
              str(args.forget_seed), "--out", folder])
    if not os.path.isfile(unlearned):
        step(["sisa.py", "unlearn", *flags, "--model", manifest, "--out", unlearned, "--no-eval"])
    if not os.path.isfile(evaluation):
        step(["evaluate.py", *flags, "--model", manifest, "--model", unlearned, "--mia", "--json", evaluation])
    models = {os.path.basename(path): m for path, m in read_json(evaluation)["models"].items()}
    if not {"manifest_full.json", "unlearned.json"} <= models.keys():
        raise ValueError(f"{evaluation} does not evaluate {manifest} and {unlearned}: remove it "
                         f"to evaluate them again")
    pairs = (("before", models["manifest_full.json"]), ("after", models["unlearned.json"]))
    return {when: {"test": m["test"]["acc"], "mia": m["mia"], "shard_mia": m.get("member_mia")}
            for when, m in pairs}


def cells(s):
    return [f"{s[part]['acc']:.2f} / {s[part]['top5']:.2f}" for part in ("train", "test", "forget")] + [
        "-" if s["mia"] is None else f"{s['mia']:.3f}"]


def format_report(results):
    comparable = results["comparable"]
    lines = ["# The CIFAR-100 report, as it was run", "",
             f"Device {results['device']}; {results['date']}; forget set: positions {results['positions']} of the "
             f"order SISA's shards cut with seed {results['forget_seed']} "
             f"({results['n_forget']} images). "
             + ("" if comparable else "A subset: a pipeline check, not comparable with the report."), "",
             "## Fine-tuning from the published weights", "",
             "Top-1 / top-5 (%) and the MIA, before and after fine-tuning on the retain set ("
             + fine_tuning(results["models"]) + "; our MIA, the NeurIPS 2023 kit's).", "",
             "| Model | When | Train | Test | Forget | MIA | Published test top-1 | Report's test top-1 |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results["models"].items():
        published = PUBLISHED_CIFAR_MODELS[name][1]
        report = " / ".join(f"{v}%" for v in REPORT_BEFORE[name])
        lines.append(f"| {name} | before | " + " | ".join(cells(r["before"])) + f" | {published}% | {report} |")
        lines.append(f"| {name} | after | " + " | ".join(cells(r["after"])) + " | - | - |")
    lines += ["", "## Which preprocessing gives the report's \"before\" numbers?", "",
              "Test top-1 (%) of the published weights with each normalisation of ToTensor()'s [0, 1] pixels.", "",
              "| Preprocessing | " + " | ".join(results["models"]) + " |", "|---|" + "---|" * len(results["models"])]
    for label in PREPROCESSINGS:
        lines.append(f"| {label} | " + " | ".join(f"{r['preprocessing'][label]:.2f}"
                                                   for r in results["models"].values()) + " |")
    lines += ["", results["verdict"]]
    if results["sisa"]:
        s = results["sisa"]
        lines += ["", "## SISA, 4 shards x 5 slices", "", "| When | Test top-1 | MIA | Published | Per-shard MIA | "
                  "Report's per-shard MIA |", "|---|---|---|---|---|---|"]
        for when in ("before", "after"):
            shard = " / ".join(f"{m:.3f}" for m in s[when]["shard_mia"] or [])
            pub = PUBLISHED_SISA[when]
            lines.append(f"| {when} | {s[when]['test']:.2f}% | {s[when]['mia']:.3f} | {pub[0]}%, {pub[1]} | {shard} | "
                         + " / ".join(f"{m:.3f}" for m in REPORT_SHARD_MIA[when]) + " |")
    return "\n".join(lines) + "\n"


def fine_tuning(models):
    """The fine-tuning's epochs, as its sidecars say, beside the report's 20."""
    epochs = sorted({r["after"]["epochs"] for r in models.values()})
    report = ", the report's settings" if epochs == [20] else "; the report's: 20"
    return f"{', '.join(map(str, epochs))} epochs{report}"


def verdict(models, comparable):
    """Which preprocessing comes within a point of the report's "before" numbers, if any."""
    if not comparable:
        return "Not comparable: a subset of the data."
    found = [f"{label} for {name} ({r['preprocessing'][label]:.1f}%)" for name, r in models.items()
             for label in PREPROCESSINGS if any(abs(r["preprocessing"][label] - v) <= 1 for v in REPORT_BEFORE[name])]
    return ("Within a point of the report's numbers: " + "; ".join(found) + ".") if found else (
        "No preprocessing tried comes within a point of the report's numbers: what its evaluation did differently "
        "is still unknown.")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/c100", help="the run's folder (default: runs/c100)")
    parser.add_argument("--epochs", type=positive_int, default=20, help="fine-tuning epochs (default: 20, the report's)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=[m for m in PUBLISHED_CIFAR_MODELS
                                                                             if m.startswith("cifar100")],
                        help="the published models to start from (default: the report's ResNet32 and ResNet56)")
    parser.add_argument("--sisa-flags", default="--recipe transfer --arch resnet34-imagenet", help="sisa.py "
                        "train's flags (default: the report's recipe, ImageNet ResNet34 transfer)")
    parser.add_argument("--no-sisa", action="store_true", help="skip SISA (default: run it)")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo a folder made with other settings (its steps are removed); "
                        "with the same settings nothing is redone (default: refuse it)")
    add_runtime_args(parser, precision=None, seed=None)
    add_data_args(parser)
    parser.set_defaults(dataset="cifar100", forget_positions=(20000, 30000))
    return parser.parse_args(argv)


def check_args(args):
    """Before any work: the data flags the report's design cannot take, and --sisa-flags read with
    sisa.py train's parser (their slice epochs counted). Returns the folder's settings."""
    for flag in ("forget_class", "forget_fraction", "forget_indices", "keep_half"):
        if getattr(args, flag) is not None:
            raise ValueError(f"--{flag.replace('_', '-')}: the report's forget set is "
                             f"--forget-positions (of --forget-seed's order); leave it out")
    given, sisa = parsed_flags(args.sisa_flags, "--sisa-flags", SISA_FLAGS_SET_HERE,
                               parse=lambda argv: sisa_py.parse_args(["train", *argv])[1])
    if len(given.slice_epochs) != given.slices:  # else found by sisa.py, after the other steps
        raise ValueError(f"--sisa-flags {args.sisa_flags!r}: --slice-epochs gives "
                         f"{len(given.slice_epochs)} values for {given.slices} slices")
    return {"script": "reproduce_c100.py", "--dataset": dataset_name(args.dataset),
            "--subset": args.subset, "--test-subset": args.test_subset,
            "--forget-positions": args.forget_positions, "--forget-seed": args.forget_seed,
            "--epochs": args.epochs, "--sisa-flags": sisa}


def main(argv=None):
    started = time.time()
    args = parse_args(argv)
    settings = check_args(args)
    out = args.out
    check_out(os.path.join(out, "c100.md"), "--out", input_files(args),  # no --out inside the data
              text_of_kind("# The CIFAR-100 report"), overwrite=False)
    check_settings(out, settings, OUTPUTS, args.overwrite)
    data = load_dataset(args.dataset, args.data_dir)  # decoded or downloaded once, before the steps read it
    if len(data.classes) != 100:
        raise ValueError(f"--dataset {args.dataset} has {len(data.classes)} classes: the report is CIFAR-100's")
    split = make_split(data, subset=args.subset, test_subset=args.test_subset,
                       forget_positions=args.forget_positions, forget_seed=args.forget_seed)
    device, _ = pick_device(args.device, "fp32")
    results = {"models": {}, "sisa": None, "device": str(device), "date": time.strftime("%Y-%m-%d"),
               "positions": "{}:{}".format(*args.forget_positions),
               "forget_seed": args.forget_seed, "n_forget": len(split.forget),
               "comparable": args.subset is None and args.test_subset is None}
    for name in args.models:
        before = evaluate_published(args, name, data, split, device, os.path.join(out, "before", f"{name}.json"))
        results["models"][name] = {**before, "after": finetune(args, name, out)}
    results["verdict"] = verdict(results["models"], results["comparable"])
    if not args.no_sisa:
        results["sisa"] = sisa(args, out)
    results["seconds"] = time.time() - started
    report = format_report(results)
    write_json(os.path.join(out, "c100.json"), {"kind": "c100", **results})
    atomic_write(os.path.join(out, "c100.md"), lambda f: f.write(report.encode()))
    print(report)
    print(f"wrote {os.path.join(out, 'c100.md')}")


if __name__ == "__main__":
    run(main, INTERRUPTED)
