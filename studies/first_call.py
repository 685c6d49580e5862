"""The first GPU call, prepared: one command within 9.5 minutes that gives the first real figures.

    python -m studies.first_call --dataset data/cifar10-jpeg.tar.gz --out "$OUT" --commit <hash>
    make first-call PY=python3 INSTALL= DATASET=data/cifar10-jpeg.tar.gz COMMIT=<hash> OUT="$OUT"
    python -m studies.first_call --dataset ../shared/data/cifar10-jpeg.tar.gz --device cpu \\
        --arch resnet20 --subset 10 --test-subset 10 --epochs 1 --cards-epochs 1 --classes cat \\
        --compile aot_eager --train-flags "--batch-size 32" --out /tmp/fc   # a CPU rehearsal

Five steps, each a child process under its own time limit, its output streamed as it comes to
OUT/log.txt and to this terminal:
  versions   Python, torch, torchvision, numpy, CUDA, cuDNN, Triton; the GPU's name and memory
  decode     data.py: the archive decoded into --data-dir, timed (a decoded copy there is read)
  eager      train.py: --epochs (3) of the recipe, eager: first and median epoch, peak memory
  compiled   the same with --compile (inductor: CUDA graphs), the compilation timed apart
  cards      studies/reproduce_cards.py: SSD (both D) and AdvNegGrad for --classes on a
             --cards-epochs (15) model trained here: the cards' pipeline end to end, its jobs'
             seconds and memory
At its limit a step's processes get SIGINT (Ctrl-C: a training says where it would resume), then
SIGKILL --grace seconds later; the call goes on with the next step (after a failed decode there
is nothing to run). The whole call keeps within --budget (570 s): each limit is cut to what is
left. OUT gets 4 files, written as the call goes (a call killed from outside keeps them):
log.txt, results.json (every figure, rewritten after each step), cards.md and work.tar.gz (the
work folder's logs and sidecars, no weights). A GPU machine's copy of the checkout has no .git:
--commit names the commit. docs/SPEED.md says how to run it on the device and what comes back.
"""
import argparse
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tarfile
import threading
import time

from cli import (add_runtime_args, atomic_write, check_out, check_writable, json_of_kind,
                 positive_int, read_json, run, sidecar_path, text_of_kind, write_json)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOG_TITLE = "# The first GPU call"  # the log's first line: a rerun knows its own log by it
# Seconds per step before the budget cuts them; cards: None, what is left. Predicted on one H100
# (docs/SPEED.md): versions 10, decode 20-40, eager ~20, compiled 75-195, cards 100-150.
LIMITS = {"versions": 60, "decode": 150, "eager": 150, "compiled": 300, "cards": None}
RESERVE = 15  # seconds the budget keeps back for the last step's kill and the packing
TAIL = 20  # lines of a failed step's output kept in results.json (the log has all of them)


# ----------------------------------------------------------------------------- the log

class Log:
    """Lines written to OUT/log.txt and the terminal as they come, each stamped with the call's
    seconds and its step; threads (one reader per child) write through one lock."""

    def __init__(self, path, started):
        self.file = open(path, "w", encoding="utf-8")
        self.started, self.lock = started, threading.Lock()
        self.file.write(f"{LOG_TITLE}: {' '.join(map(shlex.quote, sys.argv))}\n")  # unstamped

    def line(self, step, text):
        stamped = f"[{time.time() - self.started:6.1f}s {step}] {text}"
        with self.lock:
            print(stamped, flush=True)
            self.file.write(stamped + "\n")
            self.file.flush()

    def close(self):
        self.file.close()


def copy_lines(stream, log, step, lines):
    """A child's output, line by line as it comes, into the log and `lines`."""
    for raw in iter(stream.readline, b""):
        text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        lines.append(text)
        log.line(step, text)


# ----------------------------------------------------------------------------- one step

def run_step(step, argv, limit, log, grace):
    """argv as a child in its own process group, under `limit` seconds; its output streamed to
    the log; whatever of the group is left when the child ends, killed, so that the next step
    has the machine to itself. Returns {rc, seconds, timed_out, lines}. A Ctrl-C of this call
    stops the child (its own session does not hear the terminal's) and is raised again."""
    log.line(step, f"$ {' '.join(map(shlex.quote, argv))}  (limit {limit:.0f} s)")
    started, lines = time.time(), []
    child = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, start_new_session=True,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
    reader = threading.Thread(target=copy_lines, args=(child.stdout, log, step, lines),
                              daemon=True)
    reader.start()
    timed_out = False
    try:
        child.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        timed_out = True
        log.line(step, f"over its {limit:.0f} s limit: SIGINT, and SIGKILL {grace} s later")
        stop(child, grace)
    except BaseException:  # Ctrl-C or an error here: the child must not run on
        stop(child, grace)
        raise
    signal_group(child, signal.SIGKILL)  # what it left running (a worker holding GPU memory, say)
    reader.join(timeout=grace)  # its output up to the end
    result = {"rc": child.returncode, "started": started, "seconds": time.time() - started,
              "timed_out": timed_out, "lines": lines}
    log.line(step, f"rc {child.returncode} in {result['seconds']:.1f} s"
             + (" (stopped at its limit)" if timed_out else ""))
    return result


def stop(child, grace):
    """SIGINT to the child's process group (a Python child stops as on Ctrl-C, saying what it
    kept), then SIGKILL to whatever of it is left `grace` seconds later."""
    signal_group(child, signal.SIGINT)
    try:
        child.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    signal_group(child, signal.SIGKILL)  # also its children, when the leader has exited already
    child.wait()


def signal_group(child, sig):
    try:
        os.killpg(child.pid, sig)  # the group outlives its leader while any member runs
    except (ProcessLookupError, PermissionError):  # none left (the number is not reused then)
        pass


# ----------------------------------------------------------------------------- the steps

def versions():
    """The software and the GPU, as JSON on one line (the versions step runs this)."""
    import numpy
    import torch
    import torchvision
    found = {"python": platform.python_version(), "torch": torch.__version__,
             "torchvision": torchvision.__version__, "numpy": numpy.__version__,
             "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
             "triton": module_version("triton"), "cpus": os.cpu_count(), "gpu": None}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        found.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2 ** 30, 2),
                     capability=f"{props.major}.{props.minor}", gpus=torch.cuda.device_count(),
                     multiprocessors=props.multi_processor_count, driver=nvidia_driver())
    print("versions: " + json.dumps(found), flush=True)


def module_version(name):
    try:
        return __import__(name).__version__
    except ImportError:
        return None


def nvidia_driver():
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
        return r.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def shared_flags(args):
    """The data, device and precision flags every script takes, with --subset / --test-subset."""
    flags = ["--dataset", args.dataset, "--data-dir", args.data_dir, "--device", args.device,
             "--precision", args.precision]
    flags += ["--subset", str(args.subset)] if args.subset else []
    return flags + (["--test-subset", str(args.test_subset)] if args.test_subset else [])


def steps(args):
    """(name, argv) of each step, in order."""
    py, common = sys.executable, shared_flags(args)
    train = [py, "train.py", *common, "--arch", args.arch, "--epochs", str(args.epochs),
             "--save-every", str(args.epochs), "--overwrite", *shlex.split(args.train_flags)]
    return [("versions", [py, "-c", "from studies.first_call import versions; versions()"]),
            ("decode", [py, "data.py", *common[:4]]),
            ("eager", train + ["--compile", "off", "--out", os.path.join(args.work, "eager.pth")]),
            ("compiled", train + ["--compile", args.compile,
                                  "--out", os.path.join(args.work, "compiled.pth")]),
            ("cards", [py, "-m", "studies.reproduce_cards", *common, "--arch", args.arch,
                       "--epochs", str(args.cards_epochs), "--classes", *args.classes,
                       "--out", os.path.join(args.work, "cards"), "--commit", args.commit,
                       "--train-flags", args.train_flags])]


def figures(step, args, result):
    """What a step measured, read from its output or files (those of a step stopped early too)."""
    if step == "versions":
        found = [line for line in result["lines"] if line.startswith("versions: ")]
        return json.loads(found[-1][len("versions: "):]) if found else None
    if step == "decode":
        return {"seconds": result["seconds"], "said": result["lines"][-3:]}
    if step in ("eager", "compiled"):
        return training_figures(os.path.join(args.work, step), result["started"])
    path = os.path.join(args.work, "cards", "cards.json")
    return read_json(path) if fresh(path, result["started"]) else None


def fresh(path, since):
    """Whether `path` was written since `since`: a file an earlier call left in the work folder
    is not this call's figure."""
    return os.path.isfile(path) and os.path.getmtime(path) >= since - 1  # mtimes lag time.time()


def training_figures(prefix, since):
    """A training's speed from its sidecar, or from its per-epoch log when it was stopped."""
    sidecar = sidecar_path(prefix + ".pth")  # <prefix>.pth.json (an older run's <prefix>.json)
    if fresh(sidecar, since) and fresh(prefix + ".pth", since):
        meta = read_json(sidecar)
        keys = ("first_epoch_seconds", "median_epoch_seconds", "compile_seconds", "peak_memory_gb",
                "cudagraph_skips", "compile_failed", "compile", "precision", "device", "seconds")
        return {"finished": True, **{k: meta.get(k) for k in keys},
                "epochs": meta["metrics"]["epoch"], "test_acc": meta["metrics"]["test_acc"]}
    if not fresh(prefix + ".log.jsonl", since):
        return None
    with open(prefix + ".log.jsonl") as f:
        log = [json.loads(line) for line in f]
    return {"finished": False, "epochs": len(log), "epoch_seconds": [r["seconds"] for r in log],
            "compile_seconds": sum(r.get("compile_seconds", 0.0) for r in log)}


# ----------------------------------------------------------------------------- the call

def call(args, log, results, started):
    """Each step in turn, under its limit cut to the budget left; results.json after each."""
    for step, argv in steps(args):
        left = args.budget - (time.time() - started) - RESERVE
        limit = min(left, args.limits[step] or left)
        if limit < 1:
            results["steps"][step] = {"skipped": "the call's --budget is spent"}
        elif step != "versions" and failed(results, "decode"):
            results["steps"][step] = {"skipped": "the data did not decode (see the decode step)"}
        else:
            result = run_step(step, argv, limit, log, args.grace)
            results["steps"][step] = {"argv": argv, "limit_s": limit, **summary(result)}
            results[step] = figures(step, args, result)
            if step == "cards":
                copy_cards(args, result["started"])
        if "skipped" in results["steps"][step]:
            log.line(step, f"skipped: {results['steps'][step]['skipped']}")
        write_results(args, results, started)


def failed(results, step):
    done = results["steps"].get(step, {})
    return "rc" in done and done["rc"] != 0


def summary(result):
    """A step's rc, seconds and time-out, with its last lines when it failed."""
    kept = {k: result[k] for k in ("rc", "seconds", "timed_out")}
    return {**kept, "tail": result["lines"][-TAIL:]} if result["rc"] else kept


def write_results(args, results, started):
    results["seconds"] = time.time() - started
    write_json(os.path.join(args.out, "results.json"), results)


def copy_cards(args, since):
    source = os.path.join(args.work, "cards", "cards.md")
    if fresh(source, since):  # this call's report, not one an earlier call left
        with open(source, "rb") as f:
            report = f.read()
        atomic_write(os.path.join(args.out, "cards.md"), lambda f: f.write(report))


def pack(args):
    """The work folder's logs, sidecars and reports (no weights, no states) as OUT/work.tar.gz."""
    def small(info):
        return None if info.name.endswith((".pth", ".pt", ".npz", ".npy")) else info
    if os.path.isdir(args.work):
        atomic_write(os.path.join(args.out, "work.tar.gz"),
                     lambda f: tar_into(f, args.work, small))


def tar_into(file, folder, keep):
    with tarfile.open(fileobj=file, mode="w:gz") as tar:
        tar.add(folder, arcname=os.path.basename(os.path.normpath(folder)), filter=keep)


# ----------------------------------------------------------------------------- command line

def step_limit(text):
    """--limit STEP=SECONDS."""
    step, _, seconds = text.partition("=")
    if step not in LIMITS or not seconds.isdigit() or int(seconds) == 0:
        raise argparse.ArgumentTypeError(f"use STEP=SECONDS with STEP one of {', '.join(LIMITS)} "
                                         f"and whole seconds > 0, got {text!r}")
    return step, int(seconds)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/first-call/out", help="the folder of the 4 result "
                        "files, $OUT on the GPU machine (default: runs/first-call/out)")
    parser.add_argument("--work", default="runs/first-call/work", help="the steps' own folder: "
                        "models, logs, the cards' run (default: runs/first-call/work)")
    parser.add_argument("--commit", default=None, help="the commit to record (default: git's "
                        "HEAD, or unknown where the copy has no .git)")
    parser.add_argument("--arch", default="resnet18", help="the trained architecture (default: "
                        "resnet18, the cards')")
    parser.add_argument("--epochs", type=positive_int, default=3, help="epochs of the eager and "
                        "the compiled timing (default: 3: the first, with compilation, and two)")
    parser.add_argument("--cards-epochs", type=positive_int, default=15, help="epochs of the "
                        "cards' model (default: 15, predicted about 90%% test accuracy)")
    parser.add_argument("--classes", nargs="+", default=["cat", "dog"], help="the classes the "
                        "cards' step forgets (default: cat dog)")
    parser.add_argument("--compile", choices=("inductor", "aot_eager"), default="inductor",
                        help="train.py --compile of the compiled step (default: inductor)")
    parser.add_argument("--train-flags", default="", help="more flags for train.py, e.g. "
                        "'--batch-size 32' for a CPU rehearsal (default: none)")
    parser.add_argument("--budget", type=positive_int, default=570, help="seconds for the whole "
                        "call, packing included (default: 570, within a 600-s command)")
    parser.add_argument("--limit", dest="limits", type=step_limit, action="append", default=[],
                        help="STEP=SECONDS, a step's own limit (default: "
                        + ", ".join(f"{k}={v or 'the rest'}" for k, v in LIMITS.items()) + ")")
    parser.add_argument("--grace", type=positive_int, default=10, help="seconds from a step's "
                        "SIGINT to its SIGKILL (default: 10)")
    parser.add_argument("--dataset", default="data/cifar10-jpeg.tar.gz", help="CIFAR-10: the "
                        "archive, carried into the checkout (default: data/cifar10-jpeg.tar.gz)")
    parser.add_argument("--data-dir", default="./data", help="where it is decoded and cached "
                        "(default: ./data)")
    parser.add_argument("--subset", type=positive_int, default=None, help="the first N train "
                        "images of each class: a rehearsal (default: all)")
    parser.add_argument("--test-subset", type=positive_int, default=None, help="the first N test "
                        "images of each class (default: all)")
    add_runtime_args(parser, seed=None)
    args = parser.parse_args(argv)
    args.limits = {**LIMITS, **dict(args.limits)}
    return args


def check(args):
    """Before any work: the archive is there, and every output can be written without taking
    another run's file or landing inside the work folder (which is packed)."""
    if not os.path.exists(args.dataset) and args.dataset not in ("cifar10", "cifar100"):
        raise ValueError(f"--dataset {args.dataset}: not found; copy the CIFAR-10 archive there "
                         f"(docs/SPEED.md: the first GPU call)")
    out, work = (os.path.realpath(p) for p in (args.out, args.work))
    if out == work or out.startswith(work + os.sep) or work.startswith(out + os.sep):
        raise ValueError(f"--out {args.out} and --work {args.work} must be apart: the work folder "
                         f"is packed into --out, which takes at most 8 files")
    mine = {"log.txt": text_of_kind(LOG_TITLE),
            "results.json": json_of_kind("first-call"), "work.tar.gz": packed_work,
            "cards.md": text_of_kind("# The model cards, reproduced")}
    for name, kind in mine.items():
        check_out(os.path.join(args.out, name), "--out", [args.dataset], kind)
    check_writable(os.path.join(args.work, "probe"), "--work")


def packed_work(path):
    """mine= for check_out: a tar.gz of one folder, what pack writes."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            return len({m.name.split("/")[0] for m in tar.getmembers()}) == 1
    except (tarfile.TarError, OSError):
        return False


def git_commit():
    try:
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                           cwd=ROOT, timeout=20)
        return r.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def main(argv=None):
    started = time.time()
    args = parse_args(argv)
    check(args)
    args.commit = args.commit or git_commit()
    os.makedirs(args.out, exist_ok=True)
    results = {"kind": "first-call", "commit": args.commit,
               "date": time.strftime("%Y-%m-%d %H:%M"), "argv": sys.argv, "budget_s": args.budget,
               "limits": args.limits, "steps": {}}
    log = Log(os.path.join(args.out, "log.txt"), started)
    try:
        call(args, log, results, started)
    finally:  # also on Ctrl-C: what was measured, packed
        write_results(args, results, started)
        pack(args)
        files = ", ".join(sorted(os.listdir(args.out)))
        log.line("call", f"done in {time.time() - started:.1f} s; {args.out} holds {files}")
        log.close()
    bad = [s for s, r in results["steps"].items() if r.get("rc") or r.get("timed_out")]
    if bad:
        raise ValueError(f"step(s) {', '.join(bad)} failed or ran out of time; their output is in "
                         f"{os.path.join(args.out, 'log.txt')}, their figures in results.json")


if __name__ == "__main__":
    run(main, "interrupted; what the call measured so far is in --out (log.txt, results.json)")
