"""Make a trained model forget a class or a set of samples, with the published recipes and the standard baselines.

    python unlearn.py --method ssd --model checkpoints/resnet18_cifar10_full.pth --forget-class cat
    python unlearn.py --method advneggrad --model checkpoints/resnet18_cifar10_full.pth \
        --forget-class 3 --retrained checkpoints/resnet18_cifar10_no_cat.pth
    python unlearn.py --method ssd --help        # the method's own flags and published defaults

Every method is a function unlearn_<name>(model, retain_loader, forget_loader, cfg, device) -> model
with a frozen config dataclass of published defaults, chosen from the literal METHODS dict. Methods
never compute metrics: this script evaluates afterwards with evaluate.py (skip with --no-eval).
"""
import argparse
import copy
import dataclasses
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

import methods
from methods import Shuffled, hp

from cli import (OutOfGPUMemory, Progress, add_config_args, add_runtime_args, config_from_args,
                 flag_fields, lock, pick_device, read_json, run, sidecar_name, sidecar_path,
                 write_json)
from data import (Loader, add_data_args, common_normalization, describe_split, forget_name,
                  input_files, load_dataset, split_from_args, with_normalization)
from evaluate import beneath_outputs, evaluate_model, format_table, strip_losses
from models import (build_model, check_output, infer_arch, input_size, is_remote, load_model,
                    normalization_of, save_model, to_device)
from train import TrainConfig, fit, normalization


# ------------------------------------------------------------------- retraining (the gold standard)

@dataclass(frozen=True)
class RetrainConfig(Shuffled):
    """Retrain from a fresh initialisation on the retain set with train.py's recipe (= train.py --forget-class)."""
    epochs: int = hp(200, "epochs = cosine T_max")
    lr: float = hp(0.1, "initial SGD learning rate")
    momentum: float = hp(0.9, "SGD momentum")
    weight_decay: float = hp(5e-4, "weight decay")
    nesterov: bool = hp(True, "Nesterov momentum")
    batch_size: int = hp(128, "batch size")
    augment: bool = hp(True, "augment like training: RandomCrop(32, 4) + flip (the "
                             "loaders shuffle either way)")


def unlearn_retrain(model, retain_loader, forget_loader, cfg, device):
    """A fresh model of the same architecture (every module re-initialised from the seeded RNG,
    as train.py does; an ImageNet architecture starts again from the ImageNet weights), trained
    with train.py's recipe."""
    model = to_device(build_model(*infer_arch(model.state_dict()), pretrained=True), device)
    recipe = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                         momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                         nesterov=cfg.nesterov)
    fit(model, retain_loader, None, recipe)
    return model


# name -> (function, config with the published defaults, name used in checkpoint files):
# methods.py's, and retrain
METHODS = {**methods.METHODS, "retrain": (unlearn_retrain, RetrainConfig, "Retrain")}


def official_order(data, split):
    """(retain, forget) train indices in the order the official SSD scripts pass them, unshuffled.
    Class-wise (forget_full_class_strategies.py: get_classwise_ds + build_retain_forget_sets): the
    retain set class by class, each class in dataset order, so that a batch of 64 holds one class;
    the forget class in dataset order. Otherwise (forget_random_main.py: random_split): both in the
    order of one seeded permutation of the train set, the one whose first part --forget-fraction
    takes as the forget set."""
    if split.forget_class is not None:
        return split.retain[np.argsort(data.train_y[split.retain], kind="stable")], split.forget
    order = np.random.default_rng(split.forget_seed).permutation(split.train)
    return order[np.isin(order, split.retain)], order[np.isin(order, split.forget)]


# ----------------------------------------------------------------------------- command line

def default_out(data, arch, display, split, subset):
    """The published names: checkpoints/cifar10_resnet18_SSD_3.pth (class index), or
    _forget0.2_seed0 (random), _forget<N> (given indices); + _subsetN, _halfK."""
    target = forget_name(split, data.classes, subset, unlearned=True)
    return os.path.join("checkpoints", f"{data.name}_{arch}_{display}_{target}.pth")


def parse_args(argv=None):
    first = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    first.add_argument("--method")  # checked by the parser below
    first.add_argument("--forget-fraction", default=None)
    first.add_argument("--forget-indices", default=None)
    first.add_argument("--forget-positions", default=None)
    known = first.parse_known_args(argv)[0]
    method = known.method
    if method == "sisa":  # moved to sisa.py: an old command fails clearly
        argparse.ArgumentParser(allow_abbrev=False).error(
            "--method sisa moved to its own script: python sisa.py unlearn --model MANIFEST "
            "<the same forget and data flags> (sisa.py unlearn --help)")
    classwise = not (known.forget_fraction or known.forget_indices or known.forget_positions)
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    parser.add_argument("--method", required=True, choices=list(METHODS),
                        help="unlearning method; `--method X --help` lists X's flags and defaults "
                        "(SISA: sisa.py unlearn)")
    parser.add_argument("--model", required=True, help="the trained checkpoint to unlearn from: a "
                        "path, an https:// URL or hf://OWNER/REPO[@REV]/FILE, downloaded once; "
                        "#sha256=HEX checks it")
    parser.add_argument("--retrained", default=None,
                        help="the retrained gold standard, evaluated beside it, named as --model "
                        "(default: none)")
    parser.add_argument("--out", default=None, help="checkpoint path "
                        "(default: checkpoints/<dataset>_<arch>_<Method>_<class>.pth)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a finished --out made with other settings, or run again "
                        "one made with these (default: refuse / keep it)")
    parser.add_argument("--wait", action="store_true",
                        help="when another run is writing --out, wait for it (then nothing is left "
                        "to do) instead of stopping at once: parallel make jobs (default: stop)")
    parser.add_argument("--no-eval", action="store_true",
                        help="skip the evaluation (default: evaluate)")
    parser.add_argument("--probe", action="store_true", help="evaluate beneath the outputs too: "
                        "linear probe, CKA to the --retrained and to the --model it started from, "
                        "relearn steps (evaluate.py --probe; default: off)")
    # SSD and evaluation: fp32
    add_runtime_args(parser, seed="seed of batch order, augmentation, random labels")
    add_data_args(parser)
    if method in METHODS:
        # its official defaults for a random or given forget set, where they differ
        config_class = METHODS[method][1]
        add_config_args(parser, config_class,
                        getattr(config_class, "scenario_defaults", lambda c: {})(classwise))
    return parser.parse_args(argv)


def from_the_data(config_class, data):
    """The config fields that have no flag, from the data: our Loader's normalisation."""
    # boundary-shrink attacks in [0, 1] pixels: our Loader normalises with data.mean / data.std
    # (the dataset's, or the model's where with_normalization set them)
    flagged = {f.name for f in flag_fields(config_class)}
    values = {"mean": tuple(data.mean), "std": tuple(data.std)}
    fields = dataclasses.fields(config_class)
    return {f.name: values[f.name] for f in fields if f.name not in flagged}


def flag_values(cfg):
    """The config's values that the flags set: the config part of an output's identity."""
    # the fields from the data follow from its source model and dataset, already in the identity;
    # outputs made before those fields existed stay valid
    return {f.name: getattr(cfg, f.name) for f in flag_fields(type(cfg))}


def make_loaders(data, split, cfg, device, seed, size=None):
    """Retain and forget loaders as the method's official code builds them (cfg.loaders(): batch
    sizes, shuffled or not, augmented like training or not, SSD's official order). size: the model's
    input size (224 for ImageNet models)."""
    spec = cfg.loaders()
    retain, forget = (official_order(data, split) if spec.order == "official"
                      else (split.retain, split.forget))
    common = dict(train_set=True, device=device, shuffle=spec.shuffle,
                  augment="crop-flip" if spec.augment else None, size=size)
    return (Loader(data, retain, batch_size=spec.retain_batch, seed=seed, **common),
            Loader(data, forget, batch_size=spec.forget_batch, seed=seed + 1, **common))


def run_method(fn, model, retain_loader, forget_loader, cfg, device, amp=None):
    """(model, seconds) of the method alone; a non-finite weight afterwards stops everything with a
    clear error. amp: autocast dtype (bf16) for the method's forward passes, or None; weights and
    optimizer state stay fp32. Out of GPU memory is an OutOfGPUMemory error naming what the
    published settings need (never a smaller batch)."""
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
        raise ValueError(f"the unlearning diverged (non-finite weights); nothing was written. "
                         f"{what_moves_the_steps(cfg, 'Lower', 'raise')}")
    return model, seconds


def what_moves_the_steps(cfg, lr_verb, temperature_verb):
    """'Lower --lr', naming the flags the method has: UNSIR's three learning rates (it has no
    --lr), and a temperature where there is one (a tiny one overflows the softened outputs, a huge
    one makes them all uniform)."""
    flags = {f.name: f.metadata.get("flag", "--" + f.name.replace("_", "-"))
             for f in dataclasses.fields(cfg)}
    rates = [flag for name, flag in flags.items() if name == "lr" or name.endswith("_lr")]
    hint = f"{lr_verb} {' or '.join(rates)}"
    if "temperature" in flags:
        hint += f", or {temperature_verb} --temperature ({cfg.temperature:g})"
    return hint


# Images whose activations one step of a method holds at once (the memory planner's unit): methods
# that forward a retain and a forget batch before one backward hold both; the rest their largest.
STEP_IMAGES = {
    methods.AdvNegGradConfig: lambda cfg: 2 * cfg.batch_size,  # both loaders at batch_size
    methods.NegGradPlusConfig: lambda cfg: cfg.batch_size + cfg.forget_batch_size,
    methods.UNSIRConfig: lambda cfg: max(cfg.impair_batch, cfg.repair_batch, cfg.noise_batch),
}


def step_images(cfg):
    """Images whose activations one training step of cfg's method holds at once."""
    if type(cfg) in STEP_IMAGES:
        return STEP_IMAGES[type(cfg)](cfg)
    return max(cfg.batch_size, getattr(cfg, "forget_batch_size", cfg.batch_size))


def memory_need(model, cfg, amp, size=None):
    """About how many bytes of GPU memory one run of a method needs: what a step saves for backward,
    measured on a CPU copy at 1 and 3 images (the slope is per image, the rest, such as bf16 copies
    of the weights, per step) and scaled to step_images(cfg), plus the weights, their gradients and
    the optimizer's state (4 copies). SSD's passes run in fp32 whatever amp says."""
    probe = copy.deepcopy(model).float().cpu().train()
    amp = None if isinstance(cfg, methods.SSDConfig) else amp

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
            f"{step_images(cfg)} images a step) needs about {need:.1f} GB{had}. Run fewer jobs at "
            "once on this GPU (make's JOBS, studies/reproduce_cards.py --jobs) or use one with "
            "more memory: a smaller --batch-size would change the published method")


def main(argv=None):
    args = parse_args(argv)
    # before the data: the model is the first need
    if not is_remote(args.model) and not os.path.isfile(args.model):
        raise FileNotFoundError(f"--model {args.model} not found: train one (make train, or python "
                                "train.py), or give a checkpoint's path or hf:// name")
    if all(f is None for f in (args.forget_class, args.forget_fraction, args.forget_indices,
                               args.forget_positions)):
        raise ValueError("the forget set is empty: give --forget-class, --forget-fraction, "
                         "--forget-indices or --forget-positions")
    data = load_dataset(args.dataset, args.data_dir)
    data = with_normalization(data, common_normalization({n: normalization_of(n)
                                                          for n in (args.model, args.retrained)
                                                          if n}), args.model)
    split = split_from_args(args, data)
    if len(split.forget) == 0:
        raise ValueError("the forget set is empty: give --forget-class, "
                         "--forget-fraction or --forget-indices")
    fn, config_class, display = METHODS[args.method]
    cfg = config_from_args(config_class, args, **from_the_data(config_class, data))
    model = load_model(args.model, num_classes=len(data.classes))
    check_mask_ratio(cfg, model)
    retrained = args.retrained and load_model(args.retrained, num_classes=len(data.classes))
    arch = infer_arch(model.state_dict())[0]
    out = args.out or default_out(data, arch, display, split, args.subset)
    source = args.model if is_remote(args.model) else os.path.abspath(args.model)
    identity = {"method": args.method, "config": flag_values(cfg), "source": source,
                "dataset": data.name, "split": describe_split(split, data.classes)["sha256"],
                "seed": args.seed, "precision": args.precision}
    inputs = [args.model, args.retrained or "", *input_files(args)]  # kept, even --overwrite
    todo = left_to_do(out, identity, args, inputs)
    if todo is None:
        print(f"{out} is already unlearned with these settings; nothing to do (--overwrite runs "
              f"it again)")
        return
    if todo == "unlearn":
        print(f"{args.method}: {cfg}\n{len(split.forget)} forget, {len(split.retain)} retain "
              f"images -> {out}", flush=True)
    with lock(out, args.wait) as waited:
        if waited:
            todo = left_to_do(out, identity, args, inputs)
            if todo is None:
                print(f"{out} was unlearned meanwhile by the run this one waited for; nothing "
                      f"to do")
                return
        if todo == "evaluate":
            evaluate_stopped(args, data, split, retrained, out)
        else:
            unlearn(args, data, split, fn, cfg, model, retrained, out, identity)


def check_mask_ratio(cfg, model):
    """Before any work: a --mask-ratio that keeps no weight trainable would change nothing (SalUn's
    mask_size check, its error worded for the flag)."""
    if not hasattr(cfg, "mask_ratio"):
        return
    try:
        methods.mask_size(cfg.mask_ratio, sum(p.numel() for p in model.parameters()))
    except ValueError as e:
        raise ValueError("--mask-ratio" + str(e).removeprefix("mask_ratio")) from None


def left_to_do(out, identity, args, inputs):
    """What `out` still needs: "unlearn", "evaluate" (saved with these settings by a run stopped
    before its evaluation: killed, Ctrl-C, a full disk; and evaluation asked) or None."""
    if not check_output(out, identity, args.overwrite, inputs=inputs):
        return "unlearn"
    metrics = read_json(sidecar_path(out)).get("metrics")  # unlearn() adds them after saving
    return None if args.no_eval or isinstance(metrics, dict) else "evaluate"


def evaluate_stopped(args, data, split, retrained, out):
    """The model a stopped run saved, evaluated now: its sidecar completed, as unlearn() does."""
    print(f"{out} is unlearned with these settings but not evaluated (a run stopped after "
          f"'saved'); evaluating it", flush=True)
    device, _ = pick_device(args.device, args.precision)
    model = to_device(load_model(out, num_classes=len(data.classes)), device)
    seconds = read_json(sidecar_path(out)).get("seconds")
    evaluate_saved(args, data, split, model, retrained, out, seconds, device)


def unlearn(args, data, split, fn, cfg, model, retrained, out, identity):
    """The method, the model saved at once (with its sidecar),
    then the evaluation added to the sidecar."""
    device, amp = pick_device(args.device, args.precision)
    retain_loader, forget_loader = make_loaders(data, split, cfg, device, args.seed,
                                                input_size(model))
    torch.manual_seed(args.seed)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model, seconds = run_method(fn, to_device(model, device), Progress(retain_loader, "retain"),
                                Progress(forget_loader, "forget"), cfg, device, amp)
    changed = changed_weights(before, model)
    check_changed(changed, args.method, cfg)
    meta = {"method": args.method, "config": dataclasses.asdict(cfg), "source": args.model,
            "arch": infer_arch(model.state_dict())[0], "dataset": data.name,
            "classes": data.classes, "seed": args.seed, "normalization": normalization(data),
            "split": describe_split(split, data.classes), "device": str(device), "seconds": seconds,
            # ssd and lfssd pass in IEEE fp32 whatever --precision says
            "precision": "fp32" if amp is None or fn is methods.unlearn_ssd else "bf16",
            "changed_weights": changed, "weights": sum(p.numel() for p in before.values()),
            "peak_memory_gb": (torch.cuda.max_memory_allocated(device) / 2 ** 30
                               if device.type == "cuda" else None),
            "metrics": None, "retrained": args.retrained, "retrained_metrics": None,
            "identity": identity}
    save_model(out, model, meta)
    if isinstance(cfg, methods.SSDConfig):  # ssd, lfssd: dampening no weight is a result, said
        print(ssd_summary(changed, meta["weights"], cfg, METHODS[args.method][2]))
    print(f"saved {out} ({seconds:.1f}s)", flush=True)
    if not args.no_eval:
        evaluate_saved(args, data, split, model, retrained, out, seconds, device)


def evaluate_saved(args, data, split, model, retrained, out, seconds, device):
    """The saved model's evaluation (and the retrained model's beside it) added to its sidecar,
    then the table."""
    rows = [(out, {**evaluate_model(model, data, split, device, mia=True), "seconds": seconds})]
    if retrained:
        rows.insert(0, (args.retrained, evaluate_model(to_device(retrained, device), data, split,
                                                       device, mia=True)))
    if args.probe:  # the original read again (the method changed `model`): the reference
        original = to_device(load_model(args.model, num_classes=len(data.classes)), device)
        named = [(p, retrained if p == args.retrained else model, m) for p, m in rows]
        named.append(("original", original, evaluate_model(original, data, split, device)))
        beneath_outputs(named, data, split, device, original="original",
                        retrained=args.retrained if retrained else None)
    metrics = {"metrics": strip_losses(rows[-1][1]),
               "retrained_metrics": strip_losses(rows[0][1]) if retrained else None}
    # read where it is (an older run's x.json too), written under the one name (cli.sidecar_name)
    write_json(sidecar_name(out), {**read_json(sidecar_path(out)), **metrics})
    print(format_table(rows, rows[0][1] if retrained else None))


def check_changed(changed, method, cfg):
    """A method that trains and changed no weight ran with values that do nothing (a learning rate
    too small to move a float32 weight, a temperature that makes every soft target uniform): one
    line, nothing written. SSD and LFSSD, which may select no weight, say so and save instead."""
    if changed == 0 and not isinstance(cfg, methods.SSDConfig):
        raise ValueError(f"{method} changed no weight with these settings: the model would be "
                         f"the input's; nothing was written. "
                         f"{what_moves_the_steps(cfg, 'Raise', 'lower')}")


def changed_weights(before, model):
    """How many parameter entries the method changed
    (SSD: the weights it dampened); one host read."""
    return int(sum((p.detach().cpu() != before[n]).sum() for n, p in model.named_parameters()))


def ssd_summary(changed, total, cfg, display="SSD"):
    """SSD's (LFSSD's) one line: how many weights it dampened; when none, why and what to try."""
    if changed:
        return f"{display} dampened {changed:,} of {total:,} weights ({changed / total:.4%})"
    return (f"{display} dampened no weight: none has a forget importance above alpha = "
            f"{cfg.alpha:g} times its importance on D ({cfg.full_set}), so the model is "
            f"unchanged. With D = retain+forget (the official scripts') the forget set is part "
            f"of D and this is common; try --full-set retain or a smaller --alpha")


if __name__ == "__main__":
    run(main, "interrupted; the model is saved as soon as the method ends (the line 'saved ...'): "
              "if it was, evaluate it with evaluate.py")
