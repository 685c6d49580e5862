"""The SSD and AdvNegGrad model cards' tables, reproduced in one resumable command, beside the published numbers.

    make reproduce-cards PY=python3 INSTALL= DATASET=data/cifar10-jpeg.tar.gz   # one H100/H200 (target: 8 minutes)
    make reproduce-cards-small                                                  # a CPU: resnet20 on a subset
    python reproduce_cards.py --model hf://jaeunglee/resnet18-cifar10-unlearning/resnet18_cifar10_full.pth

From one 200-epoch ResNet18 (trained here with the recipe, or given by --model), every class is unlearned with
SSD (lambda 1, alpha 10, the card's) under both choices of D (the official scripts' retain + forget, and the
retain set alone) and with AdvNegGrad (the card's settings), several jobs at once; --retrain adds the gold
standard for some classes. Writes OUT/cards.md (and cards.json): the test top-1, seconds per epoch, both cards'
tables in their layout beside the published numbers with the differences, SSD's dampened weights per class,
seconds and GPU memory per run, the device and versions. Every step is a file under OUT: a rerun (or an
interrupted one) continues where it stopped.
"""
import argparse
import concurrent.futures
import contextlib
import importlib
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from cli import (add_runtime_args, atomic_write, check_out, pick_device, positive_int, read_json, run, text_of_kind,
                 write_json)
from data import add_data_args, load_dataset
from published import CIFAR10, PUBLISHED_FULL, PUBLISHED_RETRAIN, PUBLISHED_UNLEARN

# (folder under OUT, method, its extra flags, the published card it is compared with)
RUNS = [("ssd", "ssd", [], "ssd"), ("ssd-retain", "ssd", ["--full-set", "retain"], "ssd"),
        ("advneggrad", "advneggrad", [], "advneggrad")]
ACC_TOLERANCE, LOSS_TOLERANCE = 0.5, 0.05  # a row agrees: within 0.5 points and 5% of the loss (verify_published)
CUDA_CONTEXT_GB = 1.5  # a process's CUDA context, cuDNN workspace and its data on the GPU, besides the method's need


# ----------------------------------------------------------------------------- jobs

def script_argv(script, args, *flags):
    """A script's command line with this run's data and device flags."""
    data = ["--dataset", args.dataset, "--data-dir", args.data_dir, "--device", args.device]
    data += ["--precision", args.precision] if script != "evaluate.py" else []  # its fp32: the card's losses
    data += ["--subset", str(args.subset)] if args.subset else []
    data += ["--test-subset", str(args.test_subset)] if args.test_subset else []
    return [script, *data, *map(str, flags)]


def run_in_process(argv):
    """One script's main() here, inside its error boundary: (exit code, the last line it wrote to stderr)."""
    module = importlib.import_module(os.path.splitext(argv[0])[0])
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            run(lambda: module.main(argv[1:]))
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (print(e.code, file=err) or 1)
    lines = err.getvalue().strip().splitlines()
    return code or 0, lines[-1] if lines else ""


def run_in_subprocess(argv, threads):
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    r = subprocess.run([sys.executable, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    sys.stdout.write(r.stdout)
    lines = r.stderr.strip().splitlines()
    return r.returncode, lines[-1] if lines else ""


def run_jobs(commands, jobs, in_process):
    """Run each command line (a script and its flags): one after the other in this process when in_process (no
    interpreter start-up: a CPU run), else `jobs` processes at a time. Stops with the first failure's last line."""
    if not commands:
        return
    print(f"{len(commands)} job(s), {1 if in_process else jobs} at a time", flush=True)
    if in_process:
        results = [(argv, *run_in_process(argv)) for argv in commands]
    else:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            results = list(zip(commands, *zip(*pool.map(lambda a: run_in_subprocess(a, threads), commands))))
    failed = [(argv, code, line) for argv, code, line in results if code]
    if failed:
        argv, code, line = failed[0]
        raise ValueError(f"{len(failed)} job(s) failed; the first, `python {' '.join(argv)}`, with: {line}")


def done(path):
    """A finished unlearning run: its checkpoint and a sidecar holding its evaluation."""
    sidecar = os.path.splitext(path)[0] + ".json"
    return os.path.isfile(path) and os.path.isfile(sidecar) and read_json(sidecar).get("metrics") is not None


def auto_jobs(args, model_path):
    """How many jobs at once: on CUDA, as many as the free memory holds at the largest need of the cards' methods
    (measured from the model: unlearn.memory_need, doubled: a CUDA step also holds the activations' gradients and
    cuDNN's workspace, and the GPU-readiness review's own count was 1.5x ours; plus a process's CUDA context), at
    most one per two CPU cores and 8; on a CPU one, run in this process."""
    import torch
    import unlearn
    from models import load_model
    device, amp = pick_device(args.device, args.precision)
    if device.type != "cuda":
        return 1, None
    model = load_model(model_path)
    need = max(unlearn.memory_need(model, config(), amp) for config in (unlearn.SSDConfig, unlearn.AdvNegGradConfig))
    need = 2 * need / 2 ** 30 + CUDA_CONTEXT_GB
    free = torch.cuda.mem_get_info(device)[0] / 2 ** 30
    return max(1, min(int(free // need), max(1, (os.cpu_count() or 2) // 2), 8)), need


# ----------------------------------------------------------------------------- the steps

def train_full(args, out):
    """The 200-epoch model at OUT/full.pth (resumes). A compiled run that fails before its first resumable state
    is run again without compiling, and the report says so."""
    path = os.path.join(out, "full.pth")
    if os.path.isfile(path):
        return path, None
    argv = script_argv("train.py", args, "--arch", args.arch, "--epochs", args.epochs, "--out", path, "--resume",
                       "--save-every", args.save_every, *args.train_flags.split())
    try:
        run_jobs([argv + ["--compile", args.compile]], 1, args.in_process)
        return path, None
    except ValueError as e:
        if args.compile == "off" or os.path.exists(os.path.join(out, "full.state.pt")):
            raise
        note = f"the compiled training failed ({e}); trained again without --compile"
        print(f"warning: {note}", file=sys.stderr)
        run_jobs([argv], 1, args.in_process)
        return path, note


def unlearning_commands(args, out, model, classes):
    """The unfinished runs, class by class (the methods interleaved, so that AdvNegGrad's large runs do not all
    meet on the GPU at once)."""
    commands = []
    for k in classes:
        for folder, method, flags, _ in RUNS:
            path = os.path.join(out, folder, f"{CIFAR10[k]}.pth")
            retrained = os.path.join(out, f"no_{CIFAR10[k]}.pth")
            extra = ["--retrained", retrained] if os.path.isfile(retrained) else []
            if not done(path):
                commands.append(script_argv("unlearn.py", args, "--method", method, "--model", model,
                                            "--forget-class", CIFAR10[k], "--out", path, *flags, *extra))
    return commands


# ----------------------------------------------------------------------------- the report

def acc_loss(cell):
    return f"{cell[0]:.2f} ({cell[1]:.3f})"


def agrees(ours, card):
    return abs(ours[0] - card[0]) <= ACC_TOLERANCE and abs(ours[1] - card[1]) <= LOSS_TOLERANCE * card[1]


def card_rows(out, folder, card, classes):
    """Per class, from the unlearned model's sidecar: forget and retain class (acc, loss) on the test set beside
    the card's, weights changed, seconds, peak GPU memory."""
    rows = []
    for k in classes:
        meta = read_json(os.path.join(out, folder, f"{CIFAR10[k]}.json"))
        m = meta["metrics"]
        forget = (m["test_forget"]["acc"], m["test_forget"]["loss"])
        retain = (m["test_retain"]["acc"], m["test_retain"]["loss"])
        published = PUBLISHED_UNLEARN[card][CIFAR10[k]]
        rows.append({"class": CIFAR10[k], "forget": forget, "retain": retain, "card_forget": published[:2],
                     "card_retain": published[2:], "agrees": agrees(forget, published[:2]) and
                     agrees(retain, published[2:]), "changed_weights": meta.get("changed_weights"),
                     "seconds": meta["seconds"], "peak_memory_gb": meta.get("peak_memory_gb"),
                     "test": m["test"]["acc"], "mia": m["mia"]})
    return rows


def diff(ours, card):
    return f"{ours[0] - card[0]:+.2f} ({ours[1] - card[1]:+.3f})"


def format_card(title, rows, comparable):
    header = ["Class", "Forget acc (loss)", "Card", "Diff", "Retain acc (loss)", "Card", "Diff", "Weights changed",
              "Seconds", "Peak GPU GB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        memory = "-" if r["peak_memory_gb"] is None else f"{r['peak_memory_gb']:.1f}"
        lines.append(f"| {r['class']} | {acc_loss(r['forget'])} | {acc_loss(r['card_forget'])} | "
                     f"{diff(r['forget'], r['card_forget'])} | {acc_loss(r['retain'])} | {acc_loss(r['card_retain'])} | "
                     f"{diff(r['retain'], r['card_retain'])} | {r['changed_weights']:,} | {r['seconds']:.1f} | "
                     f"{memory} |")
    bad = [r["class"] for r in rows if not r["agrees"]]
    if not comparable:
        verdict = "Not comparable with the card: a subset of the data (--subset / --test-subset); a pipeline check."
    elif not bad:
        verdict = f"Agrees with the card: every row within {ACC_TOLERANCE} points and {LOSS_TOLERANCE:.0%} of the loss."
    else:
        verdict = f"Differs from the card for {', '.join(bad)} (beyond {ACC_TOLERANCE} points or {LOSS_TOLERANCE:.0%})."
    return f"## {title}\n\n" + "\n".join(lines) + f"\n\n{verdict}"


def training_summary(out, evaluation, note):
    """The full model: test top-1 (fp32 evaluation), and for a model trained here its epochs' seconds."""
    acc = evaluation["models"][next(iter(evaluation["models"]))]["test"]["acc"]
    summary = {"test_acc": acc, "published": PUBLISHED_FULL}
    sidecar = os.path.join(out, "full.json")
    if os.path.isfile(sidecar):
        meta = read_json(sidecar)
        log = [json.loads(line) for line in open(os.path.join(out, meta["log"]))]
        seconds = [r["seconds"] for r in log]
        summary.update({"epochs": len(log), "first_epoch_seconds": seconds[0], "median_epoch_seconds":
                        statistics.median(seconds), "compile_seconds": meta.get("compile_seconds", 0.0),
                        "training_seconds": sum(seconds) + meta.get("compile_seconds", 0.0),
                        "compile": meta.get("compile"), "precision": meta.get("precision"),
                        "peak_memory_gb": meta.get("peak_memory_gb"), "cudagraph_skips": meta.get("cudagraph_skips"),
                        "device": meta["device"], "versions": meta["versions"]})
    summary["note"] = note
    return summary


def retrain_rows(out):
    rows = []
    for k, name in enumerate(CIFAR10):
        path = os.path.join(out, f"no_{name}.json")
        if os.path.isfile(path):
            meta = read_json(path)
            rows.append({"class": name, "test_acc": meta["metrics"]["test_acc"], "card": PUBLISHED_RETRAIN[name],
                         "seconds": meta["seconds"]})
    return rows


def format_report(results):
    t = results["training"]
    lines = ["# The model cards, reproduced", "",
             f"Device: {results['device']}; torch {results['versions'].get('torch')}, torchvision "
             f"{results['versions'].get('torchvision')}, Python {results['versions'].get('python')}; commit "
             f"{results['commit']}; {results['date']}. Jobs at once: {results['jobs']}"
             + (f" (need {results['need_gb']:.1f} GB each)" if results["need_gb"] else "") + ". This invocation took "
             f"{results['seconds']:.0f} s.", "", "## The original model", "",
             f"Test top-1 (fp32): {t['test_acc']:.2f}% (card: {PUBLISHED_FULL}%, {t['test_acc'] - PUBLISHED_FULL:+.2f})."]
    if "epochs" in t:
        lines.append(f"Trained here: {t['epochs']} epochs in {t['training_seconds']:.1f} s ({t['compile']} compile, "
                     f"{t['precision']}): first epoch {t['first_epoch_seconds']:.2f} s, median "
                     f"{t['median_epoch_seconds']:.2f} s, compiling {t['compile_seconds']:.1f} s"
                     + ("" if t["peak_memory_gb"] is None else f", peak GPU memory {t['peak_memory_gb']:.1f} GB")
                     + ("" if not t["cudagraph_skips"] else f", {t['cudagraph_skips']} CUDA graphs skipped") + ".")
    if t["note"]:
        lines.append(f"Note: {t['note']}.")
    for folder, title in (("ssd", "SSD, D = retain + forget (the official scripts'), lambda 1, alpha 10"),
                          ("ssd-retain", "SSD, D = the retain set alone, lambda 1, alpha 10"),
                          ("advneggrad", "AdvNegGrad (the card's settings)")):
        lines += ["", format_card(title, results["cards"][folder], results["comparable"])]
    for folder, rows in results["cards"].items():
        seconds = [r["seconds"] for r in rows]
        lines.append(f"\n{folder}: {statistics.mean(seconds):.2f} s per run (max {max(seconds):.2f}), weights changed "
                     f"{min(r['changed_weights'] for r in rows):,} to {max(r['changed_weights'] for r in rows):,}")
    if results["retrains"]:
        lines += ["", "## Retrained without a class", "", "| Class | Test top-1 (all classes) | Card (kept classes) |"
                  " Seconds |", "|---|---|---|---|"]
        lines += [f"| {r['class']} | {r['test_acc']:.2f}% | {r['card']}% | {r['seconds']:.0f} |" for r in results["retrains"]]
    return "\n".join(lines) + "\n"


def write_report(args, out, classes, jobs, need, note, started):
    evaluation = read_json(os.path.join(out, "full_eval.json"))
    training = training_summary(out, evaluation, note)
    first = read_json(os.path.join(out, RUNS[0][0], f"{CIFAR10[classes[0]]}.json"))
    results = {"device": first["device"], "versions": first["versions"], "commit": args.commit,
               "date": time.strftime("%Y-%m-%d"), "jobs": jobs, "need_gb": need, "seconds": time.time() - started,
               "comparable": args.subset is None and args.test_subset is None, "training": training,
               "cards": {folder: card_rows(out, folder, card, classes) for folder, _, _, card in RUNS},
               "retrains": retrain_rows(out)}
    if results["device"].startswith("cuda"):
        import torch
        results["device"] += f" ({torch.cuda.get_device_name(results['device'])})"
    report = format_report(results)
    write_json(os.path.join(out, "cards.json"), results)
    atomic_write(os.path.join(out, "cards.md"), lambda f: f.write(report.encode()))
    return report


# ----------------------------------------------------------------------------- command line

def parse_args(argv=None):
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/cards", help="the run's folder (default: runs/cards)")
    parser.add_argument("--model", default=None, help="the original model: a path, URL or hf:// name (default: "
                        "train one with the 200-epoch recipe at OUT/full.pth)")
    parser.add_argument("--arch", default="resnet18", help="architecture of the model trained here (default: resnet18)")
    parser.add_argument("--epochs", type=positive_int, default=200, help="epochs of the model trained here "
                        "(default: 200, the recipe)")
    parser.add_argument("--train-flags", default="", help="more flags for train.py, e.g. '--batch-size 64' "
                        "(default: none)")
    parser.add_argument("--compile", choices=("off", "inductor", "aot_eager"), default=None, help="train.py "
                        "--compile (default: inductor on CUDA, off on a CPU)")
    parser.add_argument("--save-every", type=positive_int, default=10, help="train.py --save-every (default: 10)")
    parser.add_argument("--retrain", nargs="*", default=[], help="classes to retrain without, the gold standard "
                        "(200 epochs each; default: none)")
    parser.add_argument("--classes", nargs="+", default=None, help="the classes to unlearn (default: all ten)")
    parser.add_argument("--jobs", type=positive_int, default=None, help="jobs at once (default: on CUDA as many as "
                        "the free memory holds at the methods' measured need; on a CPU 1, in this process)")
    parser.add_argument("--commit", default=None, help="the commit to name in the report (default: git's HEAD)")
    add_runtime_args(parser, seed=None)  # passed to every job
    add_data_args(parser)
    return parser.parse_args(argv)


def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def main(argv=None):
    started = time.time()
    args = parse_args(argv)
    for flag in ("forget_class", "forget_fraction", "forget_indices", "forget_positions", "keep_half"):
        if getattr(args, flag) is not None:
            raise ValueError(f"--{flag.replace('_', '-')}: the cards forget every class in turn; use --classes")
    data = load_dataset(args.dataset, args.data_dir)  # decoded once here, before any job reads the cache
    if tuple(data.classes) != CIFAR10:
        raise ValueError(f"--dataset {args.dataset}: the cards are CIFAR-10's ({', '.join(CIFAR10)}); its classes "
                         f"are {', '.join(data.classes)}")
    from data import resolve_class
    classes = sorted({resolve_class(data.classes, c) for c in args.classes or CIFAR10})
    retrain = sorted({resolve_class(data.classes, c) for c in args.retrain})
    out = args.out
    check_out(os.path.join(out, "cards.md"), "--out", [args.model] if args.model else [],
              text_of_kind("# The model cards, reproduced"), overwrite=False)
    args.commit = args.commit or git_commit()
    device, _ = pick_device(args.device, args.precision)
    args.compile = args.compile or ("inductor" if device.type == "cuda" else "off")
    args.in_process = device.type != "cuda"
    model, note = (args.model, None) if args.model else train_full(args, out)
    retrains = [script_argv("train.py", args, "--arch", args.arch, "--epochs", args.epochs, "--forget-class",
                            CIFAR10[k], "--out", os.path.join(out, f"no_{CIFAR10[k]}.pth"), "--resume", "--save-every",
                            args.save_every, "--compile", args.compile, *args.train_flags.split())
                for k in retrain if not os.path.isfile(os.path.join(out, f"no_{CIFAR10[k]}.pth"))]
    run_jobs(retrains, min(len(retrains), 2), args.in_process)  # each fills much of a GPU
    jobs, need = (args.jobs, None) if args.jobs else auto_jobs(args, model)
    evaluation = os.path.join(out, "full_eval.json")
    first = [] if os.path.isfile(evaluation) else [script_argv("evaluate.py", args, "--model", model, "--json",
                                                                evaluation)]
    run_jobs(first + unlearning_commands(args, out, model, classes), jobs, args.in_process and jobs == 1)
    print(write_report(args, out, classes, jobs, need, note, started))
    print(f"wrote {os.path.join(out, 'cards.md')}")


if __name__ == "__main__":
    run(main, "interrupted; finished steps are kept under --out: run the same command again to continue")
