"""Every unlearning method of this project in one file that imports torch and the standard library only: copy it
into your own code and call a method on any model and any loaders of (images, labels) batches.

    import methods
    model = methods.unlearn_ssd(model, retain_loader, forget_loader, methods.SSDConfig(), torch.device("cuda"))

Every method is a function unlearn_<name>(model, retain_loader, forget_loader, cfg, device) -> model with a frozen
config dataclass of published defaults (the paper's symbols; the official file each default comes from), chosen
from the literal METHODS dict. A method moves each batch to `device`, needs no particular last layer, and computes
no metric. Its config also says which loaders its official code builds (cfg.loaders(): batch sizes, shuffled or
not, augmented like training or not, the order of an unshuffled pass): build yours the same way, because the
result depends on it (SSD's importances on class-grouped batches select other weights than on shuffled ones).
Retraining, which needs the training recipe, is unlearn.py's.
"""
import contextlib
import copy
import itertools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap


def hp(default, help, **extra):
    """A config field whose help (the paper's symbol, the published value) shows in --help. extra: choices,
    flag (another flag name), minimum (ints: 1 positive, the default, or 0 non-negative), interval (floats: the
    values allowed, as "[0, 1)"; by default by the field's name, in cli.INTERVALS)."""
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class Loaders:
    """The retain and forget loaders a method's official code builds: batch sizes, shuffled every pass or not,
    augmented like training (RandomCrop(32, 4) + flip) or not; order of an unshuffled pass: "official" (SSD's
    scripts: the retain set class by class for a class, one random permutation otherwise) or "index"."""
    retain_batch: int
    forget_batch: int
    shuffle: bool = True
    augment: bool = False
    order: str = "index"


class Shuffled:
    """Methods whose official loaders shuffle every pass: the retain set at batch_size, the forget set at
    forget_batch_size where the method has its own, augmented as cfg.augment says."""

    def loaders(self):
        return Loaders(self.batch_size, getattr(self, "forget_batch_size", self.batch_size), shuffle=True,
                       augment=self.augment)

    def step_images(self):
        """Images whose activations one training step holds at once (for the memory a run needs)."""
        return max(self.batch_size, getattr(self, "forget_batch_size", self.batch_size))


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

    def loaders(self):
        """Unshuffled, unaugmented passes in the official order (or shuffled and augmented when asked)."""
        return Loaders(self.batch_size, self.forget_batch_size, shuffle=self.augment, augment=self.augment,
                       order=self.order)

    @staticmethod
    def scenario_defaults(classwise):
        """forget_random_main.py passes a random (or given) forget set at 128: DataLoader(forget_train, 128)."""
        return {} if classwise else {"forget_batch_size": 128}

    def step_images(self):
        return max(self.batch_size, self.forget_batch_size)


@dataclass(frozen=True)
class AdvNegGradConfig(Shuffled):
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

    def step_images(self):
        return 2 * self.batch_size  # a retain and a forget batch forward, then one backward


@dataclass(frozen=True)
class NegGradPlusConfig(Shuffled):
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

    def step_images(self):
        return self.batch_size + self.forget_batch_size  # a retain and a forget batch forward, then one backward


@dataclass(frozen=True)
class FinetuneConfig(Shuffled):
    """Fine-tuning on the retain set (the CIFAR-100 report's setting)."""
    epochs: int = hp(20, "epochs = cosine T_max")
    lr: float = hp(0.1, "initial SGD learning rate")
    momentum: float = hp(0.9, "SGD momentum")
    weight_decay: float = hp(5e-4, "weight decay")
    nesterov: bool = hp(False, "Nesterov momentum (the report does not use it)")
    batch_size: int = hp(128, "batch size")
    augment: bool = hp(True, "augment like training: RandomCrop(32, 4) + flip (the loaders shuffle either way)")


@dataclass(frozen=True)
class GAConfig(Shuffled):
    """Gradient ascent on the forget set (Unlearn-Sparse / SalUn baseline settings)."""
    lr: float = hp(1e-4, "SGD learning rate")
    momentum: float = hp(0.9, "SGD momentum")
    weight_decay: float = hp(5e-4, "weight decay")
    nesterov: bool = hp(False, "Nesterov momentum")
    epochs: int = hp(5, "passes over the forget set")
    batch_size: int = hp(256, "batch size")
    augment: bool = hp(True, "augment like training: RandomCrop(32, 4) + flip (the loaders shuffle either way)")


@dataclass(frozen=True)
class RLConfig(Shuffled):
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
class SalUnConfig(Shuffled):
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
class SCRUBConfig(Shuffled):
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

class OnDevice:
    """A loader's batches moved to `device` as they come (a no-op for batches already there); len() and every
    pass as the loader's own."""

    def __init__(self, loader, device):
        self.loader, self.device = loader, device

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def sgd(model, cfg):
    fused = True if next(model.parameters()).is_cuda else None  # one kernel per update on CUDA (rounding only)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           nesterov=cfg.nesterov, fused=fused)


def step(optimizer, loss, clip=0.0):
    """One update; clip > 0 caps the global norm of the whole gradient first."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip > 0:
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], clip)
    optimizer.step()


# Three ways the official loops pair and repeat their loaders; they differ only in what the forget loader does
# when it runs out, which changes the batches seen, so keep each as its method's official code has it:
def passes(loader, epochs):
    """The batches of `epochs` passes over `loader`, one after the other (GA.py's epochs)."""
    for _ in range(epochs):
        yield from loader


def cycle(loader):
    """The loader's batches forever, a fresh pass (new order and augmentation) each time round (AdvNegGrad)."""
    while True:
        yield from loader


def paired(retain_loader, forget_loader, epochs):
    """Per epoch, each retain batch beside the next batch of itertools.cycle(forget_loader), restarted every epoch:
    the forget loader's first pass of the epoch, replayed (SCRUB's loops: zip(data_loader, cycle(forget_loader)))."""
    for _ in range(epochs):
        yield from zip(retain_loader, itertools.cycle(forget_loader))


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


def class_count(model, x):
    """How many classes the model predicts, from one image's logits in eval mode (which changes nothing and draws
    no random number): no assumption on the name of its last layer."""
    training = model.training
    model.eval()
    with torch.no_grad():
        count = model(x[:1]).shape[-1]
    model.train(training)
    return count


def set_ieee_fp32(ieee):
    """CUDA's fp32 convolutions and matmuls: IEEE fp32 (ieee=True) or TF32 (10-bit mantissa, cuDNN's default for
    convolutions). Returns the previous settings, for restore_fp32. A CPU ignores these flags."""
    if hasattr(torch.backends.cudnn, "conv") and hasattr(torch.backends.cudnn.conv, "fp32_precision"):
        previous = ("api", torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
        torch.backends.cudnn.conv.fp32_precision = "ieee" if ieee else "tf32"
        torch.backends.cuda.matmul.fp32_precision = "ieee" if ieee else "tf32"
    else:  # torch before 2.9
        previous = ("legacy", torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = not ieee
    return previous


def restore_fp32(previous):
    kind, conv, matmul = previous
    if kind == "api":
        torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = conv, matmul
    else:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, matmul


@contextlib.contextmanager
def ieee_fp32():
    """Inside: fp32 convolutions and matmuls in IEEE fp32 on CUDA; the settings before are restored after."""
    previous = set_ieee_fp32(True)
    try:
        yield
    finally:
        restore_fp32(previous)


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
    loaders' order (cfg.loaders(): it decides which weights are selected), then dampen. The importances are
    squared gradients, ratios of which select weights: always IEEE fp32, even under bf16 autocast."""
    retain_loader, forget_loader = OnDevice(retain_loader, device), OnDevice(forget_loader, device)
    model.eval()
    importance = IMPORTANCE[cfg.importance]
    full_set = [retain_loader, forget_loader] if cfg.full_set == "retain+forget" else [retain_loader]
    with torch.autocast(device.type, enabled=False), ieee_fp32():  # IEEE fp32 on CUDA too, not TF32
        forget_importance = importance(model, forget_loader)
        full_importance = importance(model, rebatch(full_set, cfg.batch_size))
    dampen(model, full_importance, forget_importance, cfg.lam, cfg.alpha)
    return model


# ----------------------------------------------------------------------------- gradient methods

def unlearn_advneggrad(model, retain_loader, forget_loader, cfg, device):
    """One step per retain batch on (1 - alpha) CE on retain - alpha CE on the next forget batch, the whole gradient
    clipped; the forget loader cycles, a fresh pass each time round."""
    retain_loader, forget_loader = OnDevice(retain_loader, device), OnDevice(forget_loader, device)
    optimizer = sgd(model, cfg)
    model.train()
    for (xr, yr), (xf, yf) in zip(passes(retain_loader, cfg.epochs), cycle(forget_loader)):
        loss = (1 - cfg.alpha) * F.cross_entropy(model(xr), yr) - cfg.alpha * F.cross_entropy(model(xf), yf)
        step(optimizer, loss, cfg.clip)
    return model


def unlearn_neggrad_plus(model, retain_loader, forget_loader, cfg, device):
    """The notebook's run_neggrad_epoch: one step per retain batch on
    alpha (CE_r + l2/2 ||theta - theta_0||^2) - (1 - alpha) CE_f, theta_0 the original weights."""
    retain_loader, forget_loader = OnDevice(retain_loader, device), OnDevice(forget_loader, device)
    original = [p.detach().clone() for p in model.parameters()]
    optimizer = sgd(model, cfg)
    model.train(cfg.train_mode)
    for (xr, yr), (xf, yf) in paired(retain_loader, forget_loader, cfg.epochs):
        pull = sum((p - p0).square().sum() for p, p0 in zip(model.parameters(), original))
        retain_term = F.cross_entropy(model(xr), yr) + cfg.l2 / 2 * pull
        step(optimizer, cfg.alpha * retain_term - (1 - cfg.alpha) * F.cross_entropy(model(xf), yf))
    return model


def unlearn_ga(model, retain_loader, forget_loader, cfg, device):
    """Gradient ascent: one step per forget batch on -CE, `epochs` passes (GA.py)."""
    forget_loader = OnDevice(forget_loader, device)
    optimizer = sgd(model, cfg)
    model.train()
    for x, y in passes(forget_loader, cfg.epochs):
        step(optimizer, -F.cross_entropy(model(x), y))
    return model


def unlearn_finetune(model, retain_loader, forget_loader, cfg, device):
    """SGD on the retain set with the cosine schedule stepped once per epoch (the starting kit's fine-tuning)."""
    retain_loader = OnDevice(retain_loader, device)
    optimizer = sgd(model, cfg)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    model.train()
    for _ in range(cfg.epochs):
        for x, y in retain_loader:
            step(optimizer, F.cross_entropy(model(x).float(), y))
        schedule.step()
    return model


def random_labels(model, retain_loader, forget_loader, cfg, device, keep=None):
    """RL.py's CIFAR-10 branch, every epoch: a pass over the forget set with each label drawn uniformly from all
    classes (torch.randint(0, num_classes): sometimes the true one), then a pass over the retain set, one step per
    batch. keep = (mask, original weights): after every step, weights outside the mask are put back exactly (SalUn)."""
    retain_loader, forget_loader = OnDevice(retain_loader, device), OnDevice(forget_loader, device)
    optimizer = sgd(model, cfg)
    model.train()
    for _ in range(cfg.epochs):
        for x, y in itertools.chain(relabel(forget_loader, model), retain_loader):
            step(optimizer, F.cross_entropy(model(x), y))
            if keep:
                restore_outside_mask(model, *keep)
    return model


def relabel(loader, model):
    """The loader's batches, each label drawn uniformly from the model's classes (on the labels' device: no host
    sync); the class count read once, from the first batch."""
    classes = None
    for x, y in loader:
        classes = classes or class_count(model, x)
        yield x, torch.randint(0, classes, y.shape, device=y.device)


def unlearn_rl(model, retain_loader, forget_loader, cfg, device):
    return random_labels(model, retain_loader, forget_loader, cfg, device)


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
    """SalUn: the saliency mask from the forget loader's first pass, then RL with the weights outside it kept."""
    mask = saliency_mask(model, OnDevice(forget_loader, device), cfg.mask_ratio)
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    return random_labels(model, retain_loader, forget_loader, cfg, device, keep=(mask, original))


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
    """SCRUB: per epoch a max-step pass over the forget set (the first max_epochs), then a min-step pass."""
    retain_loader, forget_loader = OnDevice(retain_loader, device), OnDevice(forget_loader, device)
    teacher = copy.deepcopy(model).eval()
    optimizer = sgd(model, cfg)
    model.train()
    for epoch in range(cfg.epochs):
        if epoch < cfg.max_epochs:
            scrub_pass(model, teacher, forget_loader, optimizer, cfg, maximize=True)
        scrub_pass(model, teacher, retain_loader, optimizer, cfg, maximize=False)
    return model


# name -> (function, config with the published defaults, name used in checkpoint files); unlearn.py adds retrain
METHODS = {
    "ssd": (unlearn_ssd, SSDConfig, "SSD"),
    "advneggrad": (unlearn_advneggrad, AdvNegGradConfig, "AdvNegGrad"),
    "neggrad+": (unlearn_neggrad_plus, NegGradPlusConfig, "NegGradPlus"),
    "finetune": (unlearn_finetune, FinetuneConfig, "FineTune"),
    "ga": (unlearn_ga, GAConfig, "GA"),
    "rl": (unlearn_rl, RLConfig, "RL"),
    "salun": (unlearn_salun, SalUnConfig, "SalUn"),
    "scrub": (unlearn_scrub, SCRUBConfig, "SCRUB"),
}
