"""Shared fixtures: the real CIFAR-10 images (skipped with a reason where the archive is absent),
a small resnet20 trained on them once per session, helpers that run a script or make as a user
would, and the synthetic image folders the tests write."""
import contextlib
import importlib
import io
import os
import pickle
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import cli
import methods
import unlearn

from data import Loader, load_dataset, make_split
from train import TrainConfig, fit
from models import build_model, save_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHIVE = os.path.join(ROOT, "..", "shared", "data", "cifar10-jpeg.tar.gz")
SUBSET = 300  # train images per class for the session model: enough to learn, small enough for 2 cores
TEST_SUBSET = 100
RETRAINED_WITHOUT = 0  # the class the `retrained` fixture never saw: airplane


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def cifar_jpeg(data_dir):
    if not os.path.exists(ARCHIVE):
        pytest.skip(f"the real CIFAR-10 images are not at {ARCHIVE} (only the project's own machines have them)")
    return load_dataset(ARCHIVE, data_dir)


def write_first(data, root, per_class):
    """The first `per_class` train and test images of each class of `data`, in its order, as
    train/<class>/NNNNN.png and test/<class>/NNNNN.png (PNG: the same pixels): the real images,
    for a make target whose fixed --subset would take more than a test's assertions need."""
    from data import subset_indices
    for split, (x, y) in (("train", (data.train_x, data.train_y)),
                          ("test", (data.test_x, data.test_y))):
        for i in subset_indices(y, per_class):
            folder = root / split / data.classes[y[i]]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i]).save(folder / f"{i:05d}.png")  # by name: the dataset's order
    return root


def train_toy(data, path, forget_class=None):
    """(checkpoint path, model, log): resnet20 trained with the recipe (batch 64, 4 epochs) on
    300 images per class, forget_class's left out."""
    torch.manual_seed(0)
    model = build_model("resnet20", 10)
    split = make_split(data, subset=SUBSET, test_subset=TEST_SUBSET, forget_class=forget_class)
    cfg = TrainConfig(arch="resnet20", epochs=4, batch_size=64)
    train_loader = Loader(data, split.retain, train_set=True, batch_size=cfg.batch_size,
                          shuffle=True, augment="crop-flip")
    test_loader = Loader(data, split.test, train_set=False,
                         batch_size=cli.eval_batch_size(torch.device("cpu")))
    log, _ = fit(model, train_loader, test_loader, cfg)
    save_model(path, model, {"arch": "resnet20"})
    return path, model, log


@pytest.fixture(scope="session")
def trained(cifar_jpeg, tmp_path_factory):
    """(checkpoint path, model, log): resnet20 trained with the recipe (batch 64, 4 epochs) on 300 images per class."""
    return train_toy(cifar_jpeg, str(tmp_path_factory.mktemp("ckpt") / "resnet20_full.pth"))


RETRAIN = {"epochs": 4, "batch_size": 64}  # unlearn.py's retrain with the session model's recipe


@pytest.fixture(scope="session")
def retrained(cifar_jpeg, trained, tmp_path_factory):
    """(checkpoint path, model): the gold standard of forgetting the class RETRAINED_WITHOUT
    (airplane, the one the session model knows best: 59% of its test images), made by unlearn.py's
    retrain from the session model: a fresh model, the session model's recipe and seed on its
    retain set (bitwise train_toy(..., forget_class=RETRAINED_WITHOUT), measured). One model for
    the forgetting test's retrain and the tests beneath the outputs: each costs 30 s on 2 cores."""
    split = make_split(cifar_jpeg, subset=SUBSET, test_subset=TEST_SUBSET,
                       forget_class=RETRAINED_WITHOUT)
    cfg = unlearn.RetrainConfig(**RETRAIN)
    loaders = unlearn.make_loaders(cifar_jpeg, split, cfg, torch.device("cpu"), 0)
    torch.manual_seed(0)
    model = unlearn.unlearn_retrain(trained[1], *loaders, cfg, torch.device("cpu"))
    path = str(tmp_path_factory.mktemp("ckpt") / "resnet20_no_airplane.pth")
    save_model(path, model, {"arch": "resnet20"})
    return path, model


def module_of(script):
    """The module a script path names: train.py -> train, studies/privacy.py -> studies.privacy."""
    return os.path.splitext(script)[0].replace("/", ".")


def command(script):
    """How a user starts `script` from the checkout: a top-level script by its path, one of
    studies/ as a module (python -m studies.privacy), with the checkout on PYTHONPATH so that it
    runs from any folder."""
    if os.path.dirname(script):
        return [sys.executable, "-m", module_of(script)], {"PYTHONPATH": ROOT}
    return [sys.executable, os.path.join(ROOT, script)], {}


def script_of(words):
    """A command line's script and arguments, as call takes them, from the words after the
    interpreter: [x.py, ...] as is, [-m, studies.x, ...] -> [studies/x.py, ...]."""
    if words[0] == "-m":
        return [words[1].replace(".", "/") + ".py", *words[2:]]
    return [os.path.relpath(words[0], ROOT) if os.path.isabs(words[0]) else words[0], *words[1:]]


def run_script(script, *args, cwd=ROOT):
    """Run one of the project's scripts in a fresh interpreter, as a user would."""
    argv, env = command(script)
    return subprocess.run([*argv, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=600, env={**os.environ, **env})


def call(script, *args):
    """A script's command line in this process: argv parsed and main() run inside the error boundary every script
    shares, as `python script ...` would, without the seconds a new interpreter costs. Returns a CompletedProcess
    (returncode, stdout, stderr). run_script is for what needs a process: signals, terminals, resource limits.
    script: a path from the checkout (train.py, studies/privacy.py)."""
    module = importlib.import_module(module_of(script))
    out, err = io.StringIO(), io.StringIO()
    argv, sys.argv = sys.argv, [os.path.join(ROOT, script), *map(str, args)]  # what a sidecar records as argv
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.run(lambda: module.main([str(a) for a in args]))
            code = 0
        except SystemExit as e:  # the interpreter would print a message given to sys.exit and exit with 1
            code = e.code if isinstance(e.code, int) or e.code is None else print(e.code, file=sys.stderr) or 1
        finally:
            sys.argv = argv
    return subprocess.CompletedProcess([script, *args], code or 0, out.getvalue(), err.getvalue())


def make(*args, cwd=None, py=sys.executable, timeout=900, threads=None):
    """make -C the checkout as a user types it, run from `cwd`: no install step (INSTALL=), this
    interpreter (or `py`, a stand-in that records its arguments) as PY; threads: OMP_NUM_THREADS of
    every script it runs (1 where jobs at once share the cores)."""
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    return subprocess.run(["make", "-C", ROOT, "--no-print-directory", "INSTALL=", f"PY={py}",
                           *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=env)


def make_commands(*args):
    """The script commands `make -n` lists for a target, in an order that runs them, as call takes
    them ([script, arguments...]); the recursive make lines make runs under -n are left out."""
    dry = make("-n", *args, threads=1)
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    lines = dry.stdout.replace("\\\n", " ").splitlines()
    words = [shlex.split(line) for line in lines if line.strip()]
    return [script_of(w[1:]) for w in words if w[0] == sys.executable]


def assert_clean_error(result, text):
    """Bad input: non-zero exit, no traceback, and a last line that says what is wrong."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert text in result.stderr.strip().splitlines()[-1], result.stderr


@pytest.fixture
def fake_cuda(monkeypatch):
    """pick_device's CUDA branch on a CPU: one device that says it is an H200; the fp32 flags restored after."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200 (stand-in)")
    previous = methods.set_ieee_fp32(False)
    benchmark = torch.backends.cudnn.benchmark
    yield
    methods.restore_fp32(previous)
    torch.backends.cudnn.benchmark = benchmark


def independent_logits(model, images, data):
    """Normalise with numpy, one forward pass of the whole set in eval mode."""
    x = (images / 255.0 - np.array(data.mean)) / np.array(data.std)
    with torch.no_grad():
        return model.eval()(torch.tensor(x, dtype=torch.float32).permute(0, 3, 1, 2))


def planes_to_rows(images):
    """CIFAR's on-disk layout, built by hand: per image 1024 red, then 1024 green, then 1024
    blue bytes."""
    return np.stack([np.concatenate([im[:, :, c].ravel() for c in range(3)]) for im in images])


def write_pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # torchvision's CIFAR files are protocol 2


# ------------------------------------------------------------------------- synthetic image folders

FOLDER_CLASSES = ("alpha", "beta", "gamma")


def write_images(folder, per_split, size=32):
    """train/<class>/NNN.png and test/<class>/NNN.png with random pixels, for FOLDER_CLASSES."""
    rng = np.random.default_rng(0)
    for split, per_class in per_split.items():
        for cls in FOLDER_CLASSES:
            (folder / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / split / cls / f"{i:03d}.png")
    return folder


def write_folder(root, sizes, shape=(32, 32)):
    """train/<class>/*.png and test/<class>/*.png with random pixels; returns {split: (images,
    labels)} in load order."""
    rng = np.random.default_rng(2)
    out = {}
    for split, per_class in sizes.items():
        xs, ys = [], []
        for label, cls in enumerate(FOLDER_CLASSES):  # written out of order below
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                x = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
                Image.fromarray(x).save(root / split / cls / f"{i:03d}.png")
                xs.append(x)
                ys.append(label)
        out[split] = (np.stack(xs), np.array(ys))
    return out


def write_classes(root, names, per_class=2):
    """train/<name>/*.png and test/<name>/*.png, random 8x8 pixels."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in names:
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
