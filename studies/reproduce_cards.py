"""The SSD and AdvNegGrad model cards' tables, reproduced in one resumable command, beside the published numbers.

    make reproduce-cards PY=python3 INSTALL= DATASET=data/cifar10-jpeg.tar.gz   # one H100 (below)
    make reproduce-cards-train ...; make reproduce-cards ...    # the same in two GPU commands
    make reproduce-cards-small                                  # a CPU: resnet20 on a subset
    python -m studies.reproduce_cards \\
        --model hf://jaeunglee/resnet18-cifar10-unlearning/resnet18_cifar10_full.pth

From one 200-epoch ResNet18 (trained here with the recipe, or given by --model), every class is unlearned with
SSD (lambda 1, alpha 10, the card's) under both choices of D (the official scripts' retain + forget, and the
retain set alone) and with AdvNegGrad (the card's settings), several jobs at once; --retrain adds the gold
standard for some classes. Writes OUT/cards.md (and cards.json): the test top-1, seconds per epoch, both cards'
tables in their layout beside the published numbers with the differences, SSD's dampened weights per class,
seconds and GPU memory per run, the device and versions.

Every step is a file under OUT, made with the settings OUT/settings.json records: a rerun
with them (or an interrupted one) continues where it stopped; one with others is refused, or
redone with --overwrite. --stage train stops after the model. Each job's output is shown and
kept beside its result as it comes (OUT/ssd/cat.log); Ctrl-C stops every job. Predicted on one
H100, not measured: 7-11 minutes in all; --stage train 4-7, then the cards 3-5 (docs/SPEED.md).
"""
import argparse
import concurrent.futures
import contextlib
import dataclasses
import glob
import importlib
import io
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time

from cli import (add_runtime_args, atomic_write, check_out, pick_device, positive_int, read_json, run, text_of_kind,
                 write_json)
from data import add_data_args, input_files, load_dataset
from models import finished, is_remote, sha256_file, sidecar_path
from published import CIFAR10, PUBLISHED_FULL, PUBLISHED_RETRAIN, PUBLISHED_UNLEARN

# (folder under OUT, method, its extra flags, the published card it is compared with)
RUNS = [("ssd", "ssd", [], "ssd"), ("ssd-retain", "ssd", ["--full-set", "retain"], "ssd"),
        ("advneggrad", "advneggrad", [], "advneggrad")]
ACC_TOLERANCE, LOSS_TOLERANCE = 0.5, 0.05  # a row agrees: within 0.5 points and 5% of the loss (verify_published)
CUDA_CONTEXT_GB = 1.5  # a process's CUDA context, cuDNN workspace and its data on the GPU, besides the method's need
TAIL = 20  # lines of a failed job's output shown when it printed no traceback
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the jobs' scripts' folder
SETTINGS = "settings.json"  # under --out: the settings its steps were made with (check_settings)
OUTPUTS = ("full.*", "full_eval.*", "no_*.*", "ssd/*", "ssd-retain/*", "advneggrad/*",
           "cards.*")  # the steps under --out, by pattern
TRAIN_FLAGS_SET_HERE = (  # train.py's flags that --train-flags cannot give: this script sets them
    "arch", "epochs", "out", "resume", "overwrite", "stop_after", "compile",
    "save_every", "device", "precision", "dataset", "data_dir", "subset", "test_subset",
    "forget_class", "forget_fraction", "forget_seed", "forget_indices", "forget_positions",
    "keep_half")
INTERRUPTED = ("interrupted; finished steps are kept under --out: run the same command again to "
               "continue")


# ----------------------------------------------------------------------------- jobs

def script_argv(script, args, *flags):
    """A script's command line with this run's data and device flags."""
    data = ["--dataset", args.dataset, "--data-dir", args.data_dir, "--device", args.device]
    data += ["--precision", args.precision] if script != "evaluate.py" else []  # its fp32: the card's losses
    data += ["--subset", str(args.subset)] if args.subset else []
    data += ["--test-subset", str(args.test_subset)] if args.test_subset else []
    return [script, *data, *map(str, flags)]


def log_path(argv):
    """Where a job's output is kept: beside its output (its last --out or --json), as .log."""
    out = argv[max(i for i, a in enumerate(argv) if a in ("--out", "--json")) + 1]
    return os.path.splitext(out)[0] + ".log"


@contextlib.contextmanager
def job_log(argv):
    """The job's log, opened for appending (an earlier attempt's output stays), after a line
    naming the command."""
    path = log_path(argv)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} python {shlex.join(map(str, argv))}\n")
        yield f


class Tee(io.TextIOBase):
    """A stream that writes to another (the terminal) and to a log as the text comes, and keeps
    it."""

    def __init__(self, stream, log, kept):
        super().__init__()
        self.stream, self.log, self.kept = stream, log, kept

    def write(self, text):
        self.stream.write(text)
        self.log.write(text)
        self.log.flush()  # a job stopped by a time limit leaves its output so far
        self.kept.append(text)
        return len(text)

    def flush(self):
        self.stream.flush()


def failure(argv, lines):
    """A failed job in words: its command, then its output from its first traceback on (a chained
    one whole), or its last TAIL lines where it printed none; all of it is in its log."""
    tracebacks = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent")]
    shown_lines = lines[tracebacks[0]:] if tracebacks else lines[-TAIL:]
    return (f"`python {shlex.join(map(str, argv))}` failed; its output (all of it: "
            f"{log_path(argv)}) ends:\n" + "\n".join(shown_lines))


def run_in_process(argv):
    """One script's main() in this process, inside its error boundary (no interpreter start-up: a
    CPU run), its output shown and logged as it comes: (exit code, its output's lines). Its Ctrl-C
    (its exit 130) is this process's too: KeyboardInterrupt, never the next job."""
    module = importlib.import_module(os.path.splitext(argv[0])[0])
    kept = []
    with job_log(argv) as log, contextlib.redirect_stdout(Tee(sys.stdout, log, kept)), \
            contextlib.redirect_stderr(Tee(sys.stderr, log, kept)):
        try:
            run(lambda: module.main(argv[1:]))
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (print(e.code, file=sys.stderr) or 1)
    if code == 130:
        raise KeyboardInterrupt
    return code or 0, "".join(kept).splitlines()


class Children:
    """The jobs' processes: each started unless the jobs were stopped; stop() ends those running.
    Ctrl-C at a terminal reaches them itself, so each has GRACE seconds to end before it is sent
    SIGINT (for a signal to this process alone, as from `timeout -s INT`): none gets two."""
    GRACE = 2

    def __init__(self):
        self.lock, self.running, self.stopped = threading.Lock(), set(), False

    def start(self, argv, env):
        with self.lock:  # stop() either sees this child or keeps it from starting
            if self.stopped:
                return None
            script = os.path.join(ROOT, argv[0])  # train.py, wherever this runs from
            child = subprocess.Popen([sys.executable, script, *argv[1:]], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, encoding="utf-8",
                                     errors="replace", env=env)
            self.running.add(child)
            return child

    def stop(self):
        with self.lock:
            self.stopped, running = True, list(self.running)
        deadline = time.time() + self.GRACE
        for child in running:
            try:
                child.wait(max(0.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                child.send_signal(signal.SIGINT)
        for child in running:
            child.wait()


def run_in_subprocess(argv, threads, children):
    """One script in its own interpreter, its output (stdout and stderr, in order) streamed line by
    line to the terminal, after the job's name, and to its log: (exit code, its lines), or
    (None, []) when the jobs were stopped before it started."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONUNBUFFERED": "1"}  # each line as it is printed, not when a buffer fills
    child = children.start(argv, env)
    if child is None:
        return None, []
    name = os.path.join(*os.path.splitext(log_path(argv))[0].split(os.sep)[-2:])  # e.g. ssd/cat
    lines = []
    with child, job_log(argv) as log:
        for line in child.stdout:
            sys.stdout.write(f"[{name}] {line}")
            log.write(line)
            log.flush()
            lines.append(line.rstrip("\n"))
    return child.returncode, lines


def run_in_subprocesses(commands, jobs):
    """`jobs` processes at a time, each with its share of the CPU cores: [(argv, exit code,
    lines)]. Ctrl-C, or a job's own exit 130 (a SIGINT to it alone), stops every job, running or
    waiting: KeyboardInterrupt."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    children, futures = Children(), []
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        try:
            for argv in commands:  # inside the try: a Ctrl-C may come at any point
                futures.append(pool.submit(run_in_subprocess, argv, threads, children))
            for future in concurrent.futures.as_completed(futures):
                if future.result()[0] == 130:
                    raise KeyboardInterrupt
        except BaseException:
            for future in futures:
                future.cancel()
            children.stop()
            raise
    return [(argv, *future.result()) for argv, future in zip(commands, futures)]


def run_jobs(commands, jobs, in_process):
    """Run each command line (a script and its flags): one after the other in this process when
    in_process, else `jobs` processes at a time. A failed job does not stop the others (each is a
    file the next run keeps); Ctrl-C stops them all. Then the first failure is raised with its
    traceback or its last lines."""
    if not commands:
        return
    print(f"{len(commands)} job(s), {1 if in_process else jobs} at a time", flush=True)
    if in_process:
        results = [(argv, *run_in_process(argv)) for argv in commands]
    else:
        results = run_in_subprocesses(commands, jobs)
    failed = [(argv, lines) for argv, code, lines in results if code]
    if failed:
        raise ValueError(f"{len(failed)} job(s) failed; the first, " + failure(*failed[0]))


def metrics_of(sidecar):
    """A run's evaluation from its sidecar, or None where it has none (stopped after 'saved')."""
    meta = read_json(sidecar)
    metrics = meta.get("metrics") if isinstance(meta, dict) else None
    return metrics if isinstance(metrics, dict) else None


def done(path):
    """A finished unlearning run: its checkpoint and a sidecar holding its evaluation (without
    one, the job runs again and unlearn.py evaluates the saved model)."""
    sidecar = sidecar_path(path)
    return os.path.isfile(path) and os.path.isfile(sidecar) and metrics_of(sidecar) is not None


# ----------------------------------------------------------------------------- settings

def dataset_name(dataset):
    """The dataset's name as data.load_dataset gives it (cifar10, or an image folder's or an
    archive's file name), known before decoding it."""
    return os.path.basename(os.path.normpath(dataset)).split(".")[0]


def model_identity(model):
    """--model by content: a file's sha256 (another file under the same name is another model),
    or a download's name (its #sha256= suffix, where given, pins the content)."""
    if is_remote(model):
        return model
    if not os.path.isfile(model):
        raise FileNotFoundError(f"--model {model} not found: give a checkpoint's path, URL or "
                                f"hf:// name")
    return f"sha256:{sha256_file(model)}"


def settings(args, amp):
    """What decides the folder's results, by flag: the model (given, or trained here: arch, epochs,
    train.py's flags as it reads them), the data and the precision. Not the classes (each is a
    file of its own), the jobs, --compile or the device."""
    return {"script": "reproduce_cards.py", "--model": args.model and model_identity(args.model),
            "--arch": args.arch, "--epochs": args.epochs, "--train-flags": args.train_settings,
            "--dataset": dataset_name(args.dataset), "--subset": args.subset,
            "--test-subset": args.test_subset, "--precision": "bf16" if amp else "fp32"}


def shown(value):
    """A setting in words."""
    if isinstance(value, dict):  # parsed flags
        return " ".join(f"{k} {v}" for k, v in value.items()) or "none"
    return "not given" if value is None else str(value)


def check_settings(out, settings, outputs, overwrite, keep=()):
    """Before any work: OUT was made with these settings (OUT/settings.json records them), or
    holds none of its steps (`outputs`, patterns under OUT) yet. Other settings, or steps of
    unknown ones (no settings.json: an older version's folder), are refused naming the first one
    that differs, never reused: the report would call them this run's. `overwrite` removes the
    steps (never the files in `keep`, the run's inputs) so that they are made again; with the same
    settings it removes nothing: the run continues."""
    path = os.path.join(out, SETTINGS)
    settings = json.loads(json.dumps(settings))  # as it reads back: tuples as lists
    old = read_json(path) if os.path.isfile(path) else None
    if old == settings:
        return
    found = (glob.glob(os.path.join(glob.escape(out), pattern)) for pattern in outputs)
    steps = [f for files in found for f in sorted(files)
             if os.path.isfile(f) and os.path.realpath(f) not in keep]
    if (old is not None or steps) and not overwrite:
        if isinstance(old, dict):
            key = next(k for k in {**old, **settings} if old.get(k) != settings.get(k))
            differs = f"{key} {shown(old.get(key))} there ({path}), {shown(settings.get(key))} now"
        else:
            differs = f"{path} is missing or not this script's, so their settings are unknown"
        raise ValueError(f"--out {out} was made with other settings: {differs}; pass --overwrite "
                         f"to redo it with these, or give another --out")
    for f in steps:
        os.remove(f)
    write_json(path, settings)


def parsed_flags(text, flag, owned, parse=None):
    """--train-flags / --sisa-flags read with train.py's own parser (or `parse`, such as sisa.py
    train's), before any work: a bad flag or value, or one of `owned` ({dest: why this script sets
    it}) given another value than its default, is one line naming `flag`. Returns (the parsed
    arguments, {option: value} of those that differ from their defaults: what the flags mean,
    however spelt)."""
    import train
    parse = parse or train.parse_args
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(err):  # argparse's usage
            given = parse(text.split())
            default = parse(["--recipe", given.recipe])
    except SystemExit:
        reason = (err.getvalue().strip().splitlines() or ["not train.py's flags"])[-1]
        raise ValueError(f"{flag} {text!r}: {reason.split('error: ', 1)[-1]}") from None
    changed = {dest: v for dest, v in vars(given).items() if v != getattr(default, dest, None)}
    clash = sorted(changed.keys() & owned.keys())
    if clash:
        raise ValueError(f"{flag} {text!r}: --{clash[0].replace('_', '-')} {owned[clash[0]]}")
    return given, {f"--{dest.replace('_', '-')}": v for dest, v in sorted(changed.items())}


def auto_jobs(args, model_path):
    """How many jobs at once: on CUDA, as many as the free memory holds at the largest need of the cards' methods
    (measured from the model: unlearn.memory_need, doubled: a CUDA step also holds the activations' gradients and
    cuDNN's workspace, and the GPU-readiness review's own count was 1.5x ours; plus a process's CUDA context), at
    most one per two CPU cores and 8; on a CPU one, run in this process."""
    import torch
    import methods
    import unlearn
    from models import load_model
    device, amp = pick_device(args.device, args.precision)
    if device.type != "cuda":
        return 1, None
    model = load_model(model_path)
    need = max(unlearn.memory_need(model, config(), amp) for config in (methods.SSDConfig, methods.AdvNegGradConfig))
    need = 2 * need / 2 ** 30 + CUDA_CONTEXT_GB
    free = torch.cuda.mem_get_info(device)[0] / 2 ** 30
    return max(1, min(int(free // need), max(1, (os.cpu_count() or 2) // 2), 8)), need


# ----------------------------------------------------------------------------- the steps

def train_full(args, out):
    """The 200-epoch model at OUT/full.pth (resumes). A compiled run that fails before its first resumable state
    is run again without compiling, and OUT/full.note says so for the report."""
    path = os.path.join(out, "full.pth")
    if finished(path):
        return path
    argv = script_argv("train.py", args, "--arch", args.arch, "--epochs", args.epochs, "--out", path, "--resume",
                       "--save-every", args.save_every, *args.train_flags.split())
    try:
        run_jobs([argv + ["--compile", args.compile]], 1, args.in_process)
    except ValueError as e:
        if args.compile == "off" or os.path.exists(os.path.join(out, "full.state.pt")):
            raise
        print(f"warning: training again without --compile: {e}", file=sys.stderr)
        run_jobs([argv], 1, args.in_process)
        note = (f"the compiled training failed (its output: {log_path(argv)}); trained again "
                f"without --compile")
        atomic_write(os.path.join(out, "full.note"), lambda f: f.write(note.encode()))
    return path


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
        sidecar = sidecar_path(os.path.join(out, folder, f"{CIFAR10[k]}.pth"))
        meta, m = read_json(sidecar), metrics_of(sidecar)
        if m is None:
            raise ValueError(f"{sidecar} holds no evaluation: run the same command again to "
                             f"evaluate it")
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


def format_card(title, rows, differences):
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
    if differences:
        verdict = f"Not comparable with the card: {'; '.join(differences)}. A pipeline check."
    elif not bad:
        verdict = f"Agrees with the card: every row within {ACC_TOLERANCE} points and {LOSS_TOLERANCE:.0%} of the loss."
    else:
        verdict = f"Differs from the card for {', '.join(bad)} (beyond {ACC_TOLERANCE} points or {LOSS_TOLERANCE:.0%})."
    return f"## {title}\n\n" + "\n".join(lines) + f"\n\n{verdict}"


def training_summary(out, evaluation, trained_here):
    """The full model: test top-1 (fp32 evaluation), and for a model trained here its epochs' seconds."""
    acc = evaluation["models"][next(iter(evaluation["models"]))]["test"]["acc"]
    summary = {"test_acc": acc, "published": PUBLISHED_FULL}
    sidecar = sidecar_path(os.path.join(out, "full.pth"))
    if trained_here:
        meta = read_json(sidecar)
        log = [json.loads(line) for line in open(os.path.join(out, meta["log"]))]
        seconds = [r["seconds"] for r in log]
        summary.update({"epochs": len(log), "first_epoch_seconds": seconds[0], "median_epoch_seconds":
                        statistics.median(seconds), "compile_seconds": meta.get("compile_seconds", 0.0),
                        "training_seconds": sum(seconds) + meta.get("compile_seconds", 0.0),
                        "compile": meta.get("compile"), "precision": meta.get("precision"),
                        "peak_memory_gb": meta.get("peak_memory_gb"), "cudagraph_skips": meta.get("cudagraph_skips"),
                        "device": meta["device"], "versions": meta["versions"]})
    note = os.path.join(out, "full.note")
    summary["note"] = open(note, encoding="utf-8").read() if os.path.isfile(note) else None
    return summary


def differences(args, out):
    """Why the folder's numbers cannot be held against the cards' (none: they can): a subset of
    the data, or a model trained otherwise than the cards' (the recipe's 200 epochs of ResNet18),
    as its sidecar says."""
    from train import TrainConfig
    subset = args.subset or args.test_subset
    found = ["a subset of the data (--subset / --test-subset)"] if subset else []
    model = args.model or os.path.join(out, "full.pth")
    sidecar = None if is_remote(model) else sidecar_path(model)
    meta = read_json(sidecar) if sidecar and os.path.isfile(sidecar) else {}
    config = meta.get("config") if isinstance(meta, dict) else None
    config = config if isinstance(config, dict) else {}
    recipe = dataclasses.asdict(TrainConfig())
    return found + [f"{k} {config[k]} (the recipe's {v})" for k, v in recipe.items()
                    if k in config and config[k] != v]


def retrain_rows(out):
    rows = []
    for k, name in enumerate(CIFAR10):
        path = sidecar_path(os.path.join(out, f"no_{name}.pth"))
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
        lines += ["", format_card(title, results["cards"][folder], results["not_comparable"])]
    for folder, rows in results["cards"].items():
        seconds = [r["seconds"] for r in rows]
        lines.append(f"\n{folder}: {statistics.mean(seconds):.2f} s per run (max {max(seconds):.2f}), weights changed "
                     f"{min(r['changed_weights'] for r in rows):,} to {max(r['changed_weights'] for r in rows):,}")
    if results["retrains"]:
        lines += ["", "## Retrained without a class", "", "| Class | Test top-1 (all classes) | Card (kept classes) |"
                  " Seconds |", "|---|---|---|---|"]
        lines += [f"| {r['class']} | {r['test_acc']:.2f}% | {r['card']}% | {r['seconds']:.0f} |" for r in results["retrains"]]
    return "\n".join(lines) + "\n"


def write_report(args, out, classes, jobs, need, started):
    evaluation = read_json(os.path.join(out, "full_eval.json"))
    training = training_summary(out, evaluation, trained_here=not args.model)
    first = read_json(sidecar_path(os.path.join(out, RUNS[0][0], f"{CIFAR10[classes[0]]}.pth")))
    different = differences(args, out)
    results = {"device": first["device"], "versions": first["versions"], "commit": args.commit,
               "date": time.strftime("%Y-%m-%d"), "jobs": jobs, "need_gb": need, "seconds": time.time() - started,
               "comparable": not different, "not_comparable": different, "training": training,
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
    parser.add_argument("--stage", choices=("train", "cards", "all"), default="all",
                        help="train: OUT/full.pth alone; cards: the rest, from a trained "
                        "OUT/full.pth or --model; all: both (default: all)")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo a folder made with other settings (its steps are removed); "
                        "with the same settings nothing is redone (default: refuse it)")
    add_runtime_args(parser, seed=None)  # passed to every job
    add_data_args(parser)
    return parser.parse_args(argv)


def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=ROOT).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def check_args(args):
    """Before any work: flags the cards cannot honour; --train-flags read with train.py's
    parser."""
    for flag in ("forget_class", "forget_fraction", "forget_indices", "forget_positions", "keep_half"):
        if getattr(args, flag) is not None:
            raise ValueError(f"--{flag.replace('_', '-')}: the cards forget every class in turn; use --classes")
    if args.forget_seed:
        raise ValueError("--forget-seed: the cards forget whole classes, which no seed draws; "
                         "leave it out")
    why = ("is set by reproduce_cards.py (its own flag, or the cards' design); remove it from "
           "--train-flags")
    owned = dict.fromkeys(TRAIN_FLAGS_SET_HERE, why)
    args.train_settings = parsed_flags(args.train_flags, "--train-flags", owned)[1]
    if args.stage == "train" and args.model:
        full = os.path.join(args.out, "full.pth")
        raise ValueError(f"--stage train trains {full}: with --model there is nothing to train; "
                         f"use --stage cards")


def main(argv=None):
    started = time.time()
    args = parse_args(argv)
    check_args(args)
    out = args.out
    inputs = [args.model] * bool(args.model) + input_files(args)  # the data: no --out inside it
    check_out(os.path.join(out, "cards.md"), "--out", inputs,
              text_of_kind("# The model cards, reproduced"), overwrite=False)
    device, amp = pick_device(args.device, args.precision)
    local = args.model and not is_remote(args.model)
    given = [args.model, sidecar_path(args.model)] if local else []
    keep = {os.path.realpath(p) for p in given}  # --overwrite never removes the model it is given
    check_settings(out, settings(args, amp), OUTPUTS, args.overwrite, keep)
    full = os.path.join(out, "full.pth")
    if args.stage == "cards" and not args.model and not finished(full):
        raise ValueError(f"--stage cards needs {full} trained: run --stage train first (make "
                         f"reproduce-cards-train), or give --model")
    data = load_dataset(args.dataset, args.data_dir)  # decoded once here, before any job reads the cache
    if tuple(data.classes) != CIFAR10:
        raise ValueError(f"--dataset {args.dataset}: the cards are CIFAR-10's ({', '.join(CIFAR10)}); its classes "
                         f"are {', '.join(data.classes)}")
    from data import resolve_class
    classes = sorted({resolve_class(data.classes, c) for c in args.classes or CIFAR10})
    retrain = sorted({resolve_class(data.classes, c) for c in args.retrain})
    args.commit = args.commit or git_commit()
    args.compile = args.compile or ("inductor" if device.type == "cuda" else "off")
    args.in_process = device.type != "cuda"
    model = args.model or train_full(args, out)
    if args.stage == "train":
        print(f"stage train done: {model}; the cards next: the same command with --stage cards "
              f"(or without --stage)")
        return
    retrains = [script_argv("train.py", args, "--arch", args.arch, "--epochs", args.epochs, "--forget-class",
                            CIFAR10[k], "--out", os.path.join(out, f"no_{CIFAR10[k]}.pth"), "--resume", "--save-every",
                            args.save_every, "--compile", args.compile, *args.train_flags.split())
                for k in retrain if not finished(os.path.join(out, f"no_{CIFAR10[k]}.pth"))]
    run_jobs(retrains, min(len(retrains), 2), args.in_process)  # each fills much of a GPU
    jobs, need = (args.jobs, None) if args.jobs else auto_jobs(args, model)
    evaluation = os.path.join(out, "full_eval.json")
    first = [] if os.path.isfile(evaluation) else [script_argv("evaluate.py", args, "--model", model, "--json",
                                                                evaluation)]
    run_jobs(first + unlearning_commands(args, out, model, classes), jobs, args.in_process and jobs == 1)
    print(write_report(args, out, classes, jobs, need, started))
    print(f"wrote {os.path.join(out, 'cards.md')}")


if __name__ == "__main__":
    run(main, INTERRUPTED)
