"""Every unlearning method of this project in one file that imports torch and the standard library
only: copy it into your own code and call a method on any model and any loaders of (images, labels).

    import methods
    cfg, cuda = methods.SSDConfig(), torch.device("cuda")
    model = methods.unlearn_ssd(model, retain_loader, forget_loader, cfg, cuda)

Every method is a function unlearn_<name>(model, retain_loader, forget_loader, cfg, device) -> model
with a frozen config dataclass of published defaults (the paper's symbols; the official file each
default comes from), chosen from the literal METHODS dict. A method moves each batch to `device`,
needs no particular last layer, and computes no metric. Its config also says which loaders its
official code builds (cfg.loaders(): batch sizes, shuffled or not, augmented like training or not,
the order of an unshuffled pass): build yours the same way, because the result depends on it (SSD's
importances on class-grouped batches select other weights than on shuffled ones).
Every pass a method makes over a loader must yield a batch: an empty set, drop_last with fewer
images than a batch, or a one-shot generator read a second time is one ValueError naming the
loader (finetune, ct and l1-sparse never read the forget loader, so it is not checked there).
Pass loaders that can be iterated again.
Retraining, which needs the training recipe, is unlearn.py's.
"""
import contextlib
import copy
import itertools
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap


def hp(default, help, **extra):
    """A config field: its default and help (the paper's symbol, published value, source)."""
    # extra, for code that builds flags or checks values: choices; flag (its name; None: no flag);
    # minimum (ints: 1 or 0); interval (floats: the values allowed, as "[0, 1)")
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class Loaders:
    """The retain and forget loaders a method's official code builds."""
    retain_batch: int
    forget_batch: int
    shuffle: bool = True  # shuffled every pass
    augment: bool = False  # augmented like training: RandomCrop(32, 4) + flip
    order: str = "index"  # of an unshuffled pass: "official" (SSD's scripts: the retain set
    # class by class for a class, one random permutation otherwise) or "index"


class Shuffled:
    """Methods whose official loaders shuffle every pass."""

    def loaders(self):  # the forget set at its own batch size where the method has one
        forget_batch = getattr(self, "forget_batch_size", self.batch_size)
        return Loaders(self.batch_size, forget_batch, shuffle=True, augment=self.augment)


class ReadOnce:
    """Methods whose official code reads both sets once, in order, and shuffles what it builds."""

    def loaders(self):
        return Loaders(self.batch_size, self.batch_size, shuffle=False, augment=self.augment)


# ------------------------------------------------------------------ configs (published defaults)

CROP_FLIP = "augment like training: RandomCrop(32, 4) + flip"


@dataclass(frozen=True)
class SSDConfig:
    """Selective Synaptic Dampening (Foster et al., 2024): the official src/ssd.py."""
    # as src/forget_full_class_main.py (class-wise) and src/forget_random_main.py drive it;
    # lambda, alpha: the card
    lam: float = hp(1.0, "lambda, dampening constant: weights scaled by min(lambda I_D / I_f, 1)",
                    flag="--lambda")
    alpha: float = hp(10.0, "alpha, selection weighting: dampen where I_f > alpha I_D")
    full_set: str = hp("retain+forget", "D of I_D: retain+forget, the whole train set (the "
                       "official scripts' full_train_dl); retain, the retain set alone",
                       choices=("retain+forget", "retain"))
    batch_size: int = hp(64, "batch size of the I_D pass, the scripts' -b: 64 class-wise "
                         "(forget_full_class_main.py); 128 is set for random or given forget "
                         "sets (forget_random_main.py's -b default)")
    forget_batch_size: int = hp(64, "batch size of the I_f pass: 64 class-wise "
                                "(forget_full_class_main.py); 128 is set for random or given "
                                "forget sets (forget_random_main.py)")
    order: str = hp("official", "order of the unshuffled passes: official = the retain set class "
                    "by class (class-wise), or one seeded permutation of the train set (random); "
                    "index = dataset order", choices=("official", "index"))
    importance: str = hp("batch", "batch: squared gradient of each batch-mean loss, averaged over "
                         "batches (official); per-sample: mean of per-example squared gradients",
                         choices=("batch", "per-sample"))
    augment: bool = hp(False, "shuffle and augment the loaders (the official pass does neither)")

    def loaders(self):
        """Unshuffled, unaugmented passes in the official order (or shuffled and augmented)."""
        return Loaders(self.batch_size, self.forget_batch_size, shuffle=self.augment,
                       augment=self.augment, order=self.order)

    @staticmethod
    def scenario_defaults(classwise):
        """forget_random_main.py: DataLoader(forget_train, 128); full_train_dl at its -b, 128."""
        return {} if classwise else {"batch_size": 128, "forget_batch_size": 128}


@dataclass(frozen=True)
class AdvNegGradConfig(Shuffled):
    """AdvNegGrad (model card): alpha * (-CE on forget) + (1 - alpha) * CE on retain."""
    alpha: float = hp(0.15, "alpha, weight of the gradient-ascent (forget) term; (1 - alpha) "
                      "weights the retain term", interval="[0, 1]")
    clip: float = hp(0.5, "max global norm of the combined gradient")
    lr: float = hp(0.1, "SGD learning rate eta")
    momentum: float = hp(0.9, "SGD momentum")
    weight_decay: float = hp(5e-4, "weight decay")
    nesterov: bool = hp(True, "Nesterov momentum")
    epochs: int = hp(1, "passes over the retain set (the forget loader cycles)")
    batch_size: int = hp(2500, "batch size of both loaders")
    augment: bool = hp(True, f"{CROP_FLIP} (the loaders shuffle either way)")


@dataclass(frozen=True)
class NegGradPlusConfig(Shuffled):
    """NegGrad+ (Kurmanji et al., 2023): SCRUB's small_scale_unlearning.ipynb negative_grad."""
    # alpha (CE on retain + l2/2 ||theta - theta_0||^2) - (1 - alpha) CE on forget; plain SGD, eval
    alpha: float = hp(0.95, "alpha, weight of the retain (descent) term; (1 - alpha) weights the "
                      "forget term", interval="[0, 1]")
    l2: float = hp(0.1, "weight of the pull l2/2 ||theta - theta_0||^2 toward the original "
                   "weights, inside the retain term (the notebook's args.weight_decay)")
    lr: float = hp(0.01, "SGD learning rate")
    momentum: float = hp(0.0, "SGD momentum (the notebook: none)")
    weight_decay: float = hp(0.0, "SGD weight decay (the notebook: none; the pull above replaces "
                             "it)")
    nesterov: bool = hp(False, "Nesterov momentum")
    train_mode: bool = hp(False, "BatchNorm in train mode, as loops.py train_negrad (the notebook "
                          "runs in eval mode)")
    epochs: int = hp(10, "passes over the retain set")
    batch_size: int = hp(128, "batch size of the retain loader (args.batch_size)")
    forget_batch_size: int = hp(64, "batch size of the forget loader (args.forget_bs)")
    augment: bool = hp(False, "augment like training (the notebook's loaders shuffle but do not "
                       "augment)")


@dataclass(frozen=True)
class FinetuneConfig(Shuffled):
    """Fine-tuning on the retain set (the CIFAR-100 report's setting)."""
    epochs: int = hp(20, "epochs = cosine T_max")
    lr: float = hp(0.1, "initial SGD learning rate")
    momentum: float = hp(0.9, "SGD momentum")
    weight_decay: float = hp(5e-4, "weight decay")
    nesterov: bool = hp(False, "Nesterov momentum (the report does not use it)")
    batch_size: int = hp(128, "batch size")
    augment: bool = hp(True, f"{CROP_FLIP} (the loaders shuffle either way)")


@dataclass(frozen=True)
class GAConfig(Shuffled):
    """Gradient ascent on the forget set (Unlearn-Sparse / SalUn baseline settings)."""
    lr: float = hp(1e-4, "SGD learning rate")
    momentum: float = hp(0.9, "SGD momentum")
    weight_decay: float = hp(5e-4, "weight decay")
    nesterov: bool = hp(False, "Nesterov momentum")
    epochs: int = hp(5, "passes over the forget set")
    batch_size: int = hp(256, "batch size")
    augment: bool = hp(True, f"{CROP_FLIP} (the loaders shuffle either way)")


@dataclass(frozen=True)
class RLConfig(Shuffled):
    """Random labels, SalUn's RL baseline (Classification/unlearn/RL.py, its CIFAR-10 branch)."""
    # each epoch: the forget set, labels drawn uniformly from all classes, then the retain set
    lr: float = hp(0.013, "SGD learning rate (--unlearn_lr)")
    momentum: float = hp(0.9, "SGD momentum")
    weight_decay: float = hp(5e-4, "weight decay")
    nesterov: bool = hp(False, "Nesterov momentum")
    epochs: int = hp(10, "epochs, each a forget pass then a retain pass (--unlearn_epochs)")
    batch_size: int = hp(256, "batch size of both loaders")
    augment: bool = hp(True, f"{CROP_FLIP}, as RL.py's loaders (which shuffle)")


@dataclass(frozen=True)
class SalUnConfig(Shuffled):
    """SalUn (Fan et al., 2024): RL on the most salient weights (generate_mask.py, RL.py)."""
    mask_ratio: float = hp(0.5, "fraction of weights kept trainable: the largest |grad of forget "
                           "loss| (with_0.5.pt)", interval="(0, 1]")
    lr: float = hp(0.013, "SGD learning rate (--unlearn_lr)")
    momentum: float = hp(0.9, "SGD momentum")
    weight_decay: float = hp(5e-4, "weight decay")
    nesterov: bool = hp(False, "Nesterov momentum")
    epochs: int = hp(10, "epochs, each a forget pass then a retain pass (--unlearn_epochs)")
    batch_size: int = hp(256, "batch size of both loaders (and of the mask's pass)")
    augment: bool = hp(True, f"{CROP_FLIP}, as RL.py's loaders (which shuffle)")


@dataclass(frozen=True)
class SCRUBConfig(Shuffled):
    """SCRUB (Kurmanji et al., 2023): the official large_scale_unlearning.ipynb run."""
    # teacher = the frozen original; max-steps on the forget set, then min-steps on the retain set
    alpha: float = hp(0.001, "alpha, weight of KL(teacher||student) in the min-step")
    gamma: float = hp(0.99, "gamma, weight of the cross-entropy in the min-step")
    temperature: float = hp(4.0, "T, distillation temperature (kd_T)")
    max_epochs: int = hp(2, "epochs that start with a max-step pass over the forget set (msteps)",
                         minimum=0)
    epochs: int = hp(3, "epochs of min-steps over the retain set (sgda_epochs)")
    lr: float = hp(5e-4, "SGD learning rate")
    momentum: float = hp(0.9, "SGD momentum")
    weight_decay: float = hp(5e-4, "weight decay")
    nesterov: bool = hp(False, "Nesterov momentum")
    batch_size: int = hp(256, "batch size of the retain loader (min-steps)")
    forget_batch_size: int = hp(512, "batch size of the forget loader (max-steps)")
    augment: bool = hp(False, "augment like training (the notebook's loaders shuffle but do not "
                       "augment)")


@dataclass(frozen=True)
class LFSSDConfig(SSDConfig):
    """Loss-free SSD (Foster et al., 2024, arXiv 2402.19308): the SSD repository's README diff."""
    # SSD with the importance of the batch mean of the squared l2 norm of the logits, accumulated as
    # |gradient|: no labels needed
    importance: str = hp("label-free", "the README diff's importance: |grad of mean ||logits||^2| "
                         "per batch, averaged over batches", choices=("label-free",))


@dataclass(frozen=True)
class CTConfig(Shuffled):
    """Convolution Transpose (NeurIPS 2023 competition): deepunlearn's kgltop5.py."""
    # xcadet/deepunlearn munl/unlearning/kgltop5.py: every convolution kernel transposed, then
    # fine-tuning on the retain set; the forget set is never read
    lr: float = hp(1e-3, "SGD learning rate (ORIGINAL_LR)")
    momentum: float = hp(0.9, "SGD momentum")
    weight_decay: float = hp(5e-4, "weight decay (on every parameter)")
    nesterov: bool = hp(False, "Nesterov momentum")
    epochs: int = hp(3, "epochs = cosine T_max, stepped per epoch (ORIGINAL_NUM_EPOCHS)")
    batch_size: int = hp(64, "batch size (ORIGINAL_BATCH_SIZE)")
    augment: bool = hp(False, "augment like training (the pipeline's loaders do not)")


@dataclass(frozen=True)
class MSGConfig(Shuffled):
    """Masked Small Gradients (NeurIPS 2023 competition): deepunlearn's kgltop2.py."""
    # xcadet/deepunlearn munl/unlearning/kgltop2.py: the gradient of CE on a retain sample as large
    # as the forget set minus CE on the forget set; in each convolution the init_rate of weights
    # with the smallest |gradient| drawn again (Kaiming normal, fan_out), then fine-tuning on the
    # retain set with their gradients x1 and the other convolution weights' x kept_scale
    init_rate: float = hp(0.3, "fraction of each convolution's weights drawn again: the smallest "
                          "|gradient|", interval="[0, 1]")
    kept_scale: float = hp(0.1, "gradient scale of the convolution weights kept (Masker's 0.1)",
                           interval="[0, 1]")
    lr: float = hp(1e-3, "peak SGD learning rate of the linear warm-up and decay, per epoch "
                   "(ORIGINAL_LR)")
    momentum: float = hp(0.9, "SGD momentum")
    weight_decay: float = hp(5e-4, "weight decay (not scaled by the gradient mask)")
    nesterov: bool = hp(False, "Nesterov momentum")
    epochs: int = hp(5, "epochs (ORIGINAL_NUM_EPOCHS)")
    batch_size: int = hp(64, "batch size of both loaders and of the gradient pass's retain sample")
    augment: bool = hp(False, "augment like training (the pipeline's loaders do not)")


@dataclass(frozen=True)
class BadTeacherConfig(ReadOnce):
    """Bad Teacher (Chundawat et al., 2023): bad-teaching-unlearning unlearn.py, SSD's copy."""
    # vikram2000b/bad-teaching-unlearning unlearn.py: the student (the model) distilled from the
    # original on a random retain sample and from an untrained model of the same architecture on
    # the forget set, KL(teacher || student) at temperature T
    temperature: float = hp(1.0, "T, KL_temperature")
    retain_fraction: float = hp(0.3, "fraction of the retain set drawn once, uniformly "
                                "(random.sample); both the original and the SSD copy use 0.3",
                                interval="(0, 1]")
    lr: float = hp(1e-4, "Adam learning rate")
    epochs: int = hp(1, "epochs over the forget set and the retain sample, shuffled together")
    batch_size: int = hp(256, "batch size (b_s)")
    augment: bool = hp(False, "augment like training (their loaders do not)")


@dataclass(frozen=True)
class UNSIRConfig(ReadOnce):
    """UNSIR (Tarun et al., 2023): SSD's forget_full_class_strategies.py UNSIR + unlearn.py."""
    # error-maximising noise for the forget class, an impair epoch on copies of it and a retain
    # sample, a repair epoch on the retain sample. The notebook
    # (vikram2000b/Fast-Machine-Unlearning) differs: see docs/METHODS.md
    noise_batch: int = hp(32, "noise images learnt (noise_batch_size)")
    noise_steps: int = hp(25, "Adam steps of the noise (num_epochs of UNSIR_noise_train)")
    noise_lr: float = hp(0.1, "Adam learning rate of the noise")
    noise_lambda: float = hp(0.1, "weight of the mean squared l2 norm of the noise images in its "
                             "loss")
    noise_label: str = hp("forget", "the label of the noise copies in the impair set: the forget "
                          "class (SSD), or 0 for every class (the notebook's class_num = 0; its "
                          "noise is learnt against the forget class in both)",
                          choices=("forget", "zero"))
    noise_copies: int = hp(80, "copies of the noise in the impair set; the official loop keeps its "
                           "first 3 images only (range(batch[0].size(0)): the channels), 3 x 80 = "
                           "240")
    keep_noise_grads: bool = hp(True, "the model's gradients from the noise steps are not cleared, "
                                "and join the first impair step (SSD's code; the notebook clears "
                                "them)")
    retain_per_class: int = hp(500, "the first N retain images of each kept class (num_samples)")
    impair_lr: float = hp(1e-4, "Adam learning rate of the impair epoch")
    impair_batch: int = hp(32, "batch size of the impair epoch (noise + retain sample, shuffled)")
    repair_lr: float = hp(1e-4, "Adam learning rate of the repair epoch")
    repair_batch: int = hp(128, "batch size of the repair epoch (retain sample, shuffled)")
    batch_size: int = hp(256, "batch size at which the retain and forget sets are read (no effect "
                         "on the result)")
    augment: bool = hp(False, "augment like training (their sets are transformed once, without)")


@dataclass(frozen=True)
class AmnesiacConfig(ReadOnce):
    """Amnesiac unlearning (Graves et al., 2021): SSD's forget_full_class_strategies.py amnesiac."""
    # each forget image relabelled once to a random other class, mixed with the whole retain set,
    # Adam. Unlike rl (SalUn's RL.py): other classes only, drawn once, one shuffled loader, Adam
    # without a schedule
    lr: float = hp(1e-4, "Adam learning rate")
    epochs: int = hp(3, "epochs (fit_one_unlearning_cycle(3, ...))")
    batch_size: int = hp(128, "batch size of the mixed loader")
    augment: bool = hp(False, "augment like training (their sets are transformed once, without)")


@dataclass(frozen=True)
class L1SparseConfig(Shuffled):
    """l1-sparse unlearning (Jia et al., 2023): Unlearn-Sparse's unlearn/FT.py FT_l1."""
    # fine-tuning on the retain set with alpha_t ||theta||_1 added, alpha_t = alpha (1 - t / epochs)
    alpha: float = hp(5e-4, "alpha, weight of the summed l1 norm of every parameter at the first "
                      "epoch (the paper tuned it; 5e-4: its co-authors' port, "
                      "cisco-open/modelsmith)")
    lr: float = hp(0.01, "SGD learning rate, constant (--unlearn_lr; the milestones 91, 136 never "
                   "come)")
    momentum: float = hp(0.9, "SGD momentum")
    weight_decay: float = hp(5e-4, "weight decay (besides the l1 term)")
    nesterov: bool = hp(False, "Nesterov momentum")
    epochs: int = hp(10, "epochs (--unlearn_epochs)")
    batch_size: int = hp(256, "batch size")
    augment: bool = hp(True, f"{CROP_FLIP}, as its loaders")


@dataclass(frozen=True)
class BoundaryConfig(Shuffled):
    """Boundary shrink / expand (Chen et al., 2023): SalUn's boundary_sh.py, boundary_ex.py."""
    # OPTML-Group/Unlearn-Saliency Classification/unlearn/: training on the forget set only
    lr: float = hp(1e-5, "SGD learning rate (not fixed by SalUn's code; 1e-5: the original "
                   "authors')")
    momentum: float = hp(0.9, "SGD momentum")
    weight_decay: float = hp(5e-4, "weight decay")
    nesterov: bool = hp(False, "Nesterov momentum")
    epochs: int = hp(10, "epochs over the forget set (--unlearn_epochs)")
    batch_size: int = hp(256, "batch size of the forget loader")
    augment: bool = hp(True, f"{CROP_FLIP}, as SalUn's loaders")


@dataclass(frozen=True)
class BoundaryShrinkConfig(BoundaryConfig):
    """Boundary shrink: forget images relabelled by the original's prediction at an FGSM point."""
    bound: float = hp(0.1, "FGSM step and L-inf bound in [0, 1] pixel units (hard-coded 0.1)")
    mean: tuple = hp(None, "per-channel mean the loaders' images were normalised with; None: they "
                     "are [0, 1] pixels", flag=None)
    std: tuple = hp(None, "per-channel std the loaders' images were normalised with; None: pixels",
                    flag=None)

    def __post_init__(self):
        if (self.mean is None) != (self.std is None):
            raise ValueError("BoundaryShrinkConfig: give mean and std together, or neither "
                             "(pixels)")
        if self.std is not None and not all(s > 0 for s in self.std):
            raise ValueError(f"BoundaryShrinkConfig: std {self.std} must be positive in every "
                             f"channel")


@dataclass(frozen=True)
class BoundaryExpandConfig(BoundaryConfig):
    """Boundary expand: a shadow output unit trained to take the forget set, then removed."""


# ----------------------------------------------------------------------------- shared pieces

class OnDevice:
    """A loader's batches moved to `device` as they come; len() and passes as the loader's."""
    # a pass without a batch is a ValueError naming the loader (`role`): a method would otherwise
    # loop for ever (a cycled loader), change nothing, or fail unpacking; batches already there: a
    # no-op

    def __init__(self, loader, device, role):
        self.loader, self.device, self.role = loader, device, role

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        empty = True
        for x, y in self.loader:
            empty = False
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if empty:
            raise ValueError(no_batch(self.role))


def on_device(retain_loader, forget_loader, device):
    """Both loaders as OnDevice, each named in the error of a pass without a batch."""
    return OnDevice(retain_loader, device, "retain"), OnDevice(forget_loader, device, "forget")


def no_batch(role):
    """The one error of a loader pass without a batch, with its three usual causes."""
    return (f"the {role} loader yielded no batch: an empty {role} set, drop_last with fewer "
            f"images than a batch, or a one-shot iterator (a generator) already used up; give "
            f"a loader that yields a batch on every pass, such as a DataLoader")


def sgd(model, cfg):
    fused = True if next(model.parameters()).is_cuda else None  # one kernel per update on CUDA
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay, nesterov=cfg.nesterov, fused=fused)


def adam(params, lr):
    """Adam with PyTorch's defaults, fused: the same update up to rounding."""
    # fused: its step counts stay on the device (the plain one reads each on the host every step)
    return torch.optim.Adam(params, lr=lr, fused=True)


def step(optimizer, loss, clip=0.0):
    """One update; clip > 0 caps the global norm of the whole gradient first."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip > 0:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()


# Three ways the official loops pair and repeat their loaders; they differ only in what the forget
# loader does when it runs out, which changes the batches seen: each as its method's official code
def passes(loader, epochs):
    """The batches of `epochs` passes over `loader`, one after the other (GA.py's epochs)."""
    for _ in range(epochs):
        yield from loader


def cycle(loader):
    """The loader's batches forever, a fresh pass each time round (AdvNegGrad)."""
    # new order and augmentation each pass
    while True:
        yield from loader


def paired(retain_loader, forget_loader, epochs):
    """Per epoch, each retain batch beside the next of itertools.cycle(forget_loader)."""
    # restarted every epoch: the forget loader's first pass of the epoch, replayed (SCRUB's loops:
    # zip(data_loader, cycle(forget_loader)))
    for _ in range(epochs):
        yield from zip(retain_loader, itertools.cycle(forget_loader))


def rebatch(loaders, batch_size):
    """The batches a DataLoader over ConcatDataset(loaders' sets) gives."""
    left_x, left_y = None, None  # examples read but not yet in a batch, in order
    for x, y in itertools.chain(*loaders):
        left_x = x if left_x is None else torch.cat([left_x, x])
        left_y = y if left_y is None else torch.cat([left_y, y])
        while len(left_y) >= batch_size:
            yield left_x[:batch_size], left_y[:batch_size]
            left_x, left_y = left_x[batch_size:], left_y[batch_size:]
    if left_y is not None and len(left_y):  # the last, smaller batch
        yield left_x, left_y


def class_count(model, x):
    """How many classes the model predicts, from one image's logits in eval mode."""
    # eval mode changes nothing and draws no random number; no assumption on the last layer's name
    training = model.training
    model.eval()
    with torch.no_grad():
        count = model(x[:1]).shape[-1]
    model.train(training)
    return count


def set_ieee_fp32(ieee):
    """CUDA's fp32 convolutions and matmuls in IEEE fp32 (ieee) or TF32; returns the previous."""
    # TF32: a 10-bit mantissa, cuDNN's default for convolutions; a CPU ignores these flags; the
    # previous settings are for restore_fp32. torch >= 2.9 has two APIs, and both are set: the
    # legacy flags first (they write the new one's values too), then each op's own (over an "all" a
    # user set). Every getter of either then reads the same answer: the new API alone leaves the
    # legacy getters raising "a mix of the legacy and new APIs" (aten/src/ATen/Context.cpp:
    # allowTF32CuDNN, allowTF32CuBLAS, float32MatmulPrecision), which max-autotune, torch.export or
    # a user's library may read
    if not new_fp32_api():  # torch before 2.9: the legacy flags are the only ones
        backends = torch.backends
        previous = ("legacy", backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = not ieee
        return previous
    previous = ("api", per_op_fp32(), legacy_tf32())
    torch.backends.cudnn.allow_tf32 = not ieee  # conv and rnn: tf32, or none (defers to "all")
    torch.backends.cuda.matmul.allow_tf32 = not ieee  # the matmul precision: high or highest
    precision = "ieee" if ieee else "tf32"
    torch.backends.cudnn.conv.fp32_precision = precision
    torch.backends.cudnn.rnn.fp32_precision = precision  # as conv: cudnn.allow_tf32 reads both
    torch.backends.cuda.matmul.fp32_precision = precision
    return previous


def new_fp32_api():
    cudnn = torch.backends.cudnn
    return hasattr(cudnn, "conv") and hasattr(cudnn.conv, "fp32_precision")


def fp32_settings():
    """The new API's per-op settings that set_ieee_fp32 and restore_fp32 write."""
    # mkldnn's matmul: torch.set_float32_matmul_precision writes it
    b = torch.backends
    mkldnn = [b.mkldnn.matmul] if hasattr(b.mkldnn, "matmul") else []
    return [b.cudnn.conv, b.cudnn.rnn, b.cuda.matmul] + mkldnn


def per_op_fp32():
    return [op.fp32_precision for op in fp32_settings()]  # as set: "none" defers to "all"


def legacy_tf32():
    """(cudnn.allow_tf32, the matmul precision), or None where their getters raise."""
    # they raise after a mix of the two APIs made before
    try:
        return torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    except RuntimeError:
        return None


def restore_fp32(previous):
    kind, *values = previous
    if kind == "legacy":
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = values
        return
    per_op, legacy = values
    if legacy is not None:
        torch.backends.cudnn.allow_tf32 = legacy[0]
        torch.set_float32_matmul_precision(legacy[1])  # writes two matmuls' own: set back below
    for op, precision in zip(fp32_settings(), per_op):
        op.fp32_precision = precision


@contextlib.contextmanager
def ieee_fp32():
    """Inside: IEEE fp32 convolutions and matmuls on CUDA; the settings restored after."""
    previous = set_ieee_fp32(True)
    try:
        yield
    finally:
        restore_fp32(previous)


# ----------------------------------------------------------------------------- SSD

def importance_batch(model, loader):
    """Official SSD: mean over mini-batches of the squared gradient of the batch-mean CE."""
    params = [p for _, p in model.named_parameters()]
    total, batches = [torch.zeros_like(p) for p in params], 0
    for x, y in loader:
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
        total, batches = [t + g.square() for t, g in zip(total, grads)], batches + 1
    return {name: t / batches for (name, _), t in zip(model.named_parameters(), total)}


def importance_per_sample(model, loader):
    """Mean over examples of the squared per-example gradient (torch.func)."""
    # independent of batching and order
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
    """Where I_f > alpha * I_D, the weight times min(lambda * I_D / I_f, 1): it only shrinks."""
    for name, p in model.named_parameters():
        i_d, i_f = full_importance[name], forget_importance[name]
        selected = i_f > alpha * i_d  # where, not a boolean index: its size reads a GPU back
        p.copy_(torch.where(selected, p * (lam * i_d / i_f).clamp(max=1), p))


def importance_label_free(model, loader):
    """LFSSD: mean over mini-batches of |grad of the batch mean of ||logits||_2^2|."""
    # labels unused
    params = [p for _, p in model.named_parameters()]
    total, batches = [torch.zeros_like(p) for p in params], 0
    for x, _ in loader:
        grads = torch.autograd.grad(torch.norm(model(x), p="fro", dim=1).pow(2).mean(), params)
        total, batches = [t + g.abs() for t, g in zip(total, grads)], batches + 1
    return {name: t / batches for (name, _), t in zip(model.named_parameters(), total)}


IMPORTANCE = {"batch": importance_batch, "per-sample": importance_per_sample,
              "label-free": importance_label_free}


def unlearn_ssd(model, retain_loader, forget_loader, cfg, device):
    """SSD: I_f over the forget set, I_D over D, both unshuffled, then dampen."""
    # D: retain then forget, or the retain set alone; the loaders' order (cfg.loaders()) decides
    # which weights are selected. The importances are squared gradients, ratios of which select
    # weights: always IEEE fp32, even under bf16 autocast
    retain_loader, forget_loader = on_device(retain_loader, forget_loader, device)
    model.eval()
    importance = IMPORTANCE[cfg.importance]
    whole = cfg.full_set == "retain+forget"
    full_set = [retain_loader, forget_loader] if whole else [retain_loader]
    with torch.autocast(device.type, enabled=False), ieee_fp32():  # IEEE fp32 on CUDA too, not TF32
        forget_importance = importance(model, forget_loader)
        full_importance = importance(model, rebatch(full_set, cfg.batch_size))
    dampen(model, full_importance, forget_importance, cfg.lam, cfg.alpha)
    return model


# ----------------------------------------------------------------------------- gradient methods

def unlearn_advneggrad(model, retain_loader, forget_loader, cfg, device):
    """AdvNegGrad: per retain batch, (1 - alpha) CE_r - alpha CE on the next forget batch."""
    # the whole gradient clipped; the forget loader cycles, a fresh pass each time round
    retain_loader, forget_loader = on_device(retain_loader, forget_loader, device)
    optimizer = sgd(model, cfg)
    model.train()
    for (xr, yr), (xf, yf) in zip(passes(retain_loader, cfg.epochs), cycle(forget_loader)):
        retain_term, forget_term = F.cross_entropy(model(xr), yr), F.cross_entropy(model(xf), yf)
        loss = (1 - cfg.alpha) * retain_term - cfg.alpha * forget_term
        step(optimizer, loss, cfg.clip)
    return model


def unlearn_neggrad_plus(model, retain_loader, forget_loader, cfg, device):
    """NegGrad+: the notebook's run_neggrad_epoch, one step per retain batch."""
    # alpha (CE_r + l2/2 ||theta - theta_0||^2) - (1 - alpha) CE_f, theta_0 the original weights
    retain_loader, forget_loader = on_device(retain_loader, forget_loader, device)
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
    forget_loader = OnDevice(forget_loader, device, "forget")
    optimizer = sgd(model, cfg)
    model.train()
    for x, y in passes(forget_loader, cfg.epochs):
        step(optimizer, -F.cross_entropy(model(x), y))
    return model


def unlearn_finetune(model, retain_loader, forget_loader, cfg, device):
    """Fine-tuning: SGD on the retain set, cosine schedule per epoch (the starting kit's)."""
    retain_loader = OnDevice(retain_loader, device, "retain")
    optimizer = sgd(model, cfg)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    model.train()
    for _ in range(cfg.epochs):
        for x, y in retain_loader:
            step(optimizer, F.cross_entropy(model(x).float(), y))
        schedule.step()
    return model


def random_labels(model, retain_loader, forget_loader, cfg, device, keep=None):
    """RL.py's CIFAR-10 branch: per epoch the forget set relabelled at random, then the retain."""
    # labels drawn uniformly from all classes (torch.randint(0, num_classes): sometimes the true
    # one), one step per batch. keep = (mask, original weights): after every step, weights outside
    # the mask are put back exactly (SalUn)
    retain_loader, forget_loader = on_device(retain_loader, forget_loader, device)
    optimizer = sgd(model, cfg)
    model.train()
    for _ in range(cfg.epochs):
        for x, y in itertools.chain(relabel(forget_loader, model), retain_loader):
            step(optimizer, F.cross_entropy(model(x), y))
            if keep:
                restore_outside_mask(model, *keep)
    return model


def relabel(loader, model):
    """The loader's batches, each label drawn uniformly from the model's classes."""
    # drawn on the labels' device: no host sync; the class count read once, from the first batch
    classes = None
    for x, y in loader:
        classes = classes or class_count(model, x)
        yield x, torch.randint(0, classes, y.shape, device=y.device)


def unlearn_rl(model, retain_loader, forget_loader, cfg, device):
    return random_labels(model, retain_loader, forget_loader, cfg, device)


def saliency_mask(model, forget_loader, ratio):
    """True for the `ratio` largest |gradient of the forget loss| (one global threshold)."""
    model.eval()
    params = [p for _, p in model.named_parameters()]
    total = [torch.zeros_like(p) for p in params]
    for x, y in forget_loader:
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
        total = [t + g for t, g in zip(total, grads)]
    flat = torch.cat([t.abs().flatten() for t in total])
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[flat.topk(mask_size(ratio, flat.numel())).indices] = True
    masks = keep.split([p.numel() for p in params])
    return {name: m.view_as(p) for (name, p), m in zip(model.named_parameters(), masks)}


def mask_size(ratio, n):
    """How many of n weights a mask ratio keeps trainable: at least one, else an error."""
    # a mask of no weight would change nothing
    if int(ratio * n) == 0:
        raise ValueError(f"mask_ratio {ratio:g} of {n:,} weights keeps none trainable; give at "
                         f"least {1 / n:.2g}")
    return int(ratio * n)


@torch.no_grad()
def restore_outside_mask(model, mask, original):
    for name, p in model.named_parameters():
        p.copy_(torch.where(mask[name], p, original[name]))


def unlearn_salun(model, retain_loader, forget_loader, cfg, device):
    """SalUn: the saliency mask from the forget set's first pass, then RL inside it."""
    # the weights outside the mask kept
    mask = saliency_mask(model, OnDevice(forget_loader, device, "forget"), cfg.mask_ratio)
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    return random_labels(model, retain_loader, forget_loader, cfg, device, keep=(mask, original))


def distill_kl(student_logits, teacher_logits, temperature):
    """KL(teacher || student) of the softened outputs x T^2, batch mean (SCRUB's DistillKL)."""
    student = F.log_softmax(student_logits / temperature, 1)
    teacher = F.softmax(teacher_logits / temperature, 1)
    return F.kl_div(student, teacher, reduction="batchmean") * temperature ** 2


def scrub_pass(model, teacher, loader, optimizer, cfg, maximize):
    """SCRUB's max-step (ascend the divergence) or min-step (gamma CE + alpha divergence) pass."""
    for x, y in loader:
        logits = model(x)
        with torch.no_grad():
            target = teacher(x)
        divergence = distill_kl(logits, target, cfg.temperature)
        if maximize:
            loss = -divergence
        else:
            loss = cfg.gamma * F.cross_entropy(logits, y) + cfg.alpha * divergence
        step(optimizer, loss)


def unlearn_scrub(model, retain_loader, forget_loader, cfg, device):
    """SCRUB: per epoch a max-step pass on the forget set (the first max_epochs), then min."""
    retain_loader, forget_loader = on_device(retain_loader, forget_loader, device)
    teacher = copy.deepcopy(model).eval()
    optimizer = sgd(model, cfg)
    model.train()
    for epoch in range(cfg.epochs):
        if epoch < cfg.max_epochs:
            scrub_pass(model, teacher, forget_loader, optimizer, cfg, maximize=True)
        scrub_pass(model, teacher, retain_loader, optimizer, cfg, maximize=False)
    return model


# ------------------------------------------------------------------ the competition's winners

def unlearn_ct(model, retain_loader, forget_loader, cfg, device):
    """CT: every Conv2d kernel transposed, then SGD on the retain set (kgltop5.py)."""
    # weight.swapaxes(2, 3); the cosine schedule stepped per epoch, train mode; the forget set is
    # never read. A frozen convolution is refused before any change (kgltop5.py's new nn.Parameter
    # would unfreeze it; see docs/CHOICES.md)
    retain_loader = OnDevice(retain_loader, device, "retain")
    convolutions = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    frozen = [n for n, m in convolutions if not m.weight.requires_grad]
    if frozen:
        raise ValueError(f"ct transposes every convolution and retrains it, but {len(frozen)} of "
                         f"{len(convolutions)} are frozen (the first: {frozen[0]}); unfreeze them "
                         f"(requires_grad_(True)), as kgltop5.py's new Parameters would, or use "
                         f"another method")
    with torch.no_grad():
        for _, m in convolutions:
            m.weight.copy_(m.weight.transpose(2, 3).clone())
    optimizer = sgd(model, cfg)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    model.train()
    for _ in range(cfg.epochs):
        for x, y in retain_loader:
            step(optimizer, F.cross_entropy(model(x), y))
        schedule.step()
    return model.eval()  # kgltop5.py's last step: net.eval()


def first_images(loader, n):
    """The first n (images, labels) of a pass, as batches (the last one cut)."""
    # of a shuffled loader: a uniformly random sample of n
    for x, y in loader:
        if n <= 0:
            return
        yield x[:n], y[:n]
        n -= len(y)


def saliency_gradients(model, retain_sample, forget_loader):
    """MSG's get_grads_for_snip: CE on the retain sample, -CE on the forget set, into .grad."""
    # the model's current mode (train: BN statistics move), one zero_grad, then a backward per
    # batch: the gradients accumulate
    model.zero_grad()
    for x, y in retain_sample:
        F.cross_entropy(model(x), y).backward()
    for x, y in forget_loader:
        (-F.cross_entropy(model(x), y)).backward()


@torch.no_grad()
def redraw_small_gradients(model, rate):
    """In each Conv2d, the round(rate * n) weights of smallest |grad| drawn again."""
    # module order; what MaskConv2d's construction draws (its default init: Kaiming uniform for the
    # weight, discarded, then the bias's uniform draw, kept, as kgltop2.py copies back the kept
    # weights only; then Kaiming normal, fan_out, relu, the whole weight), kept where the gradient
    # was large. Returns {weight: 1 where drawn again, else 0}
    redrawn = {}
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            w = m.weight
            if w.grad is None:  # kgltop2.py fails here too (AttributeError); say why
                raise ValueError(f"msg needs the gradient of every convolution, and {name} has "
                                 f"none (frozen?); unfreeze it (requires_grad_(True)) or use "
                                 f"another method")
            k = round(rate * w.numel())
            mask = torch.zeros(w.numel(), dtype=torch.bool, device=w.device)
            mask[torch.topk(-w.grad.abs().view(-1), k).indices] = True
            mask = mask.view_as(w)
            torch.nn.init.kaiming_uniform_(torch.empty_like(w), a=math.sqrt(5))  # discarded
            if m.bias is not None:  # MaskConv2d(bias=m.bias != None): a fresh bias, kept
                m.bias.copy_(default_conv_bias(m))
            fresh = torch.nn.init.kaiming_normal_(torch.empty_like(w), mode="fan_out",
                                                  nonlinearity="relu")
            w.copy_(torch.where(mask, fresh, w))
            redrawn[w] = mask
    return redrawn


def default_conv_bias(conv):
    """nn.Conv2d.reset_parameters's bias: uniform in +-1 / sqrt(fan_in); no draw if fan_in is 0."""
    fan_in = conv.weight[0].numel()  # in_channels / groups x kernel area
    if fan_in == 0:
        return torch.zeros_like(conv.bias)
    bound = 1 / math.sqrt(fan_in)
    return torch.nn.init.uniform_(torch.empty_like(conv.bias), -bound, bound)


def linear_warmup_decay(epoch, epochs):
    """deepunlearn's LinearAnnealingLR per epoch: up to 1 at (epochs + 1) // 2, then down."""
    # epoch counts from 0
    c, a, t = epoch + 1, (epochs + 1) // 2, epochs + 1
    return c / a if c <= a else (t - c) / (t - a)


def unlearn_msg(model, retain_loader, forget_loader, cfg, device):
    """MSG (kgltop2.py): small-gradient convolution weights redrawn, then masked fine-tuning."""
    # the saliency gradients in the mode the model comes in (train, as the pipeline hands it over),
    # the smallest init_rate of each convolution drawn again (its bias, if any, drawn afresh), then
    # SGD on the retain set, train mode, the lr rising linearly to cfg.lr and back per epoch,
    # convolution gradients scaled 1 (drawn again) or kept_scale (kept); eval mode at the end
    retain_loader = OnDevice(retain_loader, device, "retain")
    forget_batches = list(OnDevice(forget_loader, device, "forget"))  # one pass: size, gradients
    model.train()
    retain_sample = first_images(retain_loader, sum(len(y) for _, y in forget_batches))
    saliency_gradients(model, retain_sample, forget_batches)
    redrawn = redraw_small_gradients(model, cfg.init_rate)
    hooks = []
    for w, m in redrawn.items():  # Masker: gradient x mask (float32, as kgltop2's) before decay
        scale = (m.float() + (~m).float() * cfg.kept_scale).to(w.dtype)
        hooks.append(w.register_hook(lambda g, scale=scale: g * scale))
    optimizer = sgd(model, cfg)
    warmup_decay = lambda e: linear_warmup_decay(e, cfg.epochs)  # noqa: E731
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_decay)
    model.train()
    for _ in range(cfg.epochs):
        for x, y in retain_loader:
            step(optimizer, F.cross_entropy(model(x), y))
        schedule.step()
    for hook in hooks:  # the reference returns its masking modules; ours leaves plain convolutions
        hook.remove()
    return model.eval()  # kgltop2.py's last step: net.eval()


# ------------------------------------------------------------------ the SSD paper's baselines

def collect(loader):
    """Every (image, label) of one pass, as two tensors."""
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def shuffled_batches(x, y, batch_size, *extra):
    """One pass over (x, y, extra...) in a random order (a DataLoader's shuffle)."""
    # the order from torch's global generator
    order = torch.randperm(len(y)).to(y.device)
    for start in range(0, len(y), batch_size):
        idx = order[start:start + batch_size]
        yield (x[idx], y[idx], *(e[idx] for e in extra))


def fresh_copy(model):
    """A model of the same architecture, untrained: the incompetent teacher."""
    # the SSD repository builds a fresh ResNet18, which has no init of its own: PyTorch's default
    # init of every module. Every module's own reset, children first as a constructor runs them
    # (reset_parameters; MultiheadAttention's _reset_parameters), BatchNorm statistics reset; then
    # each parameter that no module reset (a bare nn.Parameter: a position embedding, a learnt
    # scale) drawn from N(0, 0.02^2), in named_parameters order. Other buffers are kept: constants
    # that a fresh build has too (docs/CHOICES.md)
    fresh = copy.deepcopy(model)
    reset = set()
    for m in post_order(fresh):
        for name in ("reset_parameters", "reset_running_stats"):
            if hasattr(m, name):
                getattr(m, name)()
        if isinstance(m, torch.nn.MultiheadAttention):  # its own init, after out_proj's, as built
            m._reset_parameters()
        if hasattr(m, "reset_parameters") or isinstance(m, torch.nn.MultiheadAttention):
            reset.update(id(p) for p in m.parameters(recurse=False))
    with torch.no_grad():
        for p in fresh.parameters():
            if id(p) not in reset:
                torch.nn.init.normal_(p, std=0.02)  # as ViT position embeddings (torchvision)
    return fresh


def post_order(module, seen=None):
    """The module and its submodules, each once and after its children."""
    # the order a constructor finishes them; the leaves in modules()'s order
    seen = set() if seen is None else seen
    for child in module.children():
        if id(child) not in seen:
            yield from post_order(child, seen)
    seen.add(id(module))
    yield module


def unlearner_loss(output, labels, full_teacher_logits, unlearn_teacher_logits, temperature):
    """Bad Teacher's UnlearnerLoss: KL(teacher || student) at T, per example its teacher."""
    # the teacher: the incompetent one (label 1: forget) or the trained one (0: retain); F.kl_div's
    # default reduction, 'mean': divided by batch x classes
    labels = labels.unsqueeze(1)
    teacher = labels * F.softmax(unlearn_teacher_logits / temperature, 1) + \
        (1 - labels) * F.softmax(full_teacher_logits / temperature, 1)
    kl = F.kl_div(F.log_softmax(output / temperature, 1), teacher, reduction="sum")
    return kl / teacher.numel()  # kl_div's "mean" spelt out: torch plans "mean" = "batchmean"


def unlearn_bad_teacher(model, retain_loader, forget_loader, cfg, device):
    """Bad Teacher: the student distilled from two teachers on forget + retain sample."""
    # the incompetent teacher drawn first (torch's generator), then the retain sample
    # (random.sample: here the first int(fraction x n) of a torch.randperm), the forget set and the
    # sample shuffled together, 1 = forget; Adam on the student (train mode), both teachers in eval
    # mode
    retain_x, retain_y = collect(OnDevice(retain_loader, device, "retain"))
    forget_x, _ = collect(OnDevice(forget_loader, device, "forget"))
    full_teacher, bad_teacher = copy.deepcopy(model).eval(), fresh_copy(model).eval()
    kept = int(cfg.retain_fraction * len(retain_y))
    sample = torch.randperm(len(retain_y))[:kept].to(retain_x.device)
    x = torch.cat([forget_x, retain_x[sample]])
    is_forget = torch.cat([torch.ones(len(forget_x)), torch.zeros(len(sample))]).long().to(x.device)
    optimizer = adam(model.parameters(), cfg.lr)
    model.train()
    for _ in range(cfg.epochs):
        for xb, labels in shuffled_batches(x, is_forget, cfg.batch_size):
            with torch.no_grad():
                full, bad = full_teacher(xb), bad_teacher(xb)
            loss = unlearner_loss(model(xb), labels, full, bad, cfg.temperature)
            step(optimizer, loss)
    return model


def first_per_class(x, y, n, skip):
    """The first n images of every class but `skip`, in class order."""
    # get_classwise_ds + [:num_samples]; one host read (how many)
    order = torch.argsort(y, stable=True)  # class by class, dataset order within each
    sorted_y = y[order]
    first = torch.searchsorted(sorted_y, sorted_y)  # where each one's class starts
    rank = torch.arange(len(y), device=y.device) - first  # its place in its class
    idx = order[torch.nonzero((rank < n) & (sorted_y != skip)).flatten()]
    return x[idx], y[idx]


def adam_epoch(model, batches, lr, zero_first):
    """fit_one_unlearning_cycle's epoch: Adam, train mode, CE; backward, step, zero_grad."""
    # gradients left on the model before it join the first step unless zero_first
    optimizer = adam(model.parameters(), lr)
    model.train()
    if zero_first:
        optimizer.zero_grad(set_to_none=True)
    for x, y in batches:
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def unlearn_unsir(model, retain_loader, forget_loader, cfg, device):
    """UNSIR, the SSD repository's run: noise, an impair epoch, a repair epoch."""
    # the noise learnt against the model (train mode) for the forget class, the impair epoch on
    # noise_copies copies of its first 3 images and the retain sample, the repair epoch on the
    # sample
    retain_x, retain_y = collect(OnDevice(retain_loader, device, "retain"))
    forget_x, forget_y = collect(OnDevice(forget_loader, device, "forget"))
    # UNSIR is class-wise; for a random or given forget set (never run by the reference) the noise
    # takes the forget set's most frequent label and the retain sample keeps every other class
    forget_class = int(torch.mode(forget_y).values)
    all_x, all_y = torch.cat([retain_x, forget_x]), torch.cat([retain_y, forget_y])
    sample_x, sample_y = first_per_class(all_x, all_y, cfg.retain_per_class, forget_class)
    drawn = torch.randn(cfg.noise_batch, *retain_x.shape[1:], dtype=retain_x.dtype)  # on the CPU,
    noise = torch.nn.Parameter(drawn.to(retain_x.device))  # as UNSIR_noise
    label = torch.full((cfg.noise_batch,), forget_class, device=noise.device)  # learnt against
    copies_class = forget_class if cfg.noise_label == "forget" else 0  # the notebook's: 0
    noise_optimizer = adam([noise], cfg.noise_lr)
    model.train()
    for _ in range(cfg.noise_steps):
        norm = torch.mean(torch.sum(noise ** 2, [1, 2, 3]))
        loss = -F.cross_entropy(model(noise), label) + cfg.noise_lambda * norm
        noise_optimizer.zero_grad()
        loss.backward()  # the model's .grad fill too: kept for the first impair step when asked
        noise_optimizer.step()
    copies = noise.detach()[:3].repeat(cfg.noise_copies, 1, 1, 1)  # 3 a copy: the official bug
    impair_x = torch.cat([copies, sample_x])
    copies_y = torch.full((len(copies),), copies_class, device=sample_y.device)
    impair_y = torch.cat([copies_y, sample_y])
    adam_epoch(model, shuffled_batches(impair_x, impair_y, cfg.impair_batch), cfg.impair_lr,
               zero_first=not cfg.keep_noise_grads)
    repair = shuffled_batches(sample_x, sample_y, cfg.repair_batch)
    adam_epoch(model, repair, cfg.repair_lr, zero_first=True)
    return model


def unlearn_amnesiac(model, retain_loader, forget_loader, cfg, device):
    """Amnesiac: each forget image relabelled once to another class, with the retain set."""
    # uniformly (random.choice over the others: here torch.randint over C - 1, shifted past the true
    # class), the whole retain set beside them, one shuffled loader, Adam, train mode
    retain_x, retain_y = collect(OnDevice(retain_loader, device, "retain"))
    forget_x, forget_y = collect(OnDevice(forget_loader, device, "forget"))
    classes = class_count(model, retain_x)
    other = torch.randint(0, classes - 1, forget_y.shape).to(forget_y.device)
    relabelled = other + (other >= forget_y).long()  # uniform over the classes but the true one
    x, y = torch.cat([forget_x, retain_x]), torch.cat([relabelled, retain_y])
    optimizer = adam(model.parameters(), cfg.lr)
    model.train()
    for _ in range(cfg.epochs):
        for xb, yb in shuffled_batches(x, y, cfg.batch_size):
            optimizer.zero_grad(set_to_none=True)  # no gradient left before: the order is free
            F.cross_entropy(model(xb), yb).backward()
            optimizer.step()
    return model


# ----------------------------------------------------------------------------- SalUn's table

def l1_norm(model):
    """||theta||_1 over every parameter, as Unlearn-Sparse's l1_regularization."""
    # linalg.norm of all of them, ord 1
    return torch.linalg.norm(torch.cat([p.view(-1) for p in model.parameters()]), ord=1)


def unlearn_l1_sparse(model, retain_loader, forget_loader, cfg, device):
    """FT_l1: per epoch t, SGD on the retain set, CE + alpha (1 - t / epochs) ||theta||_1."""
    # train mode
    retain_loader = OnDevice(retain_loader, device, "retain")
    optimizer = sgd(model, cfg)
    model.train()
    for epoch in range(cfg.epochs):
        alpha = cfg.alpha * (1 - epoch / cfg.epochs)
        for x, y in retain_loader:
            step(optimizer, F.cross_entropy(model(x), y) + alpha * l1_norm(model))
    return model


def pixel_space(cfg, x):
    """(mean, std) that map the images back to [0, 1] pixels, as x's device and dtype."""
    # cfg's normalisation, or (0, 1) when cfg gives none (the images are pixels already)
    if cfg.mean is None:
        shape = (1, x.shape[1], 1, 1)
        return torch.zeros(shape, device=x.device), torch.ones(shape, device=x.device)
    return (torch.tensor(cfg.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1),
            torch.tensor(cfg.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1))


def fgsm(model, x, y, bound, mean, std):
    """FGSM_perturb in [0, 1] pixels: one step bound * sign(grad CE), clamped, on the 8-bit grid."""
    # clamped to [0, 1], rounded to 1/255 (torch.round), and normalised again
    model.zero_grad()
    pixels = torch.round((x * std + mean) * 255) / 255  # on the 8-bit grid: +-0.1 ties, as theirs
    pixels = pixels.detach().requires_grad_(True)
    F.cross_entropy(model((pixels - mean) / std), y).backward()
    pixels = torch.round((pixels + bound * pixels.grad.sign()).clamp(0, 1) * 255) / 255
    return (pixels.detach() - mean) / std


def unlearn_boundary_shrink(model, retain_loader, forget_loader, cfg, device):
    """Boundary shrink (boundary_sh.py): forget images relabelled at FGSM points."""
    # per forget batch: the original model (a frozen copy, eval mode) attacked by FGSM, its
    # prediction on the adversarial image the label the model learns the clean image with (train
    # mode)
    forget_loader = OnDevice(forget_loader, device, "forget")
    original = copy.deepcopy(model).eval()
    optimizer = sgd(model, cfg)
    for _ in range(cfg.epochs):
        model.train()
        for x, y in forget_loader:
            _, target = shrink_labels(original, x, y, cfg)
            step(optimizer, F.cross_entropy(model(x), target))
    return model


def shrink_labels(original, x, y, cfg):
    """(FGSM points, the original model's predictions there): a forget batch's new labels."""
    mean, std = pixel_space(cfg, x)
    with torch.autocast(x.device.type, enabled=False):  # the attack's sign in fp32
        adversarial = fgsm(original, x, y, cfg.bound, mean, std)
    with torch.no_grad():
        return adversarial, original(adversarial).argmax(1)


def last_linear(model):
    """(parent module, attribute name, layer) of the model's last nn.Linear: its classifier."""
    name = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)][-1]
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    return parent, name.rpartition(".")[2], model.get_submodule(name)


def unlearn_boundary_expand(model, retain_loader, forget_loader, cfg, device):
    """Boundary expand (boundary_ex.py): a shadow class takes the forget set, then goes."""
    # the classifier widened by a shadow unit (PyTorch's default init, the old rows copied in),
    # every parameter trained on the forget set labelled as the shadow class (train mode), then the
    # shadow row removed (the original method; SalUn's port keeps it and evaluates 11 outputs)
    forget_loader = OnDevice(forget_loader, device, "forget")
    parent, name, fc = last_linear(model)
    classes = fc.out_features
    like = dict(device=fc.weight.device, dtype=fc.weight.dtype)
    wide = torch.nn.Linear(fc.in_features, classes + 1, **like)
    with torch.no_grad():
        wide.weight[:classes], wide.bias[:classes] = fc.weight, fc.bias
    setattr(parent, name, wide)
    optimizer = sgd(model, cfg)
    for _ in range(cfg.epochs):
        model.train()
        for x, y in forget_loader:
            step(optimizer, F.cross_entropy(model(x), torch.full_like(y, classes)))
    narrow = torch.nn.Linear(fc.in_features, classes, **like)
    with torch.no_grad():
        narrow.weight.copy_(wide.weight[:classes])
        narrow.bias.copy_(wide.bias[:classes])
    setattr(parent, name, narrow)
    return model


# name -> (function, config of published defaults, name in checkpoint files); unlearn.py: + retrain
# Mode returned: eval by ssd, lfssd, ct, msg, neggrad+ (not train_mode), as officially; else train
METHODS = {
    "ssd": (unlearn_ssd, SSDConfig, "SSD"),
    "advneggrad": (unlearn_advneggrad, AdvNegGradConfig, "AdvNegGrad"),
    "neggrad+": (unlearn_neggrad_plus, NegGradPlusConfig, "NegGradPlus"),
    "finetune": (unlearn_finetune, FinetuneConfig, "FineTune"),
    "ga": (unlearn_ga, GAConfig, "GA"),
    "rl": (unlearn_rl, RLConfig, "RL"),
    "salun": (unlearn_salun, SalUnConfig, "SalUn"),
    "scrub": (unlearn_scrub, SCRUBConfig, "SCRUB"),
    "lfssd": (unlearn_ssd, LFSSDConfig, "LFSSD"),
    "ct": (unlearn_ct, CTConfig, "CT"),
    "msg": (unlearn_msg, MSGConfig, "MSG"),
    "bad-teacher": (unlearn_bad_teacher, BadTeacherConfig, "BadTeacher"),
    "unsir": (unlearn_unsir, UNSIRConfig, "UNSIR"),
    "amnesiac": (unlearn_amnesiac, AmnesiacConfig, "Amnesiac"),
    "l1-sparse": (unlearn_l1_sparse, L1SparseConfig, "L1Sparse"),
    "boundary-shrink": (unlearn_boundary_shrink, BoundaryShrinkConfig, "BoundaryShrink"),
    "boundary-expand": (unlearn_boundary_expand, BoundaryExpandConfig, "BoundaryExpand"),
}
