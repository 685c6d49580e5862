"""Make a trained model forget a class or a set of samples, with the published recipes and the standard baselines.

    python unlearn.py --method ssd --model checkpoints/resnet18_cifar10_full.pth --forget-class cat
    python unlearn.py --method advneggrad --model checkpoints/resnet18_cifar10_full.pth --forget-class 3 --retrained checkpoints/resnet18_cifar10_no_cat.pth
    python unlearn.py --method ssd --help        # the method's own flags and published defaults

Every method is a function unlearn_<name>(model, retain_loader, forget_loader, cfg, device) -> model with a
frozen config dataclass of published defaults, chosen from the literal METHODS dict. Methods never compute
metrics: this script evaluates afterwards with evaluate.py (skip with --no-eval).
"""
import argparse
import copy
import dataclasses
import itertools
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from cli import OutOfGPUMemory, check_out, json_of_kind, lock, read_json, run, write_json
from data import (Loader, Progress, add_data_args, describe_split, device_name, load_dataset, non_negative_int,
                  split_from_args)
from evaluate import evaluate_model, format_table, ieee_fp32, load_evaluable, pick_device, strip_losses
from models import (build_model, check_output, infer_arch, input_size, is_remote, load_model, save_model,
                    sidecar_path, to_device)
from train import TrainConfig, add_config_args, config_from_args, fit, hp, read_manifest, train_sisa


# ----------------------------------------------------------------------------- configs (published defaults)

@dataclass(frozen=True)
class SSDConfig:
    """Selective Synaptic Dampening (Foster et al., 2024), the official src/ssd.py as its scripts drive it.
    src/forget_full_class_main.py (class-wise) and src/forget_random_main.py (otherwise); lambda, alpha: the card."""
    lam: float = hp(1.0, "lambda, dampening constant: weights scaled by min(lambda I_D / I_f, 1)", flag="--lambda")
    alpha: float = hp(10.0, "alpha, selection weighting: dampen where I_f > alpha I_D")
    full_set: str = hp("retain+forget", "D of I_D: retain+forget, the whole train set (the official scripts' "
                       "full_train_dl); retain, the retain set alone", choices=("retain+forget", "retain"))
    batch_size: int = hp(64, "batch size of the I_D pass (the scripts' -b)")
    forget_batch_size: int = hp(64, "batch size of the I_f pass: 64 class-wise (forget_full_class_main.py); 128 "
                                "is set for random or given forget sets (forget_random_main.py)")
    order: str = hp("official", "order of the unshuffled passes: official = the retain set class by class "
                    "(class-wise), or one seeded permutation of the train set (random); index = dataset order",
                    choices=("official", "index"))
    importance: str = hp("batch", "batch: squared gradient of each batch-mean loss, averaged over batches (official); "
                         "per-sample: mean of per-example squared gradients", choices=("batch", "per-sample"))
    augment: bool = hp(False, "shuffle and augment the loaders (the official pass does neither)")


@dataclass(frozen=True)
class AdvNegGradConfig:
    """AdvNegGrad (model card): loss = alpha * (-CE on forget) + (1 - alpha) * CE on retain."""
    alpha: float = hp(0.15, "alpha, weight of the gradient-ascent (forget) term; (1 - alpha) weights the retain term",
                      interval="[0, 1]")
    clip: float = hp(0.5, "max global norm of the combined gradient")
    lr: float = hp(0.1, "SGD learning rate eta")
    momentum: float = hp(0.9, "SGD momentum")
    weight_decay: float = hp(5e-4, "weight decay")
    nesterov: bool = hp(True, "Nesterov momentum")
    epochs: int = hp(1, "passes over the retain set (the forget loader cycles)")
    batch_size: int = hp(2500, "batch size of both loaders")
    augment: bool = hp(True, "augment like training: RandomCrop(32, 4) + flip (the loaders shuffle either way)")


@dataclass(frozen=True)
class NegGradPlusConfig:
    """NegGrad+ (Kurmanji et al., 2023), the official SCRUB repository's small_scale_unlearning.ipynb negative_grad.
    loss = alpha (CE on retain + l2/2 ||theta - theta_0||^2) - (1 - alpha) CE on forget; plain SGD, eval mode."""
    alpha: float = hp(0.95, "alpha, weight of the retain (descent) term; (1 - alpha) weights the forget term",
                      interval="[0, 1]")
    l2: float = hp(0.1, "weight of the pull l2/2 ||theta - theta_0||^2 toward the original weights, inside the "
                   "retain term (the notebook's args.weight_decay)")
    lr: float = hp(0.01, "SGD learning rate")
    momentum: float = hp(0.0, "SGD momentum (the notebook: none)")
    weight_decay: float = hp(0.0, "SGD weight decay (the notebook: none; the pull above replaces it)")
    nesterov: bool = hp(False, "Nesterov momentum")
    train_mode: bool = hp(False, "BatchNorm in train mode, as loops.py train_negrad (the notebook runs in eval mode)")
    epochs: int = hp(10, "passes over the retain set")
    batch_size: int = hp(128, "batch size of the retain loader (args.batch_size)")
    forget_batch_size: int = hp(64, "batch size of the forget loader (args.forget_bs)")
    augment: bool = hp(False, "augment like training (the notebook's loaders shuffle but do not augment)")


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning on the retain set (the CIFAR-100 report's setting)."""
    epochs: int = hp(20, "epochs = cosine T_max")
    lr: float = hp(0.1, "initial SGD learning rate")
    momentum: float = hp(0.9, "SGD momentum")
    weight_decay: float = hp(5e-4, "weight decay")
    nesterov: bool = hp(False, "Nesterov momentum (the report does not use it)")
    batch_size: int = hp(128, "batch size")
    augment: bool = hp(True, "augment like training: RandomCrop(32, 4) + flip (the loaders shuffle either way)")


@dataclass(frozen=True)
class RetrainConfig:
    """Retrain from a fresh initialisation on the retain set with train.py's recipe (= train.py --forget-class)."""
    epochs: int = hp(200, "epochs = cosine T_max")
    lr: float = hp(0.1, "initial SGD learning rate")
    momentum: float = hp(0.9, "SGD momentum")
    weight_decay: float = hp(5e-4, "weight decay")
    nesterov: bool = hp(True, "Nesterov momentum")
    batch_size: int = hp(128, "batch size")
    augment: bool = hp(True, "augment like training: RandomCrop(32, 4) + flip (the loaders shuffle either way)")


@dataclass(frozen=True)
class GAConfig:
    """Gradient ascent on the forget set (Unlearn-Sparse / SalUn baseline settings)."""
    lr: float = hp(1e-4, "SGD learning rate")
    momentum: float = hp(0.9, "SGD momentum")
    weight_decay: float = hp(5e-4, "weight decay")
    nesterov: bool = hp(False, "Nesterov momentum")
    epochs: int = hp(5, "passes over the forget set")
    batch_size: int = hp(256, "batch size")
    augment: bool = hp(True, "augment like training: RandomCrop(32, 4) + flip (the loaders shuffle either way)")


@dataclass(frozen=True)
class RLConfig:
    """Random labels, SalUn's RL baseline (the official Classification/unlearn/RL.py, its CIFAR-10 branch).
    Each epoch: a pass over the forget set, labels drawn uniformly from all classes, then a pass over the retain set."""
    lr: float = hp(0.013, "SGD learning rate (--unlearn_lr)")
    momentum: float = hp(0.9, "SGD momentum")
    weight_decay: float = hp(5e-4, "weight decay")
    nesterov: bool = hp(False, "Nesterov momentum")
    epochs: int = hp(10, "epochs, each a forget pass then a retain pass (--unlearn_epochs)")
    batch_size: int = hp(256, "batch size of both loaders")
    augment: bool = hp(True, "augment like training: RandomCrop(32, 4) + flip, as RL.py's loaders (which shuffle)")


@dataclass(frozen=True)
class SalUnConfig:
    """SalUn (Fan et al., 2024): RL updating only the most salient weights (generate_mask.py, then RL.py, masked)."""
    mask_ratio: float = hp(0.5, "fraction of weights kept trainable: the largest |grad of forget loss| (with_0.5.pt)",
                           interval="(0, 1]")
    lr: float = hp(0.013, "SGD learning rate (--unlearn_lr)")
    momentum: float = hp(0.9, "SGD momentum")
    weight_decay: float = hp(5e-4, "weight decay")
    nesterov: bool = hp(False, "Nesterov momentum")
    epochs: int = hp(10, "epochs, each a forget pass then a retain pass (--unlearn_epochs)")
    batch_size: int = hp(256, "batch size of both loaders (and of the mask's pass)")
    augment: bool = hp(True, "augment like training: RandomCrop(32, 4) + flip, as RL.py's loaders (which shuffle)")


@dataclass(frozen=True)
class SCRUBConfig:
    """SCRUB (Kurmanji et al., 2023), the official repository's large_scale_unlearning.ipynb run.
    Teacher = the frozen original; max-steps on the forget set, then min-steps on the retain set."""
    alpha: float = hp(0.001, "alpha, weight of KL(teacher||student) in the min-step")
    gamma: float = hp(0.99, "gamma, weight of the cross-entropy in the min-step")
    temperature: float = hp(4.0, "T, distillation temperature (kd_T)")
    max_epochs: int = hp(2, "epochs that start with a max-step pass over the forget set (msteps)", minimum=0)
    epochs: int = hp(3, "epochs of min-steps over the retain set (sgda_epochs)")
    lr: float = hp(5e-4, "SGD learning rate")
    momentum: float = hp(0.9, "SGD momentum")
    weight_decay: float = hp(5e-4, "weight decay")
    nesterov: bool = hp(False, "Nesterov momentum")
    batch_size: int = hp(256, "batch size of the retain loader (min-steps)")
    forget_batch_size: int = hp(512, "batch size of the forget loader (max-steps)")
    augment: bool = hp(False, "augment like training (the notebook's loaders shuffle but do not augment)")


# ----------------------------------------------------------------------------- shared pieces

def sgd(model, cfg):
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           nesterov=cfg.nesterov)


def step(optimizer, loss, clip=0.0):
    """One update; clip > 0 caps the global norm of the whole gradient first."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip > 0:
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], clip)
    optimizer.step()


def passes(loader, epochs):
    """The batches of `epochs` passes over `loader`, one after the other."""
    for _ in range(epochs):
        yield from loader


def cycle(loader):
    """The loader's batches forever, a fresh pass (new order and augmentation) each time round."""
    while True:
        yield from loader


def rebatch(loaders, batch_size):
    """The batches a DataLoader over ConcatDataset(loaders' sets) gives: their examples in order, regrouped."""
    xs, ys = [], []
    for x, y in itertools.chain(*loaders):
        xs, ys = [torch.cat(xs + [x])], [torch.cat(ys + [y])]
        while len(ys[0]) >= batch_size:
            yield xs[0][:batch_size], ys[0][:batch_size]
            xs, ys = [xs[0][batch_size:]], [ys[0][batch_size:]]
    if ys and len(ys[0]):
        yield xs[0], ys[0]


def train_config(cfg):
    """train.py's recipe object for the methods that run it (finetune, retrain)."""
    return TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, momentum=cfg.momentum,
                       weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)


# ----------------------------------------------------------------------------- SSD

def importance_batch(model, loader):
    """Official SSD: sum over mini-batches of the squared gradient of the batch-mean cross-entropy, / #batches."""
    params = [p for _, p in model.named_parameters()]
    total, batches = [torch.zeros_like(p) for p in params], 0
    for x, y in loader:
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
        total, batches = [t + g.square() for t, g in zip(total, grads)], batches + 1
    return {name: t / batches for (name, _), t in zip(model.named_parameters(), total)}


def importance_per_sample(model, loader):
    """Mean over examples of the squared per-example gradient (torch.func): independent of batching and order."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def loss(params, x, y):
        return F.cross_entropy(functional_call(model, (params, buffers), (x[None],)), y[None])
    per_example = vmap(grad(loss), in_dims=(None, 0, 0))
    total, count = {n: torch.zeros_like(p) for n, p in params.items()}, 0
    for x, y in loader:
        grads = per_example(params, x, y)
        total, count = {n: total[n] + grads[n].square().sum(0) for n in total}, count + len(y)
    return {n: t / count for n, t in total.items()}


@torch.no_grad()
def dampen(model, full_importance, forget_importance, lam, alpha):
    """Where I_f > alpha * I_D, multiply the weight by min(lambda * I_D / I_f, 1): weights only ever shrink."""
    for name, p in model.named_parameters():
        i_d, i_f = full_importance[name], forget_importance[name]
        selected = i_f > alpha * i_d  # where, not a boolean index: its size would be read back from a GPU
        p.copy_(torch.where(selected, p * (lam * i_d / i_f).clamp(max=1), p))


IMPORTANCE = {"batch": importance_batch, "per-sample": importance_per_sample}


def unlearn_ssd(model, retain_loader, forget_loader, cfg, device):
    """I_f over the forget set, I_D over D (retain then forget, or the retain set alone), both unshuffled in the
    loaders' order, then dampen. The importances are squared gradients, ratios of which select weights: always
    IEEE fp32, even under --precision bf16."""
    model.eval()
    importance = IMPORTANCE[cfg.importance]
    full_set = [retain_loader, forget_loader] if cfg.full_set == "retain+forget" else [retain_loader]
    with torch.autocast(device.type, enabled=False), ieee_fp32():  # IEEE fp32 on CUDA too, not TF32
        forget_importance = importance(model, forget_loader)
        full_importance = importance(model, rebatch(full_set, cfg.batch_size))
    dampen(model, full_importance, forget_importance, cfg.lam, cfg.alpha)
    return model


def ssd_order(data, split):
    """(retain, forget) train indices in the order the official SSD scripts pass them, unshuffled. Class-wise
    (forget_full_class_strategies.py: get_classwise_ds + build_retain_forget_sets): the retain set class by class,
    each class in dataset order, so that a batch of 64 holds one class; the forget class in dataset order. Otherwise
    (forget_random_main.py: random_split): both in the order of one seeded permutation of the train set, the one
    whose first part --forget-fraction takes as the forget set."""
    if split.forget_class is not None:
        return split.retain[np.argsort(data.train_y[split.retain], kind="stable")], split.forget
    order = np.random.default_rng(split.forget_seed).permutation(split.train)
    return order[np.isin(order, split.retain)], order[np.isin(order, split.forget)]


# ----------------------------------------------------------------------------- gradient methods

def unlearn_advneggrad(model, retain_loader, forget_loader, cfg, device):
    """One step per retain batch on (1 - alpha) CE on retain - alpha CE on the next forget batch, the whole gradient
    clipped; the forget loader cycles, a fresh pass each time round."""
    optimizer = sgd(model, cfg)
    model.train()
    for (xr, yr), (xf, yf) in zip(passes(retain_loader, cfg.epochs), cycle(forget_loader)):
        loss = (1 - cfg.alpha) * F.cross_entropy(model(xr), yr) - cfg.alpha * F.cross_entropy(model(xf), yf)
        step(optimizer, loss, cfg.clip)
    return model


def paired(retain_loader, forget_loader, epochs):
    """Per epoch, each retain batch beside the next batch of itertools.cycle(forget_loader), restarted every epoch:
    the forget loader's first pass of the epoch, replayed (SCRUB's loops: zip(data_loader, cycle(forget_loader)))."""
    for _ in range(epochs):
        yield from zip(retain_loader, itertools.cycle(forget_loader))


def unlearn_neggrad_plus(model, retain_loader, forget_loader, cfg, device):
    """The notebook's run_neggrad_epoch: one step per retain batch on
    alpha (CE_r + l2/2 ||theta - theta_0||^2) - (1 - alpha) CE_f, theta_0 the original weights."""
    original = [p.detach().clone() for p in model.parameters()]
    optimizer = sgd(model, cfg)
    model.train(cfg.train_mode)
    for (xr, yr), (xf, yf) in paired(retain_loader, forget_loader, cfg.epochs):
        pull = sum((p - p0).square().sum() for p, p0 in zip(model.parameters(), original))
        retain_term = F.cross_entropy(model(xr), yr) + cfg.l2 / 2 * pull
        step(optimizer, cfg.alpha * retain_term - (1 - cfg.alpha) * F.cross_entropy(model(xf), yf))
    return model


def unlearn_ga(model, retain_loader, forget_loader, cfg, device):
    optimizer = sgd(model, cfg)
    model.train()
    for x, y in passes(forget_loader, cfg.epochs):
        step(optimizer, -F.cross_entropy(model(x), y))
    return model


def unlearn_finetune(model, retain_loader, forget_loader, cfg, device):
    fit(model, retain_loader, None, train_config(cfg))
    return model


def unlearn_retrain(model, retain_loader, forget_loader, cfg, device):
    """A fresh model of the same architecture (every module re-initialised from the seeded RNG, as train.py does;
    an ImageNet architecture starts again from the ImageNet weights)."""
    model = to_device(build_model(*infer_arch(model.state_dict()), pretrained=True), device)
    fit(model, retain_loader, None, train_config(cfg))
    return model


def random_labels(model, retain_loader, forget_loader, cfg, keep=None):
    """RL.py's CIFAR-10 branch, every epoch: a pass over the forget set with each label drawn uniformly from all
    classes (torch.randint(0, num_classes): sometimes the true one), then a pass over the retain set, one step per
    batch. keep = (mask, original weights): after every step, weights outside the mask are put back exactly (SalUn)."""
    optimizer = sgd(model, cfg)
    model.train()
    for _ in range(cfg.epochs):
        for x, y in itertools.chain(relabel(forget_loader, model.fc.out_features), retain_loader):
            step(optimizer, F.cross_entropy(model(x), y))
            if keep:
                restore_outside_mask(model, *keep)
    return model


def relabel(loader, num_classes):
    """The loader's batches, each label drawn uniformly from all classes (on the labels' device: no host sync)."""
    for x, y in loader:
        yield x, torch.randint(0, num_classes, y.shape, device=y.device)


def unlearn_rl(model, retain_loader, forget_loader, cfg, device):
    return random_labels(model, retain_loader, forget_loader, cfg)


def saliency_mask(model, forget_loader, ratio):
    """True for the `ratio` largest |gradient of the forget loss| over all parameters (one global threshold)."""
    model.eval()
    params = [p for _, p in model.named_parameters()]
    total = [torch.zeros_like(p) for p in params]
    for x, y in forget_loader:
        total = [t + g for t, g in zip(total, torch.autograd.grad(F.cross_entropy(model(x), y), params))]
    flat = torch.cat([t.abs().flatten() for t in total])
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[flat.topk(mask_size(ratio, flat.numel())).indices] = True
    return {name: m.view_as(p) for (name, p), m in zip(model.named_parameters(), keep.split([p.numel() for p in params]))}


def mask_size(ratio, n):
    """How many of n weights a mask ratio keeps trainable: at least one, or the run would change nothing."""
    if int(ratio * n) == 0:
        raise ValueError(f"--mask-ratio {ratio:g} of {n:,} weights keeps none trainable; give at least {1 / n:.2g}")
    return int(ratio * n)


@torch.no_grad()
def restore_outside_mask(model, mask, original):
    for name, p in model.named_parameters():
        p.copy_(torch.where(mask[name], p, original[name]))


def unlearn_salun(model, retain_loader, forget_loader, cfg, device):
    mask = saliency_mask(model, forget_loader, cfg.mask_ratio)
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    return random_labels(model, retain_loader, forget_loader, cfg, keep=(mask, original))


def distill_kl(student_logits, teacher_logits, temperature):
    """KL(teacher || student) of the softened outputs, times T^2, mean over the batch (SCRUB's DistillKL)."""
    return F.kl_div(F.log_softmax(student_logits / temperature, 1), F.softmax(teacher_logits / temperature, 1),
                    reduction="batchmean") * temperature ** 2


def scrub_pass(model, teacher, loader, optimizer, cfg, maximize):
    """max-step: ascend the divergence on the forget set; min-step: gamma CE + alpha divergence on the retain set."""
    for x, y in loader:
        logits = model(x)
        with torch.no_grad():
            target = teacher(x)
        divergence = distill_kl(logits, target, cfg.temperature)
        loss = -divergence if maximize else cfg.gamma * F.cross_entropy(logits, y) + cfg.alpha * divergence
        step(optimizer, loss)


def unlearn_scrub(model, retain_loader, forget_loader, cfg, device):
    teacher = copy.deepcopy(model).eval()
    optimizer = sgd(model, cfg)
    model.train()
    for epoch in range(cfg.epochs):
        if epoch < cfg.max_epochs:
            scrub_pass(model, teacher, forget_loader, optimizer, cfg, maximize=True)
        scrub_pass(model, teacher, retain_loader, optimizer, cfg, maximize=False)
    return model


# name -> (function, config with the published defaults, name used in checkpoint files)
METHODS = {
    "ssd": (unlearn_ssd, SSDConfig, "SSD"),
    "advneggrad": (unlearn_advneggrad, AdvNegGradConfig, "AdvNegGrad"),
    "neggrad+": (unlearn_neggrad_plus, NegGradPlusConfig, "NegGradPlus"),
    "finetune": (unlearn_finetune, FinetuneConfig, "FineTune"),
    "retrain": (unlearn_retrain, RetrainConfig, "Retrain"),
    "ga": (unlearn_ga, GAConfig, "GA"),
    "rl": (unlearn_rl, RLConfig, "RL"),
    "salun": (unlearn_salun, SalUnConfig, "SalUn"),
    "scrub": (unlearn_scrub, SCRUBConfig, "SCRUB"),
}


# ----------------------------------------------------------------------------- command line

def default_out(data, arch, display, split, subset):
    """The published names: checkpoints/cifar10_resnet18_SSD_3.pth (class index), or _forget0.2_seed0 (random),
    _forget<N> (given indices); + _subsetN, _halfK."""
    if split.forget_class is not None:
        target = str(split.forget_class)
    elif split.forget_fraction is not None:
        target = f"forget{split.forget_fraction:g}_seed{split.forget_seed}"
    else:
        target = f"forget{len(split.forget)}"
    target += f"_subset{subset}" if subset else ""
    target += f"_half{split.keep_half}" if split.keep_half is not None else ""
    return os.path.join("checkpoints", f"{data.name}_{arch}_{display}_{target}.pth")


def scenario_defaults(method, known):
    """Defaults that the official code sets for random (or given) forget sets rather than a class."""
    if method == "ssd" and (known.forget_fraction or known.forget_indices):
        return {"forget_batch_size": 128}  # forget_random_main.py: DataLoader(list(forget_train), batch_size=128)
    return {}


def parse_args(argv=None):
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--method", choices=list(METHODS) + ["sisa"])
    first.add_argument("--forget-fraction", default=None)
    first.add_argument("--forget-indices", default=None)
    known = first.parse_known_args(argv)[0]
    method = known.method
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", required=True, choices=list(METHODS) + ["sisa"],
                        help="unlearning method; `--method X --help` lists X's flags and defaults; sisa retrains "
                        "the affected slices of a SISA model set (its settings are the manifest's)")
    parser.add_argument("--model", required=True, help="the trained checkpoint to unlearn from: a "
                        "path, an https:// URL or hf://OWNER/REPO[@REV]/FILE, downloaded once; #sha256=HEX checks it "
                        "(sisa: the manifest written by train.py --sisa)")
    parser.add_argument("--retrained", default=None, help="the retrained gold standard, evaluated beside it, "
                        "named as --model (default: none)")
    parser.add_argument("--out", default=None, help="checkpoint path (default: checkpoints/<dataset>_<arch>_<Method>_<class>.pth)")
    parser.add_argument("--overwrite", action="store_true", help="replace a finished --out made with other settings, or "
                        "run again one made with these (default: refuse / keep it)")
    parser.add_argument("--wait", action="store_true", help="when another run is writing --out, wait for it (then "
                        "nothing is left to do) instead of stopping at once: parallel make jobs (default: stop)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of batch order, augmentation, random labels (default: 0)")
    parser.add_argument("--device", type=device_name, default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation (default: evaluate)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto", help="the method's training "
                        "steps: bf16 autocast with fp32 weights, auto = bf16 on CUDA; SSD's importances and the "
                        "evaluation are always fp32 (default: auto)")
    add_data_args(parser)
    if method in METHODS:
        add_config_args(parser, METHODS[method][1], scenario_defaults(method, known))
    return parser.parse_args(argv)


def make_loaders(data, split, cfg, device, seed, size=None):
    """Retain and forget loaders as the method's official code builds them: the method's batch size for each
    (forget_batch_size where it has its own), augmented like training when cfg.augment, shuffled every pass, but
    for SSD, whose passes run unshuffled in the official order (ssd_order) unless augmented. size: the model's input
    size (224 for ImageNet models)."""
    ssd = isinstance(cfg, SSDConfig)
    retain, forget = ssd_order(data, split) if ssd and cfg.order == "official" else (split.retain, split.forget)
    shuffle, augment = cfg.augment or not ssd, "crop-flip" if cfg.augment else None
    forget_batch_size = getattr(cfg, "forget_batch_size", cfg.batch_size)
    return (Loader(data, retain, True, cfg.batch_size, device, shuffle, augment, seed, size),
            Loader(data, forget, True, forget_batch_size, device, shuffle, augment, seed + 1, size))


def run_method(fn, model, retain_loader, forget_loader, cfg, device, amp=None):
    """(model, seconds) of the method alone; a non-finite weight afterwards stops everything with a clear error.
    amp: autocast dtype (bf16) for the method's forward passes, or None; weights and optimizer state stay fp32.
    Out of GPU memory is an OutOfGPUMemory error naming what the published settings need (never a smaller batch)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    start = time.time()
    try:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            model = fn(model, retain_loader, forget_loader, cfg, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except torch.cuda.OutOfMemoryError:
        raise OutOfGPUMemory(out_of_memory(model, cfg, amp, free, input_size(model))) from None
    seconds = time.time() - start
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise ValueError("the unlearning diverged (non-finite weights); nothing was written. Lower --lr")
    return model, seconds


def step_images(cfg):
    """Images whose activations one training step of a method holds at once: AdvNegGrad and NegGrad+ run a
    retain and a forget batch forward before one backward; the others one batch (SCRUB's teacher keeps none)."""
    forget = getattr(cfg, "forget_batch_size", cfg.batch_size)
    two = isinstance(cfg, (AdvNegGradConfig, NegGradPlusConfig))
    return cfg.batch_size + forget if two else max(cfg.batch_size, forget)


def memory_need(model, cfg, amp, size=None):
    """About how many bytes of GPU memory one run of a method needs: what a step saves for backward, measured on a
    CPU copy at 1 and 3 images (the slope is per image, the rest, such as bf16 copies of the weights, per step)
    and scaled to step_images, plus the weights, their gradients and the optimizer's state (4 copies). SSD's
    passes run in fp32 whatever amp says."""
    probe = copy.deepcopy(model).float().cpu().train()
    amp = None if isinstance(cfg, SSDConfig) else amp

    def saved_bytes(n):
        saved = {}

        def pack(t):
            saved[t.data_ptr()] = t.numel() * t.element_size()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            probe(torch.zeros(n, 3, size or 32, size or 32))
        return sum(saved.values())
    one, three = saved_bytes(1), saved_bytes(3)
    per_image = (three - one) / 2
    weights = sum(p.numel() * p.element_size() for p in probe.parameters())
    return per_image * step_images(cfg) + (one - per_image) + 4 * weights


def out_of_memory(model, cfg, amp, free, size):
    need = memory_need(model, cfg, amp, size) / 2 ** 30
    had = "" if free is None else f", and {free / 2 ** 30:.1f} GB was free when it started"
    return (f"out of GPU memory: this method with its published settings (batch {cfg.batch_size}, "
            f"{step_images(cfg)} images a step) needs about {need:.1f} GB{had}. Run fewer jobs at once on this GPU "
            f"(make's JOBS, reproduce_cards.py --jobs) or use one with more memory: a smaller --batch-size would "
            f"change the published method")


def main(argv=None):
    args = parse_args(argv)
    if not is_remote(args.model) and not os.path.isfile(args.model):  # before the data: the model is the first need
        raise FileNotFoundError(f"--model {args.model} not found: train one (make train, or python train.py), or "
                                f"give a checkpoint's path or hf:// name")
    if args.forget_class is None and args.forget_fraction is None and args.forget_indices is None:
        raise ValueError("the forget set is empty: give --forget-class, --forget-fraction or --forget-indices")
    data = load_dataset(args.dataset, args.data_dir)
    split = split_from_args(args, data)
    if len(split.forget) == 0:
        raise ValueError("the forget set is empty: give --forget-class, --forget-fraction or --forget-indices")
    if args.method == "sisa":  # not a model -> model function: it retrains parts of a model set
        return main_sisa(args, data, split)
    fn, config_class, display = METHODS[args.method]
    cfg = config_from_args(config_class, args)
    model = load_model(args.model, num_classes=len(data.classes))
    if hasattr(cfg, "mask_ratio"):  # before any work: a mask of no weight would change nothing
        mask_size(cfg.mask_ratio, sum(p.numel() for p in model.parameters()))
    retrained = args.retrained and load_model(args.retrained, num_classes=len(data.classes))
    arch = infer_arch(model.state_dict())[0]
    out = args.out or default_out(data, arch, display, split, args.subset)
    source = args.model if is_remote(args.model) else os.path.abspath(args.model)
    identity = {"method": args.method, "config": dataclasses.asdict(cfg), "source": source,
                "dataset": data.name, "split": describe_split(split, data.classes)["sha256"], "seed": args.seed,
                "precision": args.precision}
    if check_output(out, identity, args.overwrite, inputs=[args.model, args.retrained or ""]):
        print(f"{out} is already unlearned with these settings; nothing to do (--overwrite runs it again)")
        return
    print(f"{args.method}: {cfg}\n{len(split.forget)} forget, {len(split.retain)} retain images -> {out}", flush=True)
    with lock(out, args.wait) as waited:
        if waited and check_output(out, identity, args.overwrite, inputs=[args.model, args.retrained or ""]):
            print(f"{out} was unlearned meanwhile by the run this one waited for; nothing to do")
            return
        unlearn(args, data, split, fn, cfg, model, retrained, out, identity)


def unlearn(args, data, split, fn, cfg, model, retrained, out, identity):
    """The method, the model saved at once (with its sidecar), then the evaluation added to the sidecar."""
    device, amp = pick_device(args.device, args.precision)
    retain_loader, forget_loader = make_loaders(data, split, cfg, device, args.seed, input_size(model))
    torch.manual_seed(args.seed)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model, seconds = run_method(fn, to_device(model, device), Progress(retain_loader, "retain"),
                                Progress(forget_loader, "forget"), cfg, device, amp)
    changed = changed_weights(before, model)
    meta = {"method": args.method, "config": dataclasses.asdict(cfg), "source": args.model,
            "arch": infer_arch(model.state_dict())[0], "dataset": data.name, "classes": data.classes, "seed": args.seed,
            "split": describe_split(split, data.classes), "device": str(device), "seconds": seconds,
            "precision": "fp32" if amp is None or args.method == "ssd" else "bf16",  # SSD: IEEE fp32 passes only
            "changed_weights": changed, "weights": sum(p.numel() for p in before.values()),
            "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None,
            "metrics": None, "retrained": args.retrained, "retrained_metrics": None, "identity": identity}
    save_model(out, model, meta)
    if args.method == "ssd":
        print(ssd_summary(changed, meta["weights"], cfg))
    print(f"saved {out} ({seconds:.1f}s)", flush=True)
    if args.no_eval:
        return
    rows = [(out, {**evaluate_model(model, data, split, device, mia=True), "seconds": seconds})]
    if retrained:
        rows.insert(0, (args.retrained, evaluate_model(to_device(retrained, device), data, split, device, mia=True)))
    write_json(sidecar_path(out), {**read_json(sidecar_path(out)), "metrics": strip_losses(rows[-1][1]),
                                   "retrained_metrics": strip_losses(rows[0][1]) if retrained else None})
    print(format_table(rows, rows[0][1] if retrained else None))


def changed_weights(before, model):
    """How many parameter entries the method changed (SSD: the weights it dampened); one host read."""
    return int(sum((p.detach().cpu() != before[n]).sum() for n, p in model.named_parameters()))


def ssd_summary(changed, total, cfg):
    """SSD's one line: how many weights it dampened, and when none, why and what to try."""
    if changed:
        return f"SSD dampened {changed:,} of {total:,} weights ({changed / total:.4%})"
    return (f"SSD dampened no weight: none has a forget importance above alpha = {cfg.alpha:g} times its importance "
            f"on D ({cfg.full_set}), so the model is unchanged. With D = retain+forget (the official scripts') the "
            f"forget set is part of D and this is common; try --full-set retain or a smaller --alpha")


def main_sisa(args, data, split):
    """Each shard restarts from the checkpoint before its first slice holding a forgotten index and retrains the
    later slices without it (train_sisa's hash-named checkpoints make that automatic); untouched shards are reused."""
    manifest, cfg, sisa, slices = read_manifest(args.model)
    if manifest["split"]["n_train"] != len(split.train):
        raise ValueError(f"{args.model} was trained on {manifest['split']['n_train']} images, this split has "
                         f"{len(split.train)}: use the same --dataset / --subset")
    full = sum(sum(s["seconds"]) for s in manifest["shards"])
    folder = os.path.dirname(args.model)
    target = str(split.forget_class) if split.forget_class is not None else f"forget{len(split.forget)}"
    out = args.out or os.path.join(folder, f"{data.name}_{cfg.arch}_SISA_{target}.json")
    if not out.endswith(".json"):
        raise ValueError(f"--out {out}: a SISA manifest is a .json file")
    check_out(out, "--out", [args.model, *slices], json_of_kind("sisa-manifest"), args.overwrite)
    device, _ = pick_device(args.device, "fp32")  # the methods' own math (SSD's importances) in fp32
    start = time.time()
    new = {"recipe": manifest["recipe"], **train_sisa(data, split, cfg, sisa, folder, device)}
    seconds = time.time() - start
    for shard, info in enumerate(new["shards"]):
        print(f"shard {shard}: " + (f"retrained slices {info['trained']}" if info["trained"] else "untouched"))
    print(f"unlearning took {seconds:.1f}s; a full retrain of all shards would take about {full:.1f}s "
          f"(their original training time)")
    write_json(out, {**new, "seconds": seconds, "source": args.model})
    print(f"saved {out}")
    if not args.no_eval:
        model = to_device(load_evaluable(out, len(data.classes)), device)
        print(format_table([(out, {**evaluate_model(model, data, split, device, mia=True), "seconds": seconds})]))


if __name__ == "__main__":
    run(main, "interrupted; the model is saved as soon as the method ends (the line 'saved ...'): if it was, "
              "evaluate it with evaluate.py")
