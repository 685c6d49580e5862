"""Models: our ResNet18 is the model card's, checkpoints round-trip both ways, bad files give clear errors."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torchvision

from conftest import ROOT
from models import ARCHS, build_model, infer_arch, load_model, resnet18, save_model


def card_model(num_classes=10):
    """The published model card's snippet, verbatim in spirit: torchvision ResNet18, 3x3 stem, no max-pool."""
    model = torchvision.models.resnet18(weights=None)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    model.fc = nn.Linear(512, num_classes)
    return model


def test_our_checkpoint_loads_strict_into_the_card_snippet_with_identical_logits(tmp_path):
    torch.manual_seed(0)
    ours = resnet18(10).eval()
    save_model(str(tmp_path / "resnet18_cifar10_full.pth"), ours, {"note": "test"})
    theirs = card_model().eval()
    theirs.load_state_dict(torch.load(tmp_path / "resnet18_cifar10_full.pth", weights_only=True), strict=True)
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(ours(x), theirs(x))


def test_a_card_checkpoint_and_its_wrapped_forms_load_through_load_model(tmp_path):
    torch.manual_seed(1)
    theirs = card_model().eval()
    x = torch.randn(4, 3, 32, 32)
    forms = {"bare": theirs.state_dict(), "wrapped": {"state_dict": theirs.state_dict(), "epoch": 200},
             "ddp": {"module." + k: v for k, v in theirs.state_dict().items()}}
    for name, obj in forms.items():
        torch.save(obj, tmp_path / f"{name}.pth")
        ours = load_model(str(tmp_path / f"{name}.pth")).eval()
        assert torch.equal(ours(x), theirs(x)), name


def test_cifar_resnets_have_the_papers_parameter_counts():
    # He et al. (2016), Table 6: 0.27M, 0.46M, 0.66M, 0.85M parameters.
    for arch, millions in [("resnet20", 0.27), ("resnet32", 0.46), ("resnet44", 0.66), ("resnet56", 0.85)]:
        model = build_model(arch, 10)
        assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == millions, arch
        assert infer_arch(model.state_dict()) == (arch, 10)
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert infer_arch(build_model("resnet18", 100).state_dict()) == ("resnet18", 100)


def test_save_model_writes_a_plain_state_dict_and_a_sidecar(tmp_path):
    model = torch.compile(build_model("resnet20", 10), backend="eager")
    path = str(tmp_path / "sub" / "m.pth")
    save_model(path, model, {"config": {"lr": 0.1}, "metrics": {"acc": 1.0}})
    state = torch.load(path, weights_only=True)
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in state)
    assert all(v.device.type == "cpu" for v in state.values())
    meta = json.load(open(tmp_path / "sub" / "m.pth.json"))
    assert meta["config"] == {"lr": 0.1} and meta["versions"]["torch"] == torch.__version__ and "argv" in meta
    assert sorted(os.listdir(tmp_path / "sub")) == ["m.pth", "m.pth.json"]  # no temp files left


@pytest.mark.parametrize("content, message", [
    (None, "not found"),
    (b"this is not a checkpoint", "not a PyTorch checkpoint"),
    ([1, 2, 3], "holds no state_dict"),
])
def test_bad_checkpoints_give_one_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_model(str(path))


def test_other_architectures_and_class_counts_are_refused(tmp_path):
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), tmp_path / "r50.pth")
    with pytest.raises(ValueError, match="bottleneck ResNet"):
        load_model(str(tmp_path / "r50.pth"))
    state = torchvision.models.resnet34(weights=None).state_dict()
    state["conv1.weight"] = state["conv1.weight"][:, :, :3, :3]
    torch.save(state, tmp_path / "r34-small-stem.pth")
    with pytest.raises(ValueError, match="3 blocks per stage and a 3x3 stem"):
        load_model(str(tmp_path / "r34-small-stem.pth"))
    save_model(str(tmp_path / "r20.pth"), build_model("resnet20", 100), {})
    with pytest.raises(ValueError, match="resnet20 with 100 classes, expected resnet20 with 10"):
        load_model(str(tmp_path / "r20.pth"), num_classes=10)
    with pytest.raises(ValueError, match="expected resnet18"):
        load_model(str(tmp_path / "r20.pth"), arch="resnet18")
    assert set(ARCHS) == {"resnet18", "resnet20", "resnet32", "resnet44", "resnet56",
                          "resnet20b", "resnet32b", "resnet44b", "resnet56b",
                          "resnet18-imagenet", "resnet34-imagenet"}


@pytest.mark.slow  # fresh interpreters: 5 s
def test_the_scripts_start_without_torchvision_until_a_model_or_download_needs_it():
    # torchvision's import doubles a script's start-up (2 s of 4 on 2 cores): paid by resnet18 and
    # CIFAR downloads only, not by --help, resnet20 runs or the tests' many child processes
    code = ("import sys, train, unlearn, evaluate, sisa, report, data, models\n"
            "import studies.privacy, studies.reproduce_cards, studies.verify_published\n"
            "before = 'torchvision' in sys.modules\n"
            "models.build_model('resnet20', 10)\n"
            "after_resnet20 = 'torchvision' in sys.modules\n"
            "model = models.build_model('resnet18-imagenet', 10)\n"
            "print(before, after_resnet20, 'torchvision' in sys.modules, model.fc.out_features)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False", "True", "10"]
