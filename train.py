"""Train with the published 200-epoch recipe, on the whole train set or on the retain set (the retrain gold standard).

    python train.py                                   # ResNet18, CIFAR-10 -> checkpoints/resnet18_cifar10_full.pth
    python train.py --forget-class cat --resume       # retrain without cat -> checkpoints/resnet18_cifar10_no_cat.pth
    python train.py --dataset ../shared/data/cifar10-jpeg.tar.gz --arch resnet20 --subset 100 --epochs 5 --device cpu

Recipe (the model card's, adapted from Benchopt): SGD lr 0.1, momentum 0.9, weight decay 5e-4, Nesterov;
CosineAnnealingLR(T_max=epochs) stepped per epoch; 200 epochs; batch 128; cross-entropy; RandomCrop(32, 4) + flip.
Every epoch writes a resumable state (model, optimizer, scheduler, RNG) beside the output; --resume continues it.
"""
import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from data import Loader, add_data_args, describe_split, load_dataset, positive_int, split_from_args
from evaluate import pick_device, predict
from models import ARCHS, atomic_write, build_model, save_model, write_json


@dataclass(frozen=True)
class TrainConfig:
    """The published recipe for ResNet18 on CIFAR-10 (model card; Benchopt's ResNet18 benchmark)."""
    epochs: int = 200  # also T_max of the cosine schedule, stepped once per epoch
    batch_size: int = 128
    lr: float = 0.1  # eta_0, the initial SGD learning rate
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    seed: int = 0  # initialisation, batch order and augmentation


def make_optimizer(model, cfg):
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)


def train_epoch(model, loader, optimizer, label=""):
    """One pass of cross-entropy SGD. Loss and accuracy accumulate on the device and are read once, at the end;
    on a terminal a progress line (which reads the loss) is shown every 20 steps."""
    model.train()
    show = sys.stderr.isatty()
    total, correct, seen = 0, 0, 0
    for step, (x, y) in enumerate(loader):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total, correct, seen = total + loss.detach() * len(y), correct + (logits.argmax(1) == y).sum(), seen + len(y)
        if show and step % 20 == 0:
            print(f"\r{label} step {step}/{len(loader)} loss {loss.item():.4f}", end="", file=sys.stderr)
    if show:
        print("\r\x1b[K", end="", file=sys.stderr)
    if not torch.isfinite(total):
        raise ValueError(f"{label}: the training loss is not finite; lower --lr")
    return total.item() / seen, 100 * correct.item() / seen


def accuracy(model, loader):
    logits, labels = predict(model, loader)
    return 100 * (logits.argmax(1) == labels).float().mean().item()


def save_state(path, model, optimizer, scheduler, loader, log, identity):
    """Everything --resume needs to continue bitwise: weights, optimizer, schedule, data RNG, log so far."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "data_rng": loader.generator.get_state(), "torch_rng": torch.get_rng_state(), "log": log,
             "identity": json.dumps(identity, sort_keys=True)}
    atomic_write(path, lambda f: torch.save(state, f))


def load_state(path, model, optimizer, scheduler, loader, identity):
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state["identity"] != json.dumps(identity, sort_keys=True):
        raise ValueError(f"{path} was written by a run with other settings; delete it or drop --resume")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    loader.generator.set_state(state["data_rng"])
    torch.set_rng_state(state["torch_rng"])
    return state["log"]


def fit(model, train_loader, test_loader, cfg, prefix=None, resume=False, identity=None, stop_after=None):
    """Train `model` with the recipe `cfg` (test_loader None: no test accuracy); after every epoch print a line
    and, with a path prefix, write the
    resumable state <prefix>.state.pt and the log <prefix>.log.jsonl. resume: continue from that state when it
    exists. stop_after: end after that epoch. Returns the per-epoch log."""
    optimizer, scheduler = make_optimizer(model, cfg)
    state_path = prefix and prefix + ".state.pt"
    log = []
    if resume and state_path and os.path.exists(state_path):
        log = load_state(state_path, model, optimizer, scheduler, train_loader, identity)
        print(f"resumed from {state_path} after epoch {len(log)}", file=sys.stderr)
    for epoch in range(len(log) + 1, cfg.epochs + 1):
        start, lr = time.time(), scheduler.get_last_lr()[0]
        loss, train_acc = train_epoch(model, train_loader, optimizer, f"epoch {epoch}/{cfg.epochs}")
        scheduler.step()
        test_acc = accuracy(model, test_loader) if test_loader else None
        log.append({"epoch": epoch, "loss": loss, "train_acc": train_acc, "test_acc": test_acc, "lr": lr,
                    "seconds": time.time() - start})
        test = "" if test_acc is None else f" test {test_acc:.2f}%"
        print(f"epoch {epoch}/{cfg.epochs} loss {loss:.4f} train {train_acc:.2f}%{test} lr {lr:.5f} "
              f"{log[-1]['seconds']:.1f}s", flush=True)
        if prefix:
            save_state(state_path, model, optimizer, scheduler, train_loader, log, identity)
            write_log(prefix + ".log.jsonl", log)
        if epoch == stop_after:
            break
    return log


def write_log(path, log):
    atomic_write(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in log).encode()))


def default_out(arch, data, split, subset):
    """The published names: resnet18_cifar10_full.pth, resnet18_cifar10_no_cat.pth (+ _forget0.2_seed0, _subsetN)."""
    name = "full"
    if split.forget_class is not None:
        name = f"no_{data.classes[split.forget_class]}"
    elif split.forget_fraction is not None:
        name = f"forget{split.forget_fraction:g}_seed{split.forget_seed}"
    return os.path.join("checkpoints", f"{arch}_{data.name}_{name}" + (f"_subset{subset}" if subset else "") + ".pth")


def parse_args(argv=None):
    d = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="resnet18", choices=list(ARCHS), help="architecture (default: resnet18)")
    parser.add_argument("--epochs", type=positive_int, default=d.epochs, help=f"epochs = cosine T_max (default: {d.epochs})")
    parser.add_argument("--batch-size", type=positive_int, default=d.batch_size, help=f"batch size (default: {d.batch_size})")
    parser.add_argument("--lr", type=float, default=d.lr, help=f"initial learning rate eta_0 (default: {d.lr})")
    parser.add_argument("--momentum", type=float, default=d.momentum, help=f"SGD momentum (default: {d.momentum})")
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay, help=f"weight decay (default: {d.weight_decay})")
    parser.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=d.nesterov,
                        help=f"Nesterov momentum (default: {d.nesterov})")
    parser.add_argument("--seed", type=int, default=d.seed, help=f"seed of init, batch order, augmentation (default: {d.seed})")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--out", default=None, help="checkpoint path (default: checkpoints/<arch>_<dataset>_<full|no_CLASS>.pth)")
    parser.add_argument("--resume", action="store_true", help="continue from <out>.state.pt when it exists (default: off)")
    parser.add_argument("--stop-after", type=positive_int, default=None, help="stop after this epoch, leaving a "
                        "resumable state; for splitting a run into jobs (default: run all epochs)")
    add_data_args(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = TrainConfig(args.epochs, args.batch_size, args.lr, args.momentum, args.weight_decay, args.nesterov, args.seed)
    data = load_dataset(args.dataset, args.data_dir)
    split = split_from_args(args, data)
    out = args.out or default_out(args.arch, data, split, args.subset)
    prefix = os.path.splitext(out)[0]
    print(f"{cfg}\n{args.arch} on {data.name}: {len(split.retain)} train images "
          f"({len(split.forget)} forgotten), {len(split.test)} test images -> {out}", flush=True)
    device = pick_device(args.device)
    torch.manual_seed(cfg.seed)
    model = build_model(args.arch, len(data.classes)).to(device)
    train_loader = Loader(data, split.retain, True, cfg.batch_size, device, shuffle=True, augment=True, seed=cfg.seed)
    test_loader = Loader(data, split.test, False, 1000, device)
    identity = {"cfg": dataclasses.asdict(cfg), "arch": args.arch, "dataset": data.name,
                "split": describe_split(split, data.classes)["sha256"]}
    log = fit(model, train_loader, test_loader, cfg, prefix, args.resume, identity, args.stop_after)
    if len(log) < cfg.epochs:
        print(f"stopped after epoch {len(log)}; continue with --resume", file=sys.stderr)
        return
    save_model(out, model, {"config": dataclasses.asdict(cfg), "arch": args.arch, "dataset": data.name,
                            "classes": data.classes, "split": describe_split(split, data.classes),
                            "device": str(device), "seconds": sum(r["seconds"] for r in log), "metrics": log[-1],
                            "log": os.path.basename(prefix + ".log.jsonl")})
    os.remove(prefix + ".state.pt")
    print(f"saved {out} (test {log[-1]['test_acc']:.2f}%)")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit("interrupted; run the same command with --resume to continue from the last finished epoch")
