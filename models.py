"""Architectures and checkpoints: the model card's CIFAR ResNet18 and He et al.'s CIFAR ResNets.

    python models.py                                    # parameter counts of every architecture
    python models.py --model checkpoints/resnet18_cifar10_full.pth
                                                        # what a checkpoint holds
    python models.py --model hf://jaeunglee/resnet18-cifar10-unlearning/resnet18_cifar10_full.pth
                                                        # downloaded once

A checkpoint is a plain CPU state_dict with torchvision's keys, written atomically, with
a JSON sidecar beside it (argv, config, split, seed, versions, device, wall time,
metrics). Load one elsewhere:

    model = torchvision.models.resnet18(weights=None)
    model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = torch.nn.Identity()
    model.fc = torch.nn.Linear(512, 10)
    model.load_state_dict(torch.load("resnet18_cifar10_full.pth", weights_only=True))
"""
import argparse
import errno
import hashlib
import importlib.metadata
import io
import json
import math
import os
import pickle
import platform
import re
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cli import (CHECKPOINT_SUFFIXES, atomic_writes, check_inputs, check_writable, json_bytes,
                 read_json, run, sha256_file, sidecar_name, sidecar_path, to_json)  # noqa: F401
from published import CIFAR_MODELS, cifar_model_stats, cifar_model_url, url_from_env

PREFIXES = ("module.", "_orig_mod.")  # added by DistributedDataParallel and torch.compile
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")  # dicts that hold a state_dict
REMOTE = ("hf://", "https://", "http://", "file://")  # checkpoint names that are downloaded
# $HF_ENDPOINT overrides it, as in huggingface_hub (a mirror; the tests)
HF_ENDPOINT = "https://huggingface.co"


def resnet18(num_classes=10):
    """torchvision's ResNet18 with a 3x3 stride-1 stem and no max-pool,
    exactly as the model card builds it."""
    import torchvision  # here, not at the top: it doubles a script's start-up (2 s of 4 on 2 cores)
    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


class BasicBlock(nn.Module):
    """He et al. (2016) CIFAR block; the shortcut is option A (stride-2 subsampling + zero
    channels), no parameters."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride, self.extra = stride, cout - cin

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x[:, :, ::self.stride, ::self.stride]
        if self.extra:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 images:
    3 stages of n blocks with 16/32/64 channels (He et al. 2016, sec. 4.2)."""
    block = BasicBlock

    def __init__(self, depth, num_classes=10):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        widths = [(16, 16, 1), (16, 32, 2), (32, 64, 2)]
        self.layer1, self.layer2, self.layer3 = (
            nn.Sequential(*[self.block(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                            for i in range(n)])
            for cin, cout, stride in widths)
        self.fc = nn.Linear(64, num_classes)
        self.init_weights()

    def init_weights(self):
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ProjectionBlock(nn.Module):
    """The CIFAR block of chenyaofo/pytorch-cifar-models (torchvision's BasicBlock): where a stage
    narrows the image or widens the channels, the shortcut is option B, a 1x1 stride-2 convolution +
    BatchNorm (downsample.0, downsample.1); elsewhere the identity."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                         nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class CifarResNetB(CifarResNet):
    """He et al.'s CIFAR ResNet-(6n+2) with option-B shortcuts, as chenyaofo/pytorch-cifar-models
    builds it (the CIFAR-100 report's starting weights): convolutions Kaiming-normal (fan_out,
    relu), BatchNorm 1 / 0, the classifier PyTorch's default. Its state_dict: option A's keys and
    layer2.0 / layer3.0's downsample.{0,1}."""
    block = ProjectionBlock

    def init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def imagenet_resnet(name, num_classes):
    """torchvision's ImageNet ResNet `name` (7x7 stem, max-pool, 224x224) with a new classifier."""
    import torchvision  # here, not at the top: see resnet18
    model = getattr(torchvision.models, name)(weights=None)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


ARCHS = {
    "resnet18": resnet18,
    "resnet18-imagenet": lambda num_classes=10: imagenet_resnet("resnet18", num_classes),
    "resnet34-imagenet": lambda num_classes=10: imagenet_resnet("resnet34", num_classes),
    "resnet20": lambda num_classes=10: CifarResNet(20, num_classes),
    "resnet32": lambda num_classes=10: CifarResNet(32, num_classes),
    "resnet44": lambda num_classes=10: CifarResNet(44, num_classes),
    "resnet56": lambda num_classes=10: CifarResNet(56, num_classes),
    "resnet20b": lambda num_classes=10: CifarResNetB(20, num_classes),
    "resnet32b": lambda num_classes=10: CifarResNetB(32, num_classes),
    "resnet44b": lambda num_classes=10: CifarResNetB(44, num_classes),
    "resnet56b": lambda num_classes=10: CifarResNetB(56, num_classes),
}


# The ImageNet-1K weights (IMAGENET1K_V1) of the
# transfer architectures, as torchvision publishes them.
IMAGENET_WEIGHTS = {  # the weights enum of torchvision.models, by name (imported when needed)
    "resnet18-imagenet": "ResNet18_Weights",
    "resnet34-imagenet": "ResNet34_Weights",
}


def build_model(arch, num_classes, pretrained=False):
    """A fresh model. pretrained: the starting weights of a *-imagenet architecture, all but
    fc (load_pretrained): True or "torchvision" for torchvision's ImageNet-1K weights, else a
    state_dict's path, URL or hf:// name."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; valid: {', '.join(ARCHS)}")
    model = ARCHS[arch](num_classes)
    if pretrained and arch in IMAGENET_WEIGHTS:
        load_pretrained(model, arch, "torchvision" if pretrained is True else pretrained)
    return model


def imagenet_file(weights):
    """torchvision's weight file in its download cache (TORCH_HOME); fetched once when online."""
    path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    if not os.path.exists(path):
        try:
            torch.hub.download_url_to_file(weights.url, path, progress=True)
        except Exception:  # offline: URLError, socket errors, ...
            raise FileNotFoundError("ImageNet weights not found and not downloadable: put "
                                    f"{weights.url} at {path}") from None
    return path


def load_pretrained(model, arch, name="torchvision"):
    """Starting weights into a fresh `model` of `arch`, all but its classifier fc, which stays as
    initialised. name: "torchvision" (torchvision's IMAGENET1K_V1 weights of arch), or a
    state_dict by path, URL or hf:// name (fetch), as torch.save (read with weights_only=True) or
    safetensors wrote it, checked as load_model checks a checkpoint.

    timm's ResNet18/34 keys are torchvision's (conv1, bn1, layer1-4 with downsample.0/.1, fc: timm's
    resnet.py), so its files load as they are, with no renaming. BatchNorm's num_batches_tracked,
    which some files leave out, is then the model's own 0. Every other key of the model must be in
    the file with its shape, and the file may hold no key the model lacks (a deep-stem resnet18d, a
    resnet34): else one line names the file and the first key that does not fit.
    Returns what a sidecar records: {"name", "file", "sha256"}."""
    if name == "torchvision":
        if arch not in IMAGENET_WEIGHTS:
            raise ValueError(f"--pretrained torchvision: torchvision has no weights of {arch}; "
                             f"valid: {', '.join(IMAGENET_WEIGHTS)}")
        import torchvision  # here, not at the top: see resnet18
        path = imagenet_file(getattr(torchvision.models, IMAGENET_WEIGHTS[arch]).IMAGENET1K_V1)
    else:
        path = pretrained_file(name)
    state = as_state_dict(read_checkpoint(path, name), name)
    if non_finite(state):
        raise ValueError(f"{name}: {non_finite(state)} of {len(state)} tensors hold NaN or inf; "
                         f"not loaded")
    ours = model.state_dict()
    kept = [k for k in ours if not k.startswith("fc.")]
    for key in kept:
        if key not in state and not key.endswith(".num_batches_tracked"):
            raise ValueError(f"{name}: does not fit {arch}: it has no {key} (the first key "
                             f"missing); give a {arch} state_dict under torchvision's (= timm's) "
                             f"names")
        if key in state and state[key].shape != ours[key].shape:
            raise ValueError(f"{name}: does not fit {arch}: {key} is "
                             f"{tuple(state[key].shape)} there, {tuple(ours[key].shape)} in {arch}")
    extra = [k for k in state if k not in ours]
    if extra:
        raise ValueError(f"{name}: does not fit {arch}: it holds {extra[0]}, which {arch} has not "
                         f"({len(extra)} such keys)")
    model.load_state_dict({k: state[k] for k in kept if k in state}, strict=False)
    return {"name": name, "file": os.path.basename(path), "sha256": sha256_file(path)}


def pretrained_file(name):
    """The local file of the starting weights `name` (not torchvision): a URL or hf:// name
    downloaded once (fetch, which checks a #sha256=HEX suffix); a local path as it is, or with
    the #sha256=HEX suffix that URLs take, checked against the file (a file whose own name holds
    #sha256= is taken as it is)."""
    try:
        path = fetch(name)
    except OSError as e:
        raise OSError(f"--pretrained {name}: {e} (--pretrained torchvision starts from "
                      f"torchvision's ImageNet weights instead)") from None
    pinned, _, pin = path.rpartition("#sha256=")
    if pinned and not is_remote(name) and not os.path.exists(path):
        if os.path.isfile(pinned) and sha256_file(pinned) != pin.lower():
            raise ValueError(f"--pretrained {name}: the sha256 of {pinned} is "
                             f"{sha256_file(pinned)}, not the one the name asks for; give that "
                             f"file, or the pin of this one")
        path = pinned
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--pretrained {name}: no such file; give a state_dict's "
                                f"path, URL or hf://OWNER/REPO/FILE, or torchvision")
    return path


def input_size(model):
    """224 for ImageNet-stem models (CIFAR images are upsampled to it),
    None for the CIFAR ones (native 32)."""
    return 224 if model.conv1.kernel_size == (7, 7) else None


class Ensemble(nn.Module):
    """Members' predictions combined. mean-softmax: log of the mean probability. vote: the
    class with most votes (ties broken by the mean probability), returned as the log of the
    vote fractions smoothed with 0.1% of the mean probability, so that losses stay finite
    and argmax is the vote."""

    def __init__(self, members, aggregate="mean-softmax"):
        super().__init__()
        if aggregate not in ("mean-softmax", "vote"):
            raise ValueError(f"unknown aggregation {aggregate!r}; valid: mean-softmax, vote")
        if len({input_size(m) for m in members}) > 1:
            raise ValueError("the members see images of different sizes "
                             f"({sorted({input_size(m) or 32 for m in members})} px): an ensemble "
                             "needs one input size")
        self.members, self.aggregate = nn.ModuleList(members), aggregate
        self.conv1 = members[0].conv1  # so that input_size() sees the members' stem

    def forward(self, x):
        log_probs = torch.stack([m(x).float().log_softmax(1) for m in self.members])
        # log of the mean, without underflow
        log_mean = torch.logsumexp(log_probs, 0) - math.log(len(self.members))
        if self.aggregate == "mean-softmax":
            return log_mean
        votes = F.one_hot(log_probs.argmax(2), log_probs.shape[2]).float().mean(0)
        return torch.logaddexp((0.999 * votes).log(), math.log(0.001) + log_mean)


# ----------------------------------------------------------------------------- checkpoints

def to_device(model, device):
    """The model on `device`; on CUDA in channels_last memory order, as Loader's batches
    are there (cuDNN's fastest convolutions). The values, and so the saved state_dicts,
    are the same either way."""
    return model.to(device, memory_format=(torch.channels_last if device.type == "cuda"
                                           else torch.preserve_format))


def clean_state_dict(state):
    """Plain CPU tensors under torchvision's keys (no DDP / torch.compile prefixes)."""
    out = {}
    for key, value in state.items():
        for prefix in PREFIXES:
            key = key[len(prefix):] if key.startswith(prefix) else key
        out[key] = value.detach().cpu()
    return out


def infer_arch(state):
    """(arch, num_classes) from a state_dict's keys and shapes;
    ValueError if it is none of ARCHS."""
    if "fc.weight" not in state or "conv1.weight" not in state:
        raise ValueError("not a ResNet state_dict (no conv1.weight / fc.weight)")
    blocks = len({k.split(".")[1] for k in state if k.startswith("layer1.")})
    stem = state["conv1.weight"].shape[-1]
    if "layer4.0.conv1.weight" not in state:  # a CIFAR ResNet: option B has projection shortcuts
        arch = f"resnet{6 * blocks + 2}" + ("b" if "layer2.0.downsample.0.weight" in state else "")
    elif "layer1.0.conv3.weight" in state:
        arch = "a bottleneck ResNet (50 or deeper)"
    else:
        arch = {(2, 3): "resnet18", (2, 7): "resnet18-imagenet", (3, 7): "resnet34-imagenet"}.get(
            (blocks, stem), f"a ResNet with {blocks} blocks per stage and a {stem}x{stem} stem")
    if arch not in ARCHS:
        raise ValueError(f"architecture is {arch}, not one of {', '.join(ARCHS)}")
    return arch, state["fc.weight"].shape[0]


def is_remote(name):
    return name.startswith(REMOTE) or name.startswith(CIFAR_MODELS)


def normalization_of(name):
    """The (mean, std) a model was trained with: a published model's (published.py), or what its
    sidecar records (train.py and unlearn.py write it); None when neither says (an older
    sidecar, a foreign file)."""
    if name.startswith(CIFAR_MODELS):
        return cifar_model_stats(name)
    sidecar = sidecar_path(name)
    if not is_remote(name) and os.path.isfile(sidecar):
        meta = read_json(sidecar)
        stats = meta.get("normalization") if isinstance(meta, dict) else None
        if isinstance(stats, dict) and all(isinstance(stats.get(k), list) and len(stats[k]) == 3
                                           for k in ("mean", "std")):
            return tuple(stats["mean"]), tuple(stats["std"])
    return None


def file_url(name):
    """hf://OWNER/REPO[@REV]/FILE -> the Hub's plain file URL
    (revision main unless @REV); other URLs as they are."""
    if not name.startswith("hf://"):
        return name
    parts = name[len("hf://"):].split("/", 2)
    if len(parts) < 3 or not all(parts):
        raise ValueError(f"{name}: give hf://OWNER/REPO/FILE (or hf://OWNER/REPO@REVISION/FILE)")
    owner, repo, file = parts
    repo, _, revision = repo.partition("@")
    endpoint = url_from_env("HF_ENDPOINT", HF_ENDPOINT).rstrip("/")
    # a space or a non-ASCII letter in a name is sent percent-encoded, as the Hub expects
    quote = urllib.parse.quote
    return (f"{endpoint}/{quote(owner)}/{quote(repo)}/resolve/"
            f"{quote(revision or 'main', safe='')}/{quote(file)}")


def cache_path(url):
    """Where a downloaded checkpoint lives: torch's hub cache ($TORCH_HOME/hub/checkpoints,
    as torchvision's weights), under the URL's host and path so that two repositories' files
    of one name never meet."""
    parsed = urllib.parse.urlsplit(url)
    parts = [p for p in urllib.parse.unquote(parsed.path).split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise ValueError(f"{url}: not a file URL")
    return os.path.join(torch.hub.get_dir(), "checkpoints", parsed.netloc or "localhost", *parts)


def fetch(name):
    """The local path of a checkpoint name: a path as it is; an hf://, https:// or file:// name
    downloaded once (torch's own downloader, with progress) into the hub cache and reused from
    there. A `#sha256=HEX` suffix is checked on every use: a cached copy that differs is downloaded
    again, a download that differs is removed."""
    if not is_remote(name):
        return name
    url, _, fragment = (cifar_model_url(name) if name.startswith(CIFAR_MODELS)
                        else name).partition("#")
    if fragment and not fragment.startswith("sha256="):
        raise ValueError(f"{name}: the only suffix understood is #sha256=<64 hex digits>")
    expected = fragment[len("sha256="):].lower() or None
    url = file_url(url)
    # torch.hub's name-<sha256 start>.pt
    prefix = re.fullmatch(r".+-([0-9a-f]{8,64})\.pth?", os.path.basename(url))
    prefix = prefix.group(1) if prefix else ""
    cached = cache_path(url)
    if (os.path.isfile(cached) and expected in (None, sha256_file(cached))
            and sha256_file(cached).startswith(prefix)):
        return cached
    check_local_url(url)
    os.makedirs(os.path.dirname(cached), exist_ok=True)
    print(f"downloading {url} -> {cached}", file=sys.stderr, flush=True)
    # writes a temp file beside `cached` and renames it:
    # an interrupted download leaves nothing behind
    try:
        torch.hub.download_url_to_file(url, cached, progress=sys.stderr.isatty())
    except OSError as e:
        # urllib's HTTPError (404, 401) and URLError (offline, no such host) are OSErrors
        # our disk, not the network
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
            raise OSError(f"could not save {url} at {cached}: {e.strerror}; free space there or "
                          "set $TORCH_HOME to a folder that takes files") from None
        raise OSError(f"could not download {url} ({getattr(e, 'reason', None) or e}). Without "
                      f"network access, download it elsewhere and place it at {cached}, or pass "
                      "the file's local path") from None
    found = sha256_file(cached)
    if (expected and found != expected) or not found.startswith(prefix):
        os.remove(cached)
        raise ValueError(f"{url}: the downloaded file's sha256 is {found}, not "
                         f"{expected or prefix + '...'} as "
                         f"{'its name says' if not expected else name + ' asks'}; removed it")
    return cached


def check_local_url(url):
    """A file:// URL that names a folder is one line saying so (the download's "Is a directory ...
    Without network access, download it elsewhere" misled)."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "file" and os.path.isdir(urllib.request.url2pathname(parsed.path)):
        raise ValueError(f"{url} is a folder; name the checkpoint file in it")


def read_checkpoint(path, name):
    """torch.load(weights_only=True), or read_safetensors for a .safetensors file (by its name or
    its first bytes: one named .pth was "not a PyTorch checkpoint"): no code runs. Each way a file
    can fail is one line saying what it is."""
    if path.endswith(".safetensors") or looks_like_safetensors(path):
        return read_safetensors(path, name)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only met a class: a pickled model object, not a state_dict
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if not found:  # not a pickle of an object at all: garbage, or another format
            raise ValueError(f"{name}: not a PyTorch checkpoint (UnpicklingError)") from None
        raise ValueError(f"{name}: holds a pickled object ({found.group(1)}), not a state_dict, "
                         "and loading it could run code; save the weights with "
                         "torch.save(model.state_dict(), path)") from None
    except RuntimeError as e:
        newer = re.search(r"read a PyTorch file with version (\d+), but the maximum supported "
                          r"version for reading is (\d+)", str(e))
        if newer:
            raise ValueError(f"{name}: written by a newer PyTorch (file format "
                             f"{newer.group(1)}; this torch {torch.__version__} reads up to "
                             f"{newer.group(2)}); upgrade torch") from None
        raise ValueError(f"{name}: not a PyTorch checkpoint "
                         f"({str(e).splitlines()[0][:200]})") from None
    except Exception as e:  # zip and other format errors all mean "not a checkpoint we load"
        raise ValueError(f"{name}: not a PyTorch checkpoint ({type(e).__name__})") from None


def looks_like_safetensors(path):
    """Whether a file starts as a .safetensors file does: a header size that fits the file, then
    "{". torch.save's zip ("PK...") and pickles (0x80 ...) read as sizes far past any file."""
    with open(path, "rb") as f:
        start = f.read(9)
    size = int.from_bytes(start[:8], "little")
    return len(start) == 9 and 2 <= size <= os.path.getsize(path) - 8 and start[8:] == b"{"


# The dtypes of a .safetensors file that a checkpoint of ours may hold (as_state_dict).
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                      "BF16": torch.bfloat16, "I64": torch.int64}


SAFETENSORS_MAX_HEADER = 100 << 20  # bytes: the safetensors package's own limit
SAFETENSORS_MAX_DIM = 2 ** 31 - 1  # a dimension torch reshapes to without overflow


def read_safetensors(path, name):
    """A .safetensors file without the safetensors package: an 8-byte little-endian header size,
    a JSON header giving each tensor's dtype, shape and data_offsets (a byte range of the data
    after it), then the raw little-endian bytes. Nothing in it runs. Checked before any tensor
    byte is read (a large file was read whole, twice, first): the header fits the file and is
    JSON of a bounded size and depth; every entry has a dtype of SAFETENSORS_DTYPES, a shape of
    whole numbers up to SAFETENSORS_MAX_DIM and a range of exactly its bytes; the ranges cover
    the rest of the file back to back. Then the data is read once. {name: tensor}, or one line."""
    def bad(why):
        return ValueError(f"{name}: not a valid .safetensors file ({why}); download it again, "
                          f"or use the repository's pytorch_model.bin")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little") if size >= 8 else -1
        if not 2 <= length <= min(size - 8, SAFETENSORS_MAX_HEADER):
            raise bad("its header size does not fit the file")
        try:
            header = json.loads(f.read(length).decode("utf-8"))
        except ValueError:  # not UTF-8, not JSON
            raise bad("its header is not JSON") from None
        except RecursionError:  # [[[...]]] deeper than Python's stack: no tensor entry nests so
            raise bad("its header nests lists or objects thousands deep") from None
        layout = safetensors_layout(header, size - 8 - length, bad)
        try:
            data = bytearray(size - 8 - length)  # the one copy of the tensors' bytes
        except MemoryError:
            raise ValueError(f"{name}: its {(size - 8 - length) / 2 ** 30:.1f} GiB of tensors do "
                             f"not fit in this machine's memory") from None
        if f.readinto(data) != len(data):
            raise bad("the file is shorter than it was a moment ago")
    state = {}
    for key, (dtype, shape, begin, end) in layout.items():
        tensor = torch.frombuffer(data, dtype=dtype, count=(end - begin) // dtype.itemsize,
                                  offset=begin) if end > begin else torch.zeros(0, dtype=dtype)
        state[key] = (tensor if begin % dtype.itemsize == 0 else tensor.clone()).reshape(shape)
    return state  # clone: torch's kernels expect aligned elements


def safetensors_layout(header, available, bad):
    """{key: (dtype, shape, begin, end)} of a safetensors header, each entry checked against the
    `available` bytes of data after the header (read_safetensors); `bad(why)` makes the error."""
    def whole(values, top):
        return isinstance(values, list) and all(
            isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= top for n in values)
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    header.pop("__metadata__", None)
    layout = {}
    for key, entry in header.items():
        entry = entry if isinstance(entry, dict) else {}
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
            raise bad(f"{key} has dtype {dtype!r}, not one of {', '.join(SAFETENSORS_DTYPES)}")
        if not (whole(shape, SAFETENSORS_MAX_DIM) and whole(offsets, math.inf) and
                len(offsets) == 2):
            raise bad(f"{key}: shape {str(shape)[:80]} and data_offsets {str(offsets)[:80]} are "
                      f"not whole numbers (a dimension at most {SAFETENSORS_MAX_DIM})")
        (begin, end), dtype = offsets, SAFETENSORS_DTYPES[dtype]
        if not begin <= end <= available or end - begin != math.prod(shape) * dtype.itemsize:
            raise bad(f"{key}: bytes {begin}-{end} of {available} are not a {dtype} tensor of "
                      f"shape {shape}")
        layout[key] = (dtype, shape, begin, end)
    spans = sorted((begin, end) for _, _, begin, end in layout.values())
    starts, ends = [b for b, _ in spans], [e for _, e in spans]
    if starts != [0] + ends[:-1] or (ends[-1] if ends else 0) != available:
        raise bad("its tensors' byte ranges overlap or leave gaps")
    return layout


def as_state_dict(loaded, name):
    """The state_dict a loaded file holds (bare, or under one of WRAPPER_KEYS) as plain CPU tensors
    under torchvision's keys (clean_state_dict); one line naming the file when it holds none, or
    holds tensors no model of ours holds."""
    state = loaded
    for key in WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v)
                                              for k, v in state.items()):
        raise ValueError(f"{name}: holds no state_dict (a dict of named tensors)")
    for key, v in state.items():  # sparse, complex, meta or other tensors no model of ours holds
        odd = ("a sparse tensor" if v.layout != torch.strided else
               "a tensor on meta (no values)" if v.is_meta else
               f"a {v.dtype} tensor" if not (v.is_floating_point() or v.dtype == torch.int64)
               else None)
        if odd:
            raise ValueError(f"{name}: {key} is {odd}; a checkpoint of ours holds dense tensors "
                             f"of real floating-point numbers (and int64 counters)")
    return clean_state_dict(state)


def load_model(name, arch=None, num_classes=None):
    """Load a checkpoint (bare state_dict or a dict holding one) with weights_only=True, from a path
    or a downloaded name (see fetch); infer its architecture and class count, and check them against
    `arch` / `num_classes` when given."""
    path = fetch(name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} not found")
    state = as_state_dict(read_checkpoint(path, name), name)
    try:
        found_arch, found_classes = infer_arch(state)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None
    except (IndexError, KeyError, TypeError):
        # a crafted file: tensors of the wrong rank where shapes are read
        raise ValueError(f"{name}: holds no ResNet state_dict (tensors "
                         "of unexpected shapes)") from None
    if (arch or found_arch) != found_arch or (num_classes or found_classes) != found_classes:
        raise ValueError(f"{name} is a {found_arch} with {found_classes} classes, "
                         f"expected {arch or found_arch} with {num_classes or found_classes}")
    if non_finite(state):
        raise ValueError(f"{name}: {non_finite(state)} of {len(state)} tensors hold NaN or inf (a "
                         "diverged run); not loaded")
    try:
        # weights come from the file: no ImageNet download
        model = build_model(found_arch, found_classes)
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{name}: does not fit {found_arch}: "
                         f"{str(e).splitlines()[-1].strip()}") from None
    return model


def non_finite(state):
    """How many floating-point tensors of a state_dict
    (on one device) hold a NaN or an infinity: one host read."""
    finite = [torch.isfinite(v).all() for v in state.values() if v.is_floating_point()]
    return int((~torch.stack(finite)).sum()) if finite else 0


def save_model(path, model, meta):
    """Plain CPU state_dict at `path`, with `meta` plus argv, versions, time and the checkpoint's
    sha256 in a JSON sidecar beside it. Both are written whole before either is renamed into place,
    the sidecar first: a full disk changes neither, and a crash between the two renames leaves a
    sidecar whose sha256 the checkpoint does not have, an unfinished checkpoint that the next run
    redoes. Non-finite weights are refused: nothing is written."""
    state = clean_state_dict(model.state_dict())
    if non_finite(state):
        raise ValueError(f"{path} not saved: {non_finite(state)} of {len(state)} tensors hold NaN "
                         "or inf (the run diverged; lower --lr)")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "torchvision": importlib.metadata.version("torchvision"),  # see resnet18
                "numpy": np.__version__}
    sidecar = {"argv": sys.argv, "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "versions": versions, "sha256": hashlib.sha256(buffer.getvalue()).hexdigest(),
               **meta}
    atomic_writes([(sidecar_name(path), lambda f: f.write(json_bytes(sidecar))),
                   (path, lambda f: f.write(buffer.getvalue()))])


def finished(path):
    """True when `path` and its sidecar are both there and the sidecar names this very file's sha256
    (sidecars written before checkpoints carried one count when both files are there)."""
    sidecar = sidecar_path(path)
    if not (os.path.isfile(path) and os.path.isfile(sidecar)):
        return False
    try:
        meta = read_json(sidecar)
    except ValueError:
        return False
    return isinstance(meta, dict) and meta.get("sha256") in (None, sha256_file(path))


def check_output(path, identity, overwrite=False, inputs=()):
    """Before any work: `path` can be written (not a folder, not a .json, which names a sidecar,
    in a folder that takes files); neither it nor its sidecar is one of the `inputs` or goes with
    one (cli.check_inputs: the checkpoints read, their sidecars, the data); its sidecar's name is
    no other checkpoint's older sidecar; and whatever is there already was made by this project
    with the same `identity` (the settings that decide the result), or `overwrite` says it may go.
    Returns True when a finished checkpoint with that identity is there: nothing to do. One with
    that identity but unfinished (a run stopped between its sidecar and its checkpoint) is
    redone."""
    if path.endswith(".json"):
        raise ValueError(f"--out {path}: a checkpoint path cannot end in .json (its sidecar takes "
                         "that name); use .pth")
    check_inputs(path, "--out", inputs, writes=[path, sidecar_name(path)])
    check_writable(path)
    owner = other_owner(path)
    if owner:
        raise ValueError(f"--out {path}: its sidecar would be {sidecar_name(path)}, the "
                         f"sidecar of {owner}; give another --out, such as {path}.pth")
    sidecar = sidecar_path(path)
    if overwrite or not (os.path.exists(path) or os.path.exists(sidecar)):
        return False
    meta = read_json(sidecar) if os.path.isfile(sidecar) else {}
    meta = meta if isinstance(meta, dict) else {}
    if meta.get("identity") == json.loads(json.dumps(identity, default=to_json)):
        return finished(path)
    if not os.path.exists(path):  # a sidecar alone: a run stopped before its checkpoint's rename
        raise ValueError(f"--out {path} is not there, but its sidecar {sidecar} is, written by a "
                         f"run with other settings: pass --overwrite to replace it, or give "
                         f"another --out")
    made = ("a checkpoint made with other settings" if "identity" in meta
            else "a file without a sidecar of this project")
    raise ValueError(f"--out {path} holds {made}: pass --overwrite to replace it, "
                     "or give another --out")


def other_owner(path):
    """Another checkpoint whose older sidecar (x.json) has the name that `path`'s sidecar would
    take (`path` is x beside x.pth, or x.pth beside an older x.pth.pt), or None."""
    name = sidecar_name(path)
    if not os.path.isfile(name):
        return None
    others = [path + ending for ending in CHECKPOINT_SUFFIXES if os.path.isfile(path + ending)]
    return next((other for other in others if sidecar_path(other) == name), None)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None,
                        help="a checkpoint to describe: a path, an https:// URL or "
                        "hf://OWNER/REPO[@REV]/FILE, downloaded once; #sha256=HEX checks it "
                        "(default: list the architectures)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.model:
        model = load_model(args.model)
        arch, num_classes = infer_arch(model.state_dict())
        print(f"{args.model}: {arch}, {num_classes} classes, "
              f"{sum(p.numel() for p in model.parameters()):,} parameters")
        return
    for arch in ARCHS:
        print(f"{arch}: {sum(p.numel() for p in build_model(arch, 10).parameters()):,} "
              "parameters (10 classes)")


if __name__ == "__main__":
    run(main)
