"""Train with the published 200-epoch recipe, on the whole train set or on the retain set (the retrain gold standard).

    python train.py           # ResNet18, CIFAR-10 -> checkpoints/resnet18_cifar10_full.pth
    python train.py --forget-class cat --resume
                              # retrain without cat -> checkpoints/resnet18_cifar10_no_cat.pth
    python train.py --dataset ../shared/data/cifar10-jpeg.tar.gz --arch resnet20 --subset 100 \
        --epochs 5 --device cpu
    torchrun --nproc_per_node=2 train.py
                              # DistributedDataParallel: the global batch of 128 split across ranks

Recipe (the model card's, adapted from Benchopt): SGD lr 0.1, momentum 0.9, weight decay 5e-4,
Nesterov; CosineAnnealingLR(T_max=epochs) stepped per epoch; 200 epochs; batch 128; cross-entropy;
RandomCrop(32, 4) + flip. Every epoch writes a resumable state (model, optimizer, scheduler, RNG)
beside the output; --resume continues it.
"""
import argparse
import contextlib
import copy
import dataclasses
import json
import os
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from cli import (add_config_args, add_runtime_args, atomic_write, config_from_args,
                 eval_batch_size, lock, pick_device, positive_int, run)
from data import (AUGMENT, Loader, add_data_args, describe_split, forget_name, input_files,
                  load_dataset, split_from_args)
from evaluate import predict
from methods import hp
from models import (ARCHS, IMAGENET_WEIGHTS, build_model, check_output, input_size, is_remote,
                    load_pretrained, non_finite, pretrained_file, save_model, sha256_file,
                    to_device)
from published import pretrained_name


@dataclass(frozen=True)
class TrainConfig:
    """The 200-epoch recipe for ResNet18 on CIFAR-10 (the model card, adapted from Benchopt)."""
    arch: str = hp("resnet18", "architecture", choices=tuple(ARCHS))
    epochs: int = hp(200, "epochs; also T_max of the cosine schedule, stepped once per epoch")
    batch_size: int = hp(128, "batch size")
    lr: float = hp(0.1, "eta_0, the initial SGD learning rate")
    momentum: float = hp(0.9, "SGD momentum")
    weight_decay: float = hp(5e-4, "weight decay")
    nesterov: bool = hp(True, "Nesterov momentum")
    augment: str = hp("crop-flip", "train augmentation: RandomCrop(32, 4) + flip",
                      choices=tuple(AUGMENT))
    patience: int = hp(0, "early stopping after this many epochs without a better "
                          "validation accuracy; 0 = off",
                       minimum=0)
    val_fraction: float = hp(0.0, "fraction of the retain set held out for validation; 0 = none")
    seed: int = hp(0, "seed of initialisation, batch order and augmentation", minimum=0)

    def optimizer(self, model):
        optimizer = torch.optim.SGD(model.parameters(), lr=self.lr, momentum=self.momentum,
                                    weight_decay=self.weight_decay, nesterov=self.nesterov,
                                    fused=on_cuda(model))
        return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.epochs)


@dataclass(frozen=True)
class TransferConfig:
    """The CIFAR-100 report's transfer recipe: ImageNet-1K weights, images upsampled to 224x224 (nearest), Adam
    with a 10x larger learning rate for the new classifier, cosine schedule, cross-entropy."""
    arch: str = hp("resnet18-imagenet", "architecture (an ImageNet one)",
                   choices=tuple(IMAGENET_WEIGHTS))
    pretrained: str = hp("torchvision", "starting weights: torchvision (its IMAGENET1K_V1), or "
                         "a state_dict of arch by path, URL or hf://OWNER/REPO/FILE (.safetensors "
                         "too); fc is new either way")
    epochs: int = hp(10, "epochs = cosine T_max (not published; SISA's slices use 9 - k)")
    batch_size: int = hp(128, "batch size (not published)")
    lr: float = hp(1e-4, "Adam learning rate of the pretrained layers")
    lr_fc: float = hp(1e-3, "Adam learning rate of the new classifier (fc)")
    beta1: float = hp(0.9, "Adam beta_1")
    beta2: float = hp(0.999, "Adam beta_2")
    augment: str = hp("crop-flip", "train augmentation", choices=tuple(AUGMENT))
    patience: int = hp(0, "early stopping after this many epochs without a better "
                          "validation accuracy; 0 = off",
                       minimum=0)
    val_fraction: float = hp(0.0, "fraction of the retain set held out for validation; 0 = none")
    seed: int = hp(0, "seed of initialisation, batch order and augmentation", minimum=0)

    def optimizer(self, model):
        fc = [p for n, p in model.named_parameters() if n.startswith("fc.")]
        rest = [p for n, p in model.named_parameters() if not n.startswith("fc.")]
        optimizer = torch.optim.Adam([{"params": rest, "lr": self.lr},
                                      {"params": fc, "lr": self.lr_fc}],
                                     betas=(self.beta1, self.beta2), fused=on_cuda(model))
        return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.epochs)


@dataclass(frozen=True)
class EnsembleConfig(TransferConfig):
    """The ensemble report's recipe per member: ImageNet ResNet18 at 224x224 (Resize 256 + RandomCrop 224),
    RandomRotation(10) + ColorJitter(0.2, 0.2, 0.2, 0.1), batch 512, early stopping with patience 50
    keeping the best model, selected on a held-out 10% of the train set (the report selected on the
    test set). Members start from the report's weights, timm's ResNet18 pretrained on Instagram-1B
    (published.PUBLISHED_PRETRAINED); --pretrained torchvision starts them from torchvision's."""
    pretrained: str = hp(pretrained_name(), "starting weights: the report's (timm's Instagram-1B "
                         "ResNet18), torchvision (its IMAGENET1K_V1), or a state_dict of arch by "
                         "path, URL or hf:// name; fc is new either way")
    epochs: int = hp(200, "maximum epochs = cosine T_max (early stopping ends sooner)")
    batch_size: int = hp(512, "batch size")
    augment: str = hp("rotate-jitter", "train augmentation", choices=tuple(AUGMENT))
    patience: int = hp(50, "early stopping after this many epochs without a "
                           "better validation accuracy", minimum=0)
    val_fraction: float = hp(0.1, "fraction of the retain set held out for "
                                  "validation and model selection")


RECIPES = {"sgd": TrainConfig, "transfer": TransferConfig, "ensemble": EnsembleConfig}


def recipe_identity(cfg):
    """A recipe's settings as an output's identity: dataclasses.asdict, less pretrained where it is
    torchvision, the only starting point before --pretrained, so that what was trained then is
    still found (and SISA's slices keep their hashes). A local --pretrained file counts by its
    content, as PATH#sha256=<what it holds now>: a file replaced under the same name is other
    settings, not "nothing to do". A URL or hf:// name counts as given: by content when it
    carries a #sha256= pin, else by name (its download is kept and reused, as before)."""
    settings = dataclasses.asdict(cfg)
    if settings.get("pretrained") == "torchvision":
        del settings["pretrained"]
    elif settings.get("pretrained") and not is_remote(settings["pretrained"]):
        path = pretrained_file(settings["pretrained"])
        settings["pretrained"] = f"{path}#sha256={sha256_file(path)}"
    return settings


def starting_weights(model, cfg):
    """The recipe's starting weights (--pretrained; models.load_pretrained) loaded into a fresh
    `model` of an ImageNet architecture: what a sidecar records of them (name, file, sha256), or
    None (a CIFAR architecture starts fresh)."""
    if cfg.arch not in IMAGENET_WEIGHTS:
        return None
    return load_pretrained(model, cfg.arch, getattr(cfg, "pretrained", "torchvision"))


def on_cuda(model):
    """Fused optimizers on CUDA: one kernel for every parameter's update instead of dozens (rounding
    only); None elsewhere, torch's default (foreach), which keeps CPU runs bitwise as before."""
    return True if next(model.parameters()).is_cuda else None


def train_epoch(model, loader, optimizer, label="", amp=None, compiled=None):
    """One pass of cross-entropy SGD. Loss and accuracy accumulate on the device and are read once,
    at the end; on a terminal a progress line (which reads the loss) is shown every 20 steps. amp:
    autocast dtype, or None to keep the caller's (none: fp32). compiled: the batch shapes a compiled
    model has already seen, or None: the first step of each new shape (its compilation, on CUDA its
    graph capture) is timed apart. Returns (loss, accuracy %, seconds spent compiling)."""
    model.train()
    show = sys.stderr.isatty()
    total, correct, seen, compiling = 0, 0, 0, 0.0
    for step, (x, y) in enumerate(loader):
        new_shape = compiled is not None and x.shape not in compiled
        start = new_shape and synchronized(x.device)
        with torch.autocast(x.device.type, dtype=amp) if amp else contextlib.nullcontext():
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total, correct, seen = (total + loss.detach() * len(y),
                                correct + (logits.argmax(1) == y).sum(), seen + len(y))
        if new_shape:  # once per shape: the sync is not in the steady loop
            compiling += synchronized(x.device) - start
            compiled.add(x.shape)
        if show and step % 20 == 0:
            print(f"\r{label} step {step}/{len(loader)} loss {loss.item():.4f}", end="",
                  file=sys.stderr)
    if show:
        print("\r\x1b[K", end="", file=sys.stderr)
    if not torch.isfinite(total):
        raise ValueError(f"{label}: the training loss is not finite; lower --lr")
    return total.item() / seen, 100 * correct.item() / seen, compiling


def synchronized(device):
    """time.time() once the device has finished its queued work (a timing fence)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.time()


def accuracy(model, loader, amp=None):
    logits, labels = predict(model, loader, amp)
    return 100 * (logits.argmax(1) == labels).float().mean().item()


def save_state(path, model, optimizer, scheduler, loader, log, best, identity):
    """Everything --resume needs to continue bitwise:
    weights, optimizer, schedule, data RNG, log, best so far."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "data_rng": loader.generator.get_state(),
             "torch_rng": torch.get_rng_state(), "log": log, "best": best,
             "identity": json.dumps(identity, sort_keys=True)}
    atomic_write(path, lambda f: torch.save(state, f))


def load_state(path, model, optimizer, scheduler, loader, identity):
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        foreign = (not isinstance(state, dict)
                   or state.get("identity") != json.dumps(identity, sort_keys=True))
    except Exception as e:  # a truncated or damaged file: zip, pickle or weights_only errors
        raise ValueError(f"{path} is damaged ({type(e).__name__}); delete it to start "
                         "again, or drop --resume") from None
    if foreign:
        raise ValueError(f"{path} was written by a run with other settings; "
                         "delete it or drop --resume")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    loader.generator.set_state(state["data_rng"])
    torch.set_rng_state(state["torch_rng"])
    return state["log"], state["best"]


@dataclass(frozen=True)
class Run:
    """How one fit() keeps its work (log, resumable state), stops, and steps (DDP, compile)."""
    prefix: str | None = None  # <prefix>.log.jsonl every epoch, <prefix>.state.pt; None: no files
    resume: bool = False  # continue from <prefix>.state.pt when it exists
    identity: dict | None = None  # what made the state: a state made otherwise is refused
    stop_after: int | None = None  # stop after this epoch, its state written, to resume later
    save_every: int = 1  # the state every K epochs (and at stop_after)
    write: bool = True  # False on DDP ranks > 0: they read the state, rank 0 alone writes it
    step_model: object = None  # what the step calls, if not the model: torch.compile, DDP wrapper


def fit(model, train_loader, test_loader, cfg, val_loader=None, amp=None, run=Run()):
    """Train `model` with the recipe `cfg`. After every epoch: a printed line, the test (and
    validation) accuracy when a loader is given, and with run.prefix the log and the resumable
    state (Run). With val_loader and cfg.patience, stop after `patience` epochs without a better
    validation accuracy. When done, the best-validation weights are restored. amp: autocast dtype
    (bf16) or None (the caller's: fp32 in train.py). run.step_model: evaluation and checkpoints use
    the model itself; a compiled step that fails (compilation, a CUDA graph) falls back to the
    eager one from the start of its epoch (fall_back_to_eager). Returns (log, done); done is False
    only after run.stop_after, when the run is to be resumed."""
    prefix, identity, stop_after = run.prefix, run.identity, run.stop_after
    step_model = model if run.step_model is None else run.step_model  # a compiled one has no bool()
    optimizer, scheduler = cfg.optimizer(model)
    compiled = set() if step_model is not model and hasattr(step_model, "_orig_mod") else None
    state_path = prefix and prefix + ".state.pt"
    log, best = [], {"acc": -1.0, "epoch": 0, "model": None}
    if run.resume and state_path and os.path.exists(state_path):
        log, best = load_state(state_path, model, optimizer, scheduler, train_loader, identity)
        print(f"resumed from {state_path} after epoch {len(log)}", file=sys.stderr)
    for epoch in range(len(log) + 1, cfg.epochs + 1):
        start, lr, failed = time.time(), scheduler.get_last_lr()[0], None
        label = f"epoch {epoch}/{cfg.epochs}"
        start_state = compiled is not None and epoch_start(model, optimizer, train_loader)
        try:
            loss, train_acc, compiling = train_epoch(step_model, train_loader, optimizer, label,
                                                     amp, compiled)
        except Exception as e:  # a compiler's errors share no class
            if not start_state or isinstance(e, ValueError):  # ValueError: it diverged
                raise
            failed = fall_back_to_eager(e, label, start_state, model, optimizer, train_loader)
            step_model, compiled = step_model._orig_mod, None  # the model, or its DDP wrapper
            lost = time.time() - start
            loss, train_acc, compiling = train_epoch(step_model, train_loader, optimizer, label,
                                                     amp)
            compiling += lost  # the failed try counts as compiling, not as the epoch's seconds
        if non_finite(model.state_dict()):
            raise ValueError(f"epoch {epoch}: the weights hold NaN or inf (the run "
                             "diverged); lower --lr")
        scheduler.step()
        record = {"epoch": epoch, "loss": loss, "train_acc": train_acc, "lr": lr,
                  "test_acc": accuracy(model, test_loader, amp) if test_loader else None,
                  "val_acc": accuracy(model, val_loader, amp) if val_loader else None,
                  "seconds": time.time() - start - compiling, "compile_seconds": compiling,
                  "compile_failed": failed}
        log.append(record)
        if val_loader and record["val_acc"] > best["acc"]:
            best = {"acc": record["val_acc"], "epoch": epoch,
                    "model": copy.deepcopy(model.state_dict())}
        print(f"epoch {epoch}/{cfg.epochs} loss {loss:.4f} train {train_acc:.2f}%" + "".join(
            f" {k[:-4]} {record[k]:.2f}%" for k in ("test_acc", "val_acc")
            if record[k] is not None) +
            f" lr {lr:.5f} {record['seconds']:.1f}s" +
            (f" (+{compiling:.1f}s compiling)" if compiling else ""),
            flush=True)
        if prefix and run.write and (epoch % run.save_every == 0 or epoch == stop_after):
            save_state(state_path, model, optimizer, scheduler, train_loader, log, best, identity)
        if prefix and run.write:  # every epoch: a run stopped from outside leaves its epochs' lines
            write_log(prefix + ".log.jsonl", log)
        if epoch == stop_after and epoch < cfg.epochs:
            return log, False
        if val_loader and cfg.patience and epoch - best["epoch"] >= cfg.patience:
            print(f"early stop: no better validation accuracy since epoch {best['epoch']}",
                  flush=True)
            break
    if best["model"] is not None:
        model.load_state_dict(best["model"])
    return log, True


def epoch_start(model, optimizer, loader):
    """What an epoch starts from, kept while a compiled step runs so that fall_back_to_eager can
    run it again: on the device, for ResNet18 a ~90 MB copy of weights and momentum (a few ms)."""
    return {"model": {k: v.clone() for k, v in model.state_dict().items()},
            "optimizer": copy.deepcopy(optimizer.state_dict()),
            "data_rng": loader.generator.get_state(), "torch_rng": torch.get_rng_state()}


def fall_back_to_eager(error, label, start, model, optimizer, loader):
    """A compiled step failed (compiling, or in a CUDA graph): its traceback printed, and the
    epoch's starting point (weights, BatchNorm statistics, optimizer, data and torch RNG) put back,
    for the caller to run the epoch again, and the rest, eager: what `--compile off` would do from
    there. A hang has no such way out: a time limit around the run must end it (the first GPU
    call's steps have one). Returns the error's first lines, for the log."""
    traceback.print_exception(error)
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    cause = f"{type(error).__name__}: {' '.join(lines[:2])[:300]}"  # dynamo's: backend, then cause
    print(f"warning: {label}: the compiled step failed ({cause}; its traceback is above); this "
          f"epoch again from its start, and the rest, without compiling", file=sys.stderr,
          flush=True)
    model.load_state_dict(start["model"])
    optimizer.load_state_dict(start["optimizer"])
    loader.generator.set_state(start["data_rng"])
    torch.set_rng_state(start["torch_rng"])
    return cause


def write_log(path, log):
    atomic_write(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in log).encode()))


def normalization(data):
    """What a model's sidecar records of the normalisation it was trained with
    (models.normalization_of reads it)."""
    return {"mean": list(data.mean), "std": list(data.std)}


# ----------------------------------------------------------------------------- command line

def default_out(arch, data, split, subset):
    """The published names: resnet18_cifar10_full.pth, resnet18_cifar10_no_cat.pth (+
    _forget0.2_seed0, _subsetN, _halfK)."""
    name = forget_name(split, data.classes, subset)
    return os.path.join("checkpoints", f"{arch}_{data.name}_{name}.pth")


def parse_args(argv=None):
    first = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    first.add_argument("--recipe", choices=list(RECIPES), default="sgd")
    first.add_argument("--sisa", action="store_true")  # moved to sisa.py: said so, below
    known = first.parse_known_args(argv)[0]
    recipe = known.recipe
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    if known.sisa:  # an old command fails clearly, never trains one full model instead
        parser.error("--sisa moved to its own script: python sisa.py train <the same flags, "
                     "less --sisa> (sisa.py train --help)")
    parser.add_argument("--recipe", choices=list(RECIPES), default="sgd",
                        help="sgd: the 200-epoch recipe; transfer: ImageNet weights + Adam; "
                        "ensemble: the ensemble report's member recipe (default: sgd)")
    parser.add_argument("--out", default=None, help="checkpoint path "
                        "(default: checkpoints/<arch>_<dataset>_<full|no_CLASS>.pth)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from <out>.state.pt when it exists (default: off)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a finished --out made with other settings, or train again "
                        "one made with these (default: refuse / keep it)")
    parser.add_argument("--wait", action="store_true",
                        help="when another run is writing --out, wait for it (then nothing is left "
                        "to do) instead of stopping at once: parallel make jobs (default: stop)")
    parser.add_argument("--stop-after", type=positive_int, default=None,
                        help="stop after this epoch, leaving a resumable state; for splitting a "
                        "run into jobs (default: run all epochs)")
    parser.add_argument("--compile", nargs="?", const="inductor", default="off",
                        choices=("off", "inductor", "aot_eager"),
                        help="torch.compile the training step: inductor (on CUDA with CUDA graphs, "
                        "mode reduce-overhead; --compile alone), or aot_eager (graph capture only, "
                        "fast to start); compile time is logged apart from the epochs "
                        "(default: off)")
    parser.add_argument("--save-every", type=positive_int, default=1,
                        help="write the resumable state every K epochs: an interruption then loses "
                        "up to K - 1 epochs; its ~90 MB write costs about a tenth of a fast GPU "
                        "epoch (default: 1)")
    add_runtime_args(parser, seed=None)  # the seed is the recipe's (--seed below)
    add_config_args(parser, RECIPES[recipe])
    add_data_args(parser)
    return parser.parse_args(argv)


def check_flags(args, cfg):
    """Before the data: flags that cannot work together, each one line naming them."""
    if cfg.patience and not cfg.val_fraction:  # it watches the validation accuracy: none, no stop
        raise ValueError(f"--patience {cfg.patience} stops on the validation accuracy, but there "
                         f"is no validation set: give --val-fraction (such as 0.1), or "
                         f"--patience 0")


def inputs(args, cfg):
    """What a training run reads, which its outputs never replace: the data, a local pretrained."""
    pretrained = getattr(cfg, "pretrained", "torchvision")
    local = pretrained != "torchvision" and not is_remote(pretrained)
    return input_files(args) + [pretrained.split("#sha256=")[0]] * local


def main(argv=None):
    args = parse_args(argv)
    cfg = config_from_args(RECIPES[args.recipe], args)
    check_flags(args, cfg)
    data = load_dataset(args.dataset, args.data_dir)
    split = split_from_args(args, data, cfg.val_fraction or None)
    out = args.out or default_out(cfg.arch, data, split, args.subset)
    identity = {"cfg": recipe_identity(cfg), "dataset": data.name,
                "world_size": int(os.environ.get("WORLD_SIZE", 1)),
                "split": describe_split(split, data.classes)["sha256"]}
    if check_output(out, identity, args.overwrite, inputs(args, cfg)):
        print(f"{out} is already trained with these settings; nothing to do "
              "(--overwrite trains it again)")
        return
    print(f"{cfg}\n{cfg.arch} on {data.name}: {len(split.retain)} train images "
          f"({len(split.forget)} forgotten, {len(split.val)} validation), {len(split.test)} "
          f"test images -> {out}", flush=True)
    with (lock(out, args.wait) if int(os.environ.get("RANK", 0)) == 0
          else contextlib.nullcontext()) as waited:
        if waited and check_output(out, identity, args.overwrite, inputs(args, cfg)):  # made now
            print(f"{out} was trained meanwhile by the run this one waited for; nothing to do")
            return
        train(args, cfg, data, split, out, identity)


def train(args, cfg, data, split, out, identity):
    """The recipe on the split's retain set,
    resumable from <out>.state.pt, saved at `out` with its sidecar."""
    prefix = os.path.splitext(out)[0]
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.arch, len(data.classes))
    pretrained = starting_weights(model, cfg)  # fails (offline, no weights) before any work
    rank, world = init_distributed(args)
    device, amp = pick_device(f"cuda:{os.environ['LOCAL_RANK']}"
                              if world > 1 and torch.cuda.is_available() and args.device != "cpu"
                              else args.device, args.precision)
    model = to_device(model, device)
    step_model = wrap_distributed(model, device) if world > 1 else model
    step_model = (compile_step(step_model, device, args.compile) if args.compile != "off"
                  else step_model)
    size = input_size(model)
    train_loader = Loader(data, split.retain, train_set=True, batch_size=cfg.batch_size,
                          device=device, shuffle=True, augment=cfg.augment, seed=cfg.seed,
                          size=size, shard=(rank, world))
    test_loader = Loader(data, split.test, train_set=False, batch_size=eval_batch_size(device),
                         device=device, size=size)
    val_loader = Loader(data, split.val, train_set=True, batch_size=eval_batch_size(device),
                        device=device, size=size) if len(split.val) else None
    log, done = fit(model, train_loader, test_loader, cfg, val_loader, amp,
                    Run(prefix=prefix, resume=args.resume, identity=identity,
                        stop_after=args.stop_after, save_every=args.save_every,
                        write=rank == 0, step_model=step_model))
    if world > 1:
        agree = finish_distributed(model)
        if rank != 0:
            return
    if not done:
        print(f"stopped after epoch {len(log)}; continue with --resume", file=sys.stderr)
        return
    save_model(out, model, {"recipe": args.recipe, "config": dataclasses.asdict(cfg),
                            "arch": cfg.arch, "dataset": data.name, "classes": data.classes,
                            "normalization": normalization(data), "pretrained": pretrained,
                            "split": describe_split(split, data.classes), "device": str(device),
                            "precision": "bf16" if amp else "fp32", "compile": args.compile,
                            "seconds": sum(r["seconds"] for r in log), **runtime_stats(log, device),
                            "compile_failed": compile_failure(log),
                            "metrics": log[-1], "log": os.path.basename(prefix + ".log.jsonl"),
                            "world_size": world, "ranks_agree": agree if world > 1 else None,
                            "identity": identity})
    if os.path.exists(prefix + ".state.pt"):  # none when the run was shorter than --save-every
        os.remove(prefix + ".state.pt")
    print(f"saved {out}")


def compile_step(model, device, backend):
    """torch.compile of the training step's model. inductor on CUDA: mode reduce-overhead, each
    batch shape (the full batches and the epoch's last, smaller one) captured once as a CUDA graph
    and replayed, so that a step costs a few launches instead of about 360; dynamic=False keeps the
    two shapes two static graphs. aot_eager: the same graph capture without code generation (fast to
    start: what the CPU tests run)."""
    mode = "reduce-overhead" if backend == "inductor" and device.type == "cuda" else None
    return torch.compile(model, backend=backend, mode=mode, dynamic=False)


def compile_failure(log):
    """The epoch where a compiled step failed and the run went on eager, and the error, or None."""
    failed = [r for r in log if r.get("compile_failed")]
    return {"epoch": failed[0]["epoch"], "error": failed[0]["compile_failed"]} if failed else None


def runtime_stats(log, device):
    """What a run's sidecar says about its speed: seconds per epoch (the first and the median,
    compilation apart; the median of an even count is the mean of the middle two), compilation
    seconds, the GPU's peak memory, and CUDA graphs torch.compile had to skip."""
    stats = {"first_epoch_seconds": log[0]["seconds"],
             "median_epoch_seconds": statistics.median(r["seconds"] for r in log),
             "compile_seconds": sum(r.get("compile_seconds", 0.0) for r in log),
             "peak_memory_gb": None, "cudagraph_skips": None}
    if device.type == "cuda":
        stats["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
        from torch._dynamo.utils import counters  # filled only when torch.compile ran
        stats["cudagraph_skips"] = counters["inductor"].get("cudagraph_skips", 0)
    return stats


def init_distributed(args):
    """Under torchrun (WORLD_SIZE > 1):
    one process per GPU with NCCL, or CPU processes with gloo. (rank, world)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    cuda = torch.cuda.is_available() and args.device != "cpu"
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo")
    if dist.get_rank() != 0:
        # one log: rank 0's (its share of each batch); errors still show
        sys.stdout = open(os.devnull, "w")
    return dist.get_rank(), world


def wrap_distributed(model, device):
    """DistributedDataParallel, with SyncBatchNorm on GPUs so that BN sees the global batch of
    128. PyTorch's SyncBatchNorm runs on GPUs only: on CPUs (gloo) each rank normalises its
    own share of the batch."""
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device] if device.type == "cuda" else None)


def finish_distributed(model):
    """Give every rank rank 0's buffers (BN running statistics; identical already with
    SyncBatchNorm), then check that all ranks hold the same weights. Returns whether they
    agree; rank 0 alone saves."""
    for buffer in model.buffers():
        dist.broadcast(buffer, 0)
    digest = weights_digest(model)  # on the weights' device: NCCL gathers CUDA tensors only
    digests = [torch.zeros_like(digest) for _ in range(dist.get_world_size())]
    dist.all_gather(digests, digest)
    agree = bool(torch.stack(digests).eq(digest).all())
    # no rank tears its connections down while another is still finishing a collective (gloo aborts)
    dist.barrier()
    dist.destroy_process_group()
    return agree


def weights_digest(model):
    """The sum of every state_dict entry in float64,
    as a 1-element tensor on the weights' own device."""
    return torch.stack([v.double().sum() for v in model.state_dict().values()]).sum().view(1)


# what --resume continues from: the last state written (every --save-every epochs)
INTERRUPTED = ("interrupted; run the same command with --resume to continue from the last "
               "resumable state, written every --save-every epochs (default 1: the last finished "
               "epoch) and at --stop-after")

if __name__ == "__main__":
    run(main, INTERRUPTED)
