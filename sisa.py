"""SISA (Bourtoule et al., 2021): shard models on cumulative slices; unlearning retrains few slices.

Each shard is retrained only from its first slice that held a forgotten image.

    python sisa.py train --dataset cifar100 --recipe transfer --arch resnet34-imagenet  # 4 x 5
    python sisa.py train --dataset cifar100 --recipe transfer --arch resnet34-imagenet --shard 0
    python sisa.py unlearn --model checkpoints/sisa_cifar100_resnet34-imagenet/manifest_full.json \\
        --dataset cifar100 --forget-fraction 0.2
    python sisa.py train --dataset ../shared/data/cifar10-jpeg.tar.gz --arch resnet20 \\
        --subset 100 --slice-epochs 1,1,1,1,1 --device cpu

Slices train with train.py's recipes (--recipe and its flags). Every slice checkpoint is named by a
hash of all it has seen, so a later run (another shard's job, or unlearning) reuses each one that
no forgotten image reached. A manifest (.json) names the shard models: evaluate.py loads it as one
model (their vote).
"""
import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from cli import (add_config_args, add_runtime_args, check_inputs, check_out, config_from_args,
                 config_from_json, lock, non_negative_int, pick_device, read_json, run, to_json,
                 write_json)
from data import (Loader, add_data_args, describe_split, forget_name, input_files, load_dataset,
                  sisa_order, split_from_args)
from evaluate import evaluate_model, format_table, load_evaluable
from methods import hp
from models import (build_model, finished, input_size, is_remote, load_model, save_model,
                    sidecar_path, to_device)
from train import (RECIPES, check_flags, fit, inputs, normalization, recipe_identity,
                   starting_weights)


@dataclass(frozen=True)
class SisaConfig:
    """SISA as in the CIFAR-100 report: 4 shards x 5 slices, slice k trained 9 - k epochs. The
    recipe's seed also seeds the shard permutation and each shard model's initialisation."""
    shards: int = hp(4, "S, disjoint shards of the train set, one model each")
    slices: int = hp(5, "R, slices per shard, trained cumulatively with a checkpoint after each")
    slice_epochs: tuple = hp((8, 7, 6, 5, 4), "epochs for slice k = 1..R, comma-separated "
                             "(the report: 9 - k)")
    aggregate: str = hp("vote", "how the shard models' predictions combine",
                        choices=("vote", "mean-softmax"))


# ----------------------------------------------------------------------------- the model set

def shard_slices(train_indices, shards, slices, seed):
    """The seeded order of the train indices (data.sisa_order: --forget-positions counts in it)
    cut into `shards` disjoint shards of `slices` slices each, runs of consecutive positions."""
    order = sisa_order(train_indices, seed)
    return [np.array_split(shard, slices) for shard in np.array_split(order, shards)]


def slice_hash(previous, seen, epochs, identity):
    """Names a slice checkpoint by everything that made it: the previous slice's hash, the exact
    indices seen so far, the epochs and the recipe."""
    h = hashlib.sha256(f"{previous}|{epochs}|{json.dumps(identity, sort_keys=True)}|".encode())
    h.update(np.asarray(seen, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def train_sisa(data, split, cfg, sisa, folder, device, only=None):
    """Train (or, with forgotten indices absent from split.retain, unlearn) a SISA model set: every
    shard trains on cumulative slices, each slice checkpoint named by a hash of everything it has
    seen, so unchanged ones are reused. Returns the manifest and, per shard, the slices that were
    trained. only: train that shard alone and return None (shards as separate jobs; a later call
    reuses their checkpoints and returns the manifest)."""
    if len(sisa.slice_epochs) != sisa.slices:
        raise ValueError(f"--slice-epochs gives {len(sisa.slice_epochs)} values for "
                         f"{sisa.slices} slices")
    plan = shard_slices(split.train, sisa.shards, sisa.slices, cfg.seed)
    forgotten = set(split.train[~np.isin(split.train, split.retain)].tolist())
    check_plan(plan, forgotten)
    identity = {"cfg": recipe_identity(cfg), "dataset": data.name, "classes": len(data.classes)}
    shards = [train_shard(data, slices, forgotten, cfg, sisa, identity, folder, device, s)
              for s, slices in enumerate(plan) if only in (None, s)]
    if only is not None:
        return None
    return {"kind": "sisa-manifest", "sisa": dataclasses.asdict(sisa),
            "config": dataclasses.asdict(cfg), "dataset": data.name,
            "normalization": normalization(data), "classes": data.classes,
            "aggregate": sisa.aggregate, "split": describe_split(split, data.classes),
            "members": [s["checkpoints"][-1] for s in shards], "shards": shards}


def check_plan(plan, forgotten):
    """Before any shard trains: every slice holds an image, and no shard is forgotten whole (it
    would have nothing to train on, found after all the others had trained)."""
    n = sum(len(part) for slices in plan for part in slices)
    if min(len(part) for slices in plan for part in slices) == 0:
        raise ValueError(f"{len(plan)} shards x {len(plan[0])} slices for {n} train images leave "
                         f"a slice empty; use fewer --shards or --slices")
    for shard, slices in enumerate(plan):
        if all(i in forgotten for part in slices for i in part):
            raise ValueError(f"every image of shard {shard} is forgotten, so it has nothing to "
                             f"train on; use fewer --shards, or retrain without SISA")


def train_shard(data, slices, forgotten, cfg, sisa, identity, folder, device, shard):
    """One shard: for slice k, train on slices 1..k (forgotten indices dropped) for
    sisa.slice_epochs[k-1] epochs, starting from slice k-1's checkpoint; a checkpoint whose hash
    exists is reused, not trained. A slice whose own images are all forgotten adds nothing: its
    checkpoint is the previous one carried over (the shard's fresh initialisation for a first
    slice), so that a shard whose last slices are forgotten goes back to its last checkpoint, and
    one whose first slices are forgotten starts afresh at its first slice with images left."""
    seen, previous = np.zeros(0, np.int64), None
    digest = slice_hash(None, [], 0, identity | {"shard": shard})
    checkpoints, trained, carried, seconds = [], [], [], []
    for k, (part, epochs) in enumerate(zip(slices, sisa.slice_epochs), 1):
        new = [i for i in part if i not in forgotten]
        seen, epochs = np.concatenate([seen, new]).astype(np.int64), epochs if new else 0
        digest = slice_hash(digest, seen, epochs, identity)
        path = os.path.join(folder, f"shard{shard}_slice{k}_{digest}.pth")
        if not finished(path):  # absent, or left unfinished between checkpoint and sidecar
            with lock(path):
                train_slice(data, seen, cfg, epochs, previous, path, device,
                            cfg.seed * 1000 + shard, len(data.classes))
            (trained if epochs else carried).append(k)
        seconds.append(read_json(sidecar_path(path))["seconds"])
        checkpoints.append(os.path.basename(path))  # relative to the manifest's folder
        previous = path
    print(f"shard {shard}: trained slices {trained or 'none (all reused)'}"
          + (f"; slices {carried} hold only forgotten images: the model before them carried over"
             if carried else ""), flush=True)
    return {"checkpoints": checkpoints, "trained": trained, "carried": carried, "seconds": seconds}


def train_slice(data, indices, cfg, epochs, previous, path, device, seed, num_classes):
    """Slice checkpoint `path`: the previous one (or a fresh model) trained `epochs` on `indices`;
    with 0 epochs (the slice's own images all forgotten), the previous model (or the fresh one) as
    it is."""
    torch.manual_seed(seed)
    model = load_model(previous) if previous else build_model(cfg.arch, num_classes)
    pretrained = None if previous else starting_weights(model, cfg)
    model = to_device(model, device)
    start = time.time()
    if epochs:
        loader = Loader(data, indices, train_set=True, batch_size=cfg.batch_size, device=device,
                        shuffle=True, augment=cfg.augment, seed=seed, size=input_size(model))
        fit(model, loader, None, dataclasses.replace(cfg, epochs=epochs))
    save_model(path, model, {"config": dataclasses.asdict(cfg), "epochs": epochs,
                             "n_seen": len(indices), "seconds": time.time() - start,
                             "device": str(device), "pretrained": pretrained})


# ----------------------------------------------------------------------------- manifests

def read_manifest(path):
    """A SISA manifest (sisa.py train or unlearn) with what unlearning reads checked: (manifest,
    its recipe's config, its SisaConfig, the slice checkpoints it names). A hand-edited or foreign
    file is one line."""
    manifest = read_json(path)
    where = f"{path} is not a SISA manifest of this project as written"
    if not isinstance(manifest, dict) or manifest.get("recipe") not in RECIPES:
        raise ValueError(f"{path} is not a SISA manifest of this project (no recipe); write one "
                         f"with sisa.py train")
    config = manifest.get("config")
    if isinstance(config, dict) and manifest["recipe"] != "sgd":  # older: torchvision's
        config = {"pretrained": "torchvision", **config}
    cfg = config_from_json(RECIPES[manifest["recipe"]], config, where)
    sisa = config_from_json(SisaConfig, manifest.get("sisa"), where)
    shards = manifest.get("shards")
    if not (isinstance(shards, list) and len(shards) == sisa.shards
            and all(well_formed(s, sisa.slices) for s in shards)):
        raise ValueError(f"{where}: shards must list {sisa.shards} shards of {sisa.slices} "
                         f"checkpoint names beside it, with their seconds")
    split = manifest.get("split")
    n_train = split.get("n_train") if isinstance(split, dict) else None
    if not isinstance(n_train, int) or isinstance(n_train, bool):
        raise ValueError(f"{where}: split.n_train is {n_train!r}, not a number of images")
    folder = os.path.dirname(path)
    return manifest, cfg, sisa, [os.path.join(folder, c) for s in shards for c in s["checkpoints"]]


def well_formed(shard, slices):
    """A manifest's shard entry: `slices` checkpoint names beside it (no folder), their seconds."""
    names, seconds = shard.get("checkpoints"), shard.get("seconds")
    return (isinstance(shard, dict) and isinstance(names, list) and len(names) == slices
            and all(isinstance(c, str) and os.path.basename(c) == c for c in names)
            and isinstance(seconds, list) and all(isinstance(x, (int, float)) for x in seconds))


def made_with(identity):
    """mine= for cli.check_out: a SISA manifest made with `identity` (manifest_identity), so that
    only the same command replaces it."""
    def mine(path):
        try:
            found = manifest_identity(*read_manifest(path)[:3])
        except (ValueError, OSError, KeyError, TypeError, AttributeError):  # not one of ours
            return False
        return found == json.loads(json.dumps(identity, default=to_json))
    return mine


def manifest_identity(manifest, cfg, sisa):
    """What made a SISA manifest, as its "identity": for a trained one, the recipe's identity, the
    SISA settings, dataset and split; for an unlearned one, its source manifest and split. One
    written before manifests held it is judged by the same fields."""
    if "identity" in manifest:
        return manifest["identity"]
    split = manifest["split"]["sha256"]
    if "source" in manifest:  # unlearned
        return {"method": "sisa", "source": os.path.abspath(manifest["source"]), "split": split}
    return json.loads(json.dumps({"recipe": manifest["recipe"], "cfg": recipe_identity(cfg),
                                  "sisa": dataclasses.asdict(sisa),
                                  "dataset": manifest.get("dataset"), "split": split}))


# ----------------------------------------------------------------------------- command line

def train_main(args):
    """sisa.py train: the shard models, written to a folder with a manifest that evaluate.py
    loads as one model. A manifest already there is replaced only by a run with its settings
    (whose slices are then all reused) or with --overwrite, and by one run at a time (cli.lock)."""
    cfg = config_from_args(RECIPES[args.recipe], args)
    sisa = config_from_args(SisaConfig, args)
    check_train_flags(args, cfg, sisa)
    data = load_dataset(args.dataset, args.data_dir)
    split = split_from_args(args, data, cfg.val_fraction or None)
    folder = args.out or os.path.join("checkpoints", f"sisa_{data.name}_{cfg.arch}")
    path = os.path.join(folder, f"manifest_{forget_name(split, data.classes)}.json")
    identity = {"recipe": args.recipe, "cfg": recipe_identity(cfg),
                "sisa": dataclasses.asdict(sisa), "dataset": data.name,
                "split": describe_split(split, data.classes)["sha256"]}
    if args.shard is None:  # a --shard job writes no manifest
        check_out(path, "--out", inputs(args, cfg), made_with(identity), args.overwrite)
    else:  # but its slices go in the same folder: not inside the data either
        check_inputs(path, "--out", inputs(args, cfg))
    print(f"{cfg}\n{sisa}\n{len(split.retain)} train images -> {folder}", flush=True)
    device, _ = pick_device(args.device, "fp32")
    if args.shard is not None:
        train_sisa(data, split, cfg, sisa, folder, device, only=args.shard)
        print(f"shard {args.shard} done; run again without --shard to write the manifest")
        return
    with lock(path, args.wait) as waited:
        if waited:  # the run it waited for wrote a manifest: replaced only as check_out says
            check_out(path, "--out", inputs(args, cfg), made_with(identity), args.overwrite)
        made = train_sisa(data, split, cfg, sisa, folder, device)
        write_json(path, {"recipe": args.recipe, **made, "identity": identity})
    print(f"saved {path} ({sisa.shards} shards; evaluate it with evaluate.py --model {path})")


def check_train_flags(args, cfg, sisa):
    """Before the data: flags that cannot work together, each one line naming them."""
    check_flags(args, cfg)  # train.py's own (--patience without a validation set)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("sisa.py is not supported under torchrun: run shards as separate jobs "
                         "(--shard)")
    if args.shard is not None and not 0 <= args.shard < sisa.shards:
        raise ValueError(f"--shard must be in 0..{sisa.shards - 1}, got {args.shard}")
    if args.out and os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ValueError(f"--out {args.out} is a file; sisa.py's --out names a folder for the "
                         f"slices and the manifest: give a folder path")


def unlearn_main(args):
    """sisa.py unlearn: each shard restarts from the checkpoint before its first slice holding a
    forgotten index and retrains the later slices without it (train_sisa's hash-named
    checkpoints make that automatic); untouched shards are reused."""
    if not is_remote(args.model) and not os.path.isfile(args.model):  # before the data
        raise FileNotFoundError(f"--model {args.model} not found: give the manifest sisa.py train "
                                f"wrote (make sisa)")
    if all(getattr(args, f) is None for f in ("forget_class", "forget_fraction",
                                              "forget_indices", "forget_positions")):
        raise ValueError("the forget set is empty: give --forget-class, --forget-fraction, "
                         "--forget-indices or --forget-positions")
    manifest, cfg, sisa, slices = read_manifest(args.model)
    data = load_dataset(args.dataset, args.data_dir)
    split = split_from_args(args, data)
    if len(split.forget) == 0:
        raise ValueError("the forget set is empty: give --forget-class, --forget-fraction or "
                         "--forget-indices")
    if manifest["split"]["n_train"] != len(split.train):
        raise ValueError(f"{args.model} was trained on {manifest['split']['n_train']} images, "
                         f"this split has {len(split.train)}: use the same --dataset / --subset")
    folder = os.path.dirname(args.model)
    out = args.out or os.path.join(folder, unlearned_name(data, cfg.arch, split, args.subset))
    check_unlearned_out(out, folder)
    identity = {"method": "sisa", "source": os.path.abspath(args.model),
                "split": describe_split(split, data.classes)["sha256"]}
    reads = [args.model, *slices, *input_files(args)]
    check_out(out, "--out", reads, made_with(identity), args.overwrite)  # another's: --overwrite
    device, _ = pick_device(args.device, "fp32")  # the slices train in fp32, as sisa.py train's
    with lock(out, args.wait) as waited:  # a second run on --out stops (or waits, then checked)
        if waited:
            check_out(out, "--out", reads, made_with(identity), args.overwrite)
        seconds = unlearn_slices(args, manifest, data, split, cfg, sisa, out, identity, device)
    print(f"saved {out}")
    if not args.no_eval:
        model = to_device(load_evaluable(out, len(data.classes)), device)
        rows = [(out, {**evaluate_model(model, data, split, device, mia=True), "seconds": seconds})]
        print(format_table(rows))


def unlearned_name(data, arch, split, subset):
    """<dataset>_<arch>_SISA_<forget set>.json: the forget part as every output's (forget_name)."""
    forget = forget_name(split, data.classes, subset, unlearned=True)
    return f"{data.name}_{arch}_SISA_{forget}.json"


def check_unlearned_out(out, folder):
    """An unlearned manifest is a .json file beside the slices it names (the folder of --model)."""
    if not out.endswith(".json"):
        raise ValueError(f"--out {out}: a SISA manifest is a .json file")
    here = os.path.realpath(os.path.dirname(os.path.abspath(out)))
    if here != os.path.realpath(folder or "."):
        raise ValueError(f"--out {out}: a SISA manifest names its slices beside it, so it goes in "
                         f"the folder of --model, {folder or '.'}; give a name there")


def unlearn_slices(args, manifest, data, split, cfg, sisa, out, identity, device):
    """The affected slices retrained, what was done printed, the manifest written; its seconds."""
    folder = os.path.dirname(args.model)
    full = sum(sum(s["seconds"]) for s in manifest["shards"])
    start = time.time()
    new = {"recipe": manifest["recipe"], **train_sisa(data, split, cfg, sisa, folder, device)}
    seconds = time.time() - start
    for shard, info in enumerate(new["shards"]):
        done = f"retrained slices {info['trained']}" if info["trained"] else "untouched"
        carried = (f" (slices {info['carried']}: only forgotten images, the model before them "
                   f"carried over)") if info.get("carried") else ""
        print(f"shard {shard}: {done}{carried}")
    print(f"unlearning took {seconds:.1f}s; a full retrain of all shards would take about "
          f"{full:.1f}s (their original training time)")
    write_json(out, {**new, "seconds": seconds, "source": args.model, "identity": identity})
    return seconds


def recipe_of(argv):
    """--recipe, read first: its config's flags (and defaults) are the rest of the command's."""
    first = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    first.add_argument("--recipe", choices=list(RECIPES), default="sgd")
    return first.parse_known_args(argv)[0].recipe


def train_parser(recipe):
    parser = argparse.ArgumentParser(prog="sisa.py train", allow_abbrev=False,
                                     description="Train a SISA model set: shards x slices.")
    parser.add_argument("--recipe", choices=list(RECIPES), default="sgd", help="train.py's "
                        "recipe for every slice: sgd, transfer (ImageNet weights + Adam: the "
                        "report's SISA), ensemble (default: sgd)")
    parser.add_argument("--out", default=None, help="the folder of the slices and the manifest "
                        "(default: checkpoints/sisa_<dataset>_<arch>)")
    parser.add_argument("--shard", type=non_negative_int, default=None, help="train this shard "
                        "only, so that shards run as parallel jobs; a run without it then reuses "
                        "them and writes the manifest (default: all)")
    add_output_args(parser, "train again")
    add_runtime_args(parser, precision=None, seed=None)  # fp32; the seed is the recipe's (--seed)
    add_config_args(parser, RECIPES[recipe])
    add_config_args(parser, SisaConfig)
    add_data_args(parser)
    return parser


def unlearn_parser():
    parser = argparse.ArgumentParser(prog="sisa.py unlearn", allow_abbrev=False,
                                     description="Unlearn a forget set from a SISA model set.")
    parser.add_argument("--model", required=True, help="the manifest written by sisa.py train "
                        "(its settings are the slices')")
    parser.add_argument("--out", default=None, help="the unlearned manifest, beside --model "
                        "(default: <dataset>_<arch>_SISA_<forget set>.json there)")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation (default: "
                        "evaluate)")
    add_output_args(parser, "run again")
    add_runtime_args(parser, precision=None, seed=None)  # fp32; the seed is the manifest's
    add_data_args(parser)
    return parser


def add_output_args(parser, again):
    """--overwrite and --wait, as every script spells them."""
    parser.add_argument("--overwrite", action="store_true", help="replace a finished --out made "
                        f"with other settings, or {again} one made with these (default: refuse "
                        "/ keep it)")
    parser.add_argument("--wait", action="store_true", help="when another run is writing --out, "
                        "wait for it (then nothing is left to do) instead of stopping at once: "
                        "parallel make jobs (default: stop)")


COMMANDS = {"train": (train_main, lambda argv: train_parser(recipe_of(argv))),
            "unlearn": (unlearn_main, lambda argv: unlearn_parser())}


def parse_args(argv=None):
    """(the command's function, its parsed flags): `sisa.py COMMAND FLAGS...`."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    top = argparse.ArgumentParser(prog="sisa.py", description=__doc__.split("\n")[0])
    top.add_argument("command", choices=list(COMMANDS), help="train: the model set; unlearn: a "
                     "forget set from it (`sisa.py COMMAND --help` lists its flags)")
    if not argv or argv[0] not in COMMANDS:
        top.parse_args(argv[:1])  # --help, or one line naming the commands; exits
    function, parser = COMMANDS[argv[0]]
    return function, parser(argv[1:]).parse_args(argv[1:])


def main(argv=None):
    function, args = parse_args(argv)
    function(args)


if __name__ == "__main__":
    run(main, "interrupted; every finished slice checkpoint is kept and reused: run the same "
              "command again to continue")
