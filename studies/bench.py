"""Speed of this project's path against the plain reference path, side by side on one device.

    python -m studies.bench        # GPU: ResNet18 on the full CIFAR-10 train and test sets
    python -m studies.bench --dataset ../shared/data/cifar10-jpeg.tar.gz --arch resnet20 \\
        --subset 100 --device cpu

Plain path = a torchvision DataLoader over PIL images with the recipe's transforms and worker processes, fp32,
eager, `.item()` every step. Ours = the batched on-device Loader, device-side metrics, bf16 autocast on CUDA.
Measured: a training epoch, evaluation of the test set, SSD importances (batch and per-sample), the ensemble
recipe's rotation + color jitter (ours batched against torchvision's transforms image by image), and one epoch of
every unlearning method (ours only). Prints a Markdown table (images/s and the ratio) and writes JSON.
"""
import argparse
import dataclasses
import os
import time

import torch
import torch.nn.functional as F
import torchvision.transforms as T

from cli import add_runtime_args, check_out, eval_batch_size, json_of_kind, pick_device, positive_int, run, write_json
from data import (Loader, add_data_args, color_jitter, draw_rotate_jitter, input_files,
                  load_dataset, rotate, split_from_args)
from evaluate import predict
from models import ARCHS, build_model, to_device
from train import TrainConfig, train_epoch
from methods import METHODS, importance_batch, importance_per_sample
from unlearn import from_the_data


class PilDataset(torch.utils.data.Dataset):
    """The reference input path: each image a PIL image through torchvision transforms."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image  # torchvision's own dependency; only the plain path needs it
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def plain_loader(data, indices, *, train_set, batch_size, augment, workers, shuffle):
    x, y = (data.train_x, data.train_y) if train_set else (data.test_x, data.test_y)
    steps = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if augment else []
    transform = T.Compose(steps + [T.ToTensor(), T.Normalize(data.mean, data.std)])
    return torch.utils.data.DataLoader(PilDataset(x[indices], y[indices], transform), batch_size=batch_size,
                                       shuffle=shuffle, num_workers=workers, persistent_workers=False)


def plain_train_epoch(model, loader, optimizer, device):
    model.train()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()  # the habit of logging every step: a host sync


@torch.no_grad()
def plain_evaluate(model, loader, device):
    model.eval()
    correct = 0
    for x, y in loader:
        correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
    return correct


def plain_importance(model, loader, device):
    """SSD's official pass: .grad of each batch, squared, accumulated per parameter."""
    model.eval()
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for x, y in loader:
        model.zero_grad()
        F.cross_entropy(model(x.to(device)), y.to(device)).backward()
        for n, p in model.named_parameters():
            total[n] += p.grad.detach() ** 2
    return total


def timed(fn, device):
    """Seconds of one call, with the device synchronised before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def measure(name, n, ours, plain, device):
    """One row: images/s of both paths (each run once to warm up, then timed) and their ratio."""
    ours(), plain()
    t_ours, t_plain = timed(ours, device), timed(plain, device)
    row = {"measure": name, "images": n, "ours_images_per_s": n / t_ours, "plain_images_per_s": n / t_plain,
           "speedup": t_plain / t_ours}
    print(f"| {name} | {n} | {row['ours_images_per_s']:.0f} | {row['plain_images_per_s']:.0f} | {row['speedup']:.2f}x |",
          flush=True)
    return row


def plain_rotate_jitter(images):
    """The ensemble recipe's augmentation as torchvision applies it: each image through the v2 transforms."""
    from torchvision.transforms import v2
    transform = v2.Compose([v2.RandomRotation(10), v2.ColorJitter(0.2, 0.2, 0.2, 0.1)])
    return torch.stack([transform(image) for image in images])


def ours_rotate_jitter(images, generator):
    angles, order, factors = draw_rotate_jitter(len(images), generator, images.device)
    return color_jitter(rotate(images, angles), order, factors)


# the sets one epoch of a method passes over (SSD: D = retain + forget, then the forget set); the paired methods'
# cycled forget batches are not counted
EPOCH_SETS = {"ssd": ("retain", "forget", "forget"), "ga": ("forget",), "finetune": ("retain",)}


def method_rows(model, data, retain, forget, device, amp):
    """One epoch of every method but retrain (the train epoch row) on copies of the model: images/s over the sets
    that epoch passes over (ours only: the methods have no plain counterpart here)."""
    import copy
    rows = []
    for name, (fn, config_class, _) in METHODS.items():  # methods.py's: retrain is unlearn.py's
        fields = {f.name for f in dataclasses.fields(config_class)}
        one_epoch = {k: v for k, v in {"epochs": 1, "max_epochs": 1}.items() if k in fields}
        cfg = config_class(**one_epoch, **from_the_data(config_class, data))  # our normalisation
        loaders = [Loader(data, idx, train_set=True, batch_size=getattr(cfg, key, 128), device=device,
                          shuffle=name != "ssd")
                   for idx, key in ((retain, "batch_size"), (forget, "forget_batch_size"))]
        def run_method():
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                fn(copy.deepcopy(model), *loaders, cfg, device)
        run_method()
        n = sum(len(retain if s == "retain" else forget) for s in EPOCH_SETS.get(name, ("retain", "forget")))
        seconds = timed(run_method, device)
        rows.append({"measure": f"unlearn: {name}, 1 epoch", "images": n, "ours_images_per_s": n / seconds,
                     "plain_images_per_s": None, "speedup": None})
        print(f"| unlearn: {name}, 1 epoch | {n} | {n / seconds:.0f} | - | - |", flush=True)
    return rows


def parse_args(argv=None):
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="resnet18", choices=list(ARCHS), help="architecture (default: resnet18)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="DataLoader workers of the plain path (default: min(8, cores))")
    parser.add_argument("--per-sample", type=positive_int, default=256,
                        help="images for the per-sample importance rows (the plain one is a loop) (default: 256)")
    parser.add_argument("--out", default="runs/bench.json", help="JSON results (default: runs/bench.json)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out that bench.py did not "
                        "write (default: refuse)")
    add_runtime_args(parser, seed=None)  # our path's precision; the plain path is always fp32
    add_data_args(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    check_out(args.out, "--out", input_files(args), json_of_kind("bench"), args.overwrite)
    data = load_dataset(args.dataset, args.data_dir)
    split = split_from_args(args, data)
    device, amp = pick_device(args.device, args.precision)
    torch.manual_seed(0)
    model = to_device(build_model(args.arch, len(data.classes)), device)
    plain_model = build_model(args.arch, len(data.classes)).to(device)  # the plain path: default memory order
    cfg = TrainConfig()
    optimizer, plain_optimizer = cfg.optimizer(model)[0], cfg.optimizer(plain_model)[0]
    n_train, n_test, few = len(split.retain), len(split.test), split.retain[:args.per_sample]
    print(f"{args.arch} on {data.name}, {device}\n\n| Measure | Images | Ours (img/s) | Plain (img/s) | Speed-up |\n|---|---|---|---|---|")
    ours_train = Loader(data, split.retain, train_set=True, batch_size=cfg.batch_size, device=device, shuffle=True,
                        augment="crop-flip")
    ours_test = Loader(data, split.test, train_set=False, batch_size=eval_batch_size(device), device=device)
    plain_train = plain_loader(data, split.retain, train_set=True, batch_size=cfg.batch_size, augment=True,
                               workers=args.workers, shuffle=True)
    plain_test = plain_loader(data, split.test, train_set=False, batch_size=cfg.batch_size, augment=False,
                              workers=args.workers, shuffle=False)
    rows = [
        measure("train epoch", n_train, lambda: train_epoch(model, ours_train, optimizer, amp=amp),
                lambda: plain_train_epoch(plain_model, plain_train, plain_optimizer, device), device),
        measure("evaluate test set", n_test, lambda: predict(model, ours_test, amp),
                lambda: plain_evaluate(plain_model, plain_test, device), device),
        measure("SSD importance (batch 64)", n_train,
                lambda: importance_batch(model.eval(), Loader(data, split.retain, train_set=True, batch_size=64,
                                                              device=device)),
                lambda: plain_importance(plain_model, plain_loader(
                    data, split.retain, train_set=True, batch_size=64, augment=False, workers=args.workers,
                    shuffle=False), device), device),
        measure("SSD importance (per-sample)", len(few),
                lambda: importance_per_sample(model.eval(), Loader(data, few, train_set=True, batch_size=64,
                                                                   device=device)),
                lambda: plain_importance(plain_model, plain_loader(
                    data, few, train_set=True, batch_size=1, augment=False, workers=0, shuffle=False), device), device),
    ]
    images = ours_test.images[:args.per_sample].float() / 255  # the recipe augments [0, 1] images before resizing
    generator = torch.Generator(device=device).manual_seed(0)
    rows.append(measure("ensemble rotation + jitter (32 px)", len(images),
                        lambda: ours_rotate_jitter(images, generator), lambda: plain_rotate_jitter(images), device))
    retain, forget = split.retain, split.forget
    if not len(forget):  # no forget set given: the methods forget class 0
        zero = data.train_y[retain] == 0
        retain, forget = retain[~zero], retain[zero]
    rows += method_rows(model, data, retain, forget, device, amp)
    write_json(args.out, {"kind": "bench", "arch": args.arch, "dataset": data.name, "device": str(device),
                          "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                          "precision": "bf16" if amp else "fp32", "workers": args.workers, "torch": torch.__version__,
                          "rows": rows, "config": dataclasses.asdict(cfg)})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    run(main)
