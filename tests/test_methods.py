"""methods.py is a file a user can copy alone: every method runs from a lone copy, on a torchvision ResNet18, with
plain DataLoaders on the CPU; report.py, which reads JSON, starts without torch. Then methods.py
on odd inputs: loaders without a batch, a one-shot generator, frozen layers; and the mode each
method returns the model in."""
import dataclasses
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import methods
import report
import unlearn
from conftest import ROOT

LONE = textwrap.dedent("""
    import dataclasses, sys
    import torch, torchvision
    from torch.utils.data import DataLoader, TensorDataset
    import methods

    project = {"cli", "data", "models", "train", "unlearn", "evaluate", "report", "published",
               "studies"}
    assert not project & set(sys.modules), project & set(sys.modules)
    torch.manual_seed(0)
    x, y = torch.randn(60, 3, 32, 32), torch.arange(60) % 10  # no last batch of one image (BatchNorm would refuse)
    forget = y == 3
    small = {"batch_size": 16, "epochs": 1, "noise_steps": 2, "noise_copies": 4}
    for name, (fn, config, _) in methods.METHODS.items():
        fields = {f.name for f in dataclasses.fields(config)}
        cfg = config(**{k: v for k, v in small.items() if k in fields}, **({"forget_batch_size": 8}
                     if "forget_batch_size" in fields else {}))
        spec = cfg.loaders()  # the loaders the official code builds, as the config declares them
        retain_loader = DataLoader(TensorDataset(x[~forget], y[~forget]), spec.retain_batch, shuffle=spec.shuffle)
        forget_loader = DataLoader(TensorDataset(x[forget], y[forget]), spec.forget_batch, shuffle=spec.shuffle)
        model = torchvision.models.resnet18(num_classes=10)
        before = [p.detach().clone() for p in model.parameters()]
        model = fn(model, retain_loader, forget_loader, cfg, torch.device("cpu"))
        changed = sum(int((p != b).sum()) for p, b in zip(model.parameters(), before))
        assert all(torch.isfinite(p).all() for p in model.parameters()), name
        print(name, changed)
""")


@pytest.mark.slow
def test_every_method_runs_from_a_lone_copy_of_methods_py(tmp_path):
    shutil.copy(os.path.join(ROOT, "methods.py"), tmp_path)
    (tmp_path / "run.py").write_text(LONE)
    r = subprocess.run([sys.executable, "run.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "2"})
    assert r.returncode == 0, r.stderr[-3000:]
    changed = dict(line.split() for line in r.stdout.splitlines())
    assert set(changed) == set(methods.METHODS)  # retrain needs the training recipe: unlearn.py's
    assert all(int(n) > 0 for name, n in changed.items() if name != "ssd"), changed  # each method trained


NORMALISING = textwrap.dedent("""
    import sys
    import torch, torchvision
    from torch.utils.data import DataLoader, Dataset
    import methods

    project = {"cli", "data", "models", "train", "unlearn", "evaluate"}
    assert not project & set(sys.modules), project & set(sys.modules)
    MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    torch.manual_seed(0)
    pixels, labels = torch.randint(0, 256, (24, 3, 32, 32)) / 255, torch.arange(24) % 10

    class Images(Dataset):
        def __init__(self, transform):
            self.transform = transform
        def __len__(self):
            return len(labels)
        def __getitem__(self, i):
            return self.transform(pixels[i]), labels[i]

    seen = []
    computed = methods.shrink_labels
    def recorded(original, x, y, cfg):  # the FGSM points and labels the method computes, kept
        points, targets = computed(original, x, y, cfg)
        seen.append((points, targets))
        return points, targets
    methods.shrink_labels = recorded

    def run(transform, model, **normalisation):
        cfg = methods.BoundaryShrinkConfig(epochs=1, batch_size=8, lr=0.01, **normalisation)
        seen.clear()
        loader = DataLoader(Images(transform), cfg.batch_size)  # in order: the same batches
        methods.unlearn_boundary_shrink(model, None, loader, cfg, torch.device("cpu"))
        return list(seen)

    normalize = torchvision.transforms.Normalize(MEAN, STD)  # a user's DataLoader normalises
    def net(first):  # the same weights each time: the method trains the model it is given
        torch.manual_seed(1)
        nn = torch.nn
        return nn.Sequential(first, nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    given = run(normalize, net(torch.nn.Identity()), mean=MEAN, std=STD)
    as_pixels = run(torch.nn.Identity(), net(normalize))  # the model normalises inside
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    for (a, la), (b, lb) in zip(given, as_pixels, strict=True):
        assert torch.equal(torch.round((a * std + mean) * 255), torch.round(b * 255)), "points"
        assert torch.equal(la, lb), "labels"
    unsaid = run(normalize, net(torch.nn.Identity()))  # normalised images taken as pixels
    assert any(not torch.equal(torch.round((a * std + mean) * 255), torch.round(u * 255))
               for (a, _), (u, _) in zip(given, unsaid)), "without mean and std: other points"
    print("same", len(given))
""")


@pytest.mark.slow  # a lone copy run in a subprocess, as the test above
def test_boundary_shrink_on_a_normalising_dataloader_attacks_the_pixels(tmp_path):
    """A lone copy: boundary-shrink on a DataLoader with torchvision's Normalize, told the
    normalisation, computes the FGSM points and labels it computes on the same images as pixels
    (the model normalising inside)."""
    shutil.copy(os.path.join(ROOT, "methods.py"), tmp_path)
    (tmp_path / "run.py").write_text(NORMALISING)
    r = subprocess.run([sys.executable, "run.py"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=600, env={**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "2"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["same", "3"]  # three batches of 8 compared


def test_report_reads_json_without_torch_and_knows_every_method():
    r = subprocess.run([sys.executable, "-c", "import report, sys; print('torch' in sys.modules)"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "False", r.stderr
    assert list(report.METHOD_ORDER) == list(unlearn.METHODS)



# ------------------------------------------------------------- methods.py on odd inputs (issue 32)

CPU = torch.device("cpu")
SMALL = {"batch_size": 8, "forget_batch_size": 8, "epochs": 1, "noise_steps": 2, "noise_copies": 4}
NEVER_READ_FORGET = {"finetune", "ct", "l1-sparse"}  # their official code never reads it
NEVER_READ_RETAIN = {"ga", "boundary-shrink", "boundary-expand"}
EVAL_MODE = {"ssd", "lfssd", "neggrad+", "ct", "msg"}  # as METHODS' comment says; the rest: train


def tiny():
    """A small convnet (conv with a bias, BN, linear) and its retain and forget images (32 and 8,
    8x8 pixels)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    x, y = torch.randn(40, 3, 8, 8), torch.arange(40) % 10
    forget = y == 3
    retain = x[~forget][:32], y[~forget][:32]
    return model, retain, (x[forget].repeat(2, 1, 1, 1), y[forget].repeat(2))


def config(name, **extra):
    config_class = methods.METHODS[name][1]
    fields = {f.name for f in dataclasses.fields(config_class)}
    return config_class(**{k: v for k, v in {**SMALL, **extra}.items() if k in fields})


def batches(images, batch_size=8):
    x, y = images
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(y), batch_size)]


class NoBatch(DataLoader):
    """drop_last with fewer images than a batch: a DataLoader that yields nothing. Its fourth pass
    fails the test, so that a method cycling over it (advneggrad never returned) ends."""

    def __init__(self, images):
        super().__init__(TensorDataset(*(t[:3] for t in images)), batch_size=8, drop_last=True)
        self.passes = 0

    def __iter__(self):
        self.passes += 1
        assert self.passes <= 3, "the method keeps iterating a loader without a batch: a hang"
        return super().__iter__()


@pytest.mark.parametrize("name", list(methods.METHODS))
def test_a_forget_loader_without_a_batch_is_one_clear_error(name):
    model, retain, forget = tiny()
    fn, empty = methods.METHODS[name][0], NoBatch(forget)
    if name in NEVER_READ_FORGET:  # never read, so never checked: it trains on the retain set
        fn(model, batches(retain), empty, config(name), CPU)
        assert empty.passes == 0
        return
    message = "the forget loader yielded no batch: an empty forget set, drop_last with fewer"
    with pytest.raises(ValueError, match=message):
        fn(model, batches(retain), empty, config(name), CPU)


@pytest.mark.parametrize("name", sorted(set(methods.METHODS) - NEVER_READ_RETAIN))
def test_a_retain_loader_without_a_batch_is_one_clear_error(name):
    model, retain, forget = tiny()
    with pytest.raises(ValueError, match="the retain loader yielded no batch"):
        methods.METHODS[name][0](model, NoBatch(retain), batches(forget), config(name), CPU)


def test_an_empty_list_as_the_forget_set_is_the_same_error():
    model, retain, _ = tiny()
    with pytest.raises(ValueError, match="the forget loader yielded no batch"):
        methods.unlearn_ssd(model, batches(retain), [], config("ssd"), CPU)


def test_a_one_shot_generator_is_refused_when_read_twice_and_serves_one_pass():
    model, retain, forget = tiny()
    # SSD reads the forget set for I_f, then as part of D; GA once per epoch
    with pytest.raises(ValueError, match="the forget loader yielded no batch"):
        methods.unlearn_ssd(model, batches(retain), iter(batches(forget)), config("ssd"), CPU)
    with pytest.raises(ValueError, match="the forget loader yielded no batch"):
        methods.unlearn_ga(model, None, iter(batches(forget)), config("ga", epochs=2), CPU)
    before = [p.detach().clone() for p in model.parameters()]
    methods.unlearn_ga(model, None, iter(batches(forget)), config("ga", lr=0.1), CPU)  # one pass
    assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before))


def frozen_but_fc(model):
    for p in model.parameters():
        p.requires_grad_(False)
    model[-1].requires_grad_(True)
    return model


def test_ct_refuses_frozen_convolutions_before_changing_anything():
    model, retain, forget = tiny()
    model = frozen_but_fc(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"ct transposes every convolution and retrains it, but 1 "
                                         r"of 1 are frozen \(the first: 0\); unfreeze them"):
        methods.unlearn_ct(model, batches(retain), batches(forget), config("ct"), CPU)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_msg_on_frozen_convolutions_is_one_clear_error():
    model, retain, forget = tiny()
    with pytest.raises(ValueError, match="msg needs the gradient of every convolution, and 0 has"):
        methods.unlearn_msg(frozen_but_fc(model), batches(retain), batches(forget), config("msg"),
                            CPU)


@pytest.mark.parametrize("name", list(methods.METHODS))
def test_the_model_comes_back_in_the_mode_methods_py_documents(name):
    model, retain, forget = tiny()
    model = methods.METHODS[name][0](model, batches(retain), batches(forget), config(name), CPU)
    assert model.training == (name not in EVAL_MODE)


def test_unlearn_py_does_not_re_export_the_methods():
    """A method or config is imported from methods, as the README says; unlearn.py adds retrain."""
    for fn, config_class, _ in methods.METHODS.values():
        assert not hasattr(unlearn, fn.__name__), fn.__name__
        assert not hasattr(unlearn, config_class.__name__), config_class.__name__
    assert set(unlearn.METHODS) - set(methods.METHODS) == {"retrain"}
