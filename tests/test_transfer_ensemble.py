"""Transfer from ImageNet weights (a locally made weight file in torchvision's format) and ensembles."""
import numpy as np
import pytest
import torch
import torchvision

import models
import train
from conftest import ARCHIVE, assert_clean_error, call, run_script
from data import Loader, make_split
from models import Ensemble, build_model, input_size
from train import EnsembleConfig, TrainConfig, TransferConfig, fit, train_epoch


@pytest.fixture()
def imagenet_file(tmp_path, monkeypatch):
    """resnet18-f37072fd.pth in TORCH_HOME/hub/checkpoints, where torchvision's download cache keeps it."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(5)
    state = torchvision.models.resnet18(weights=None).state_dict()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    return state


def test_pretrained_weights_load_and_a_step_trains_at_224(cifar_jpeg, imagenet_file):
    model = build_model("resnet18-imagenet", 10, pretrained=True)
    ours = model.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in imagenet_file.items() if not k.startswith("fc."))
    assert ours["fc.weight"].shape == (10, 512) and input_size(model) == 224
    loader = Loader(cifar_jpeg, np.arange(4), train_set=True, batch_size=4, shuffle=True, augment="crop-flip",
                    size=input_size(model))
    x, _ = next(iter(loader))
    assert x.shape == (4, 3, 224, 224)
    assert torch.equal(x[:, :, ::7, ::7].repeat_interleave(7, 2).repeat_interleave(7, 3), x)  # nearest upsampling
    optimizer, _ = TransferConfig().optimizer(model)
    before = model.layer1[0].conv1.weight.clone()
    train_epoch(model, loader, optimizer)
    assert not torch.equal(before, model.layer1[0].conv1.weight)


def test_layer_wise_learning_rates_are_the_reports():
    model = build_model("resnet18-imagenet", 10)
    optimizer, scheduler = TransferConfig().optimizer(model)
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["betas"] == (0.9, 0.999)
    groups = {g["lr"]: {id(p) for p in g["params"]} for g in optimizer.param_groups}
    assert groups[1e-3] == {id(model.fc.weight), id(model.fc.bias)}
    assert len(groups[1e-4]) == len(list(model.parameters())) - 2
    assert isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR)


@pytest.mark.slow  # a fresh interpreter: 5 s
def test_offline_without_weights_is_one_clear_error(cifar_jpeg, data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("no network")
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(FileNotFoundError, match=r"put https://download.pytorch.org/models/resnet34-b627a593.pth at .*hub"):
        build_model("resnet34-imagenet", 100, pretrained=True)
    # In a subprocess the download really runs: TORCH_HOME has no hub/checkpoints folder, so it fails even online.
    r = run_script("train.py", "--recipe", "transfer", "--dataset", ARCHIVE, "--subset", 1, "--device", "cpu",
                   "--data-dir", data_dir, "--out", tmp_path / "t.pth")
    assert_clean_error(r, "ImageNet weights not found and not downloadable: put https://download.pytorch.org/models/resnet18")
    assert not (tmp_path / "t.pth").exists()


def test_mean_softmax_ensemble_equals_a_hand_computation():
    torch.manual_seed(0)
    members = [build_model("resnet20", 10).eval() for _ in range(3)]
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        expected = sum(m(x).softmax(1) for m in members) / 3
        assert torch.allclose(Ensemble(members).eval()(x).exp(), expected, atol=1e-6)


def test_early_stopping_stops_at_the_right_epoch_and_restores_the_best_weights(cifar_jpeg, monkeypatch):
    scripted = iter([10.0, 30.0, 20.0, 25.0, 28.0, 50.0])  # best at epoch 2; patience 2 -> stop after epoch 4
    snapshots = []

    def accuracy(model, loader, amp=None):
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(scripted)
    monkeypatch.setattr(train, "accuracy", accuracy)
    split = make_split(cifar_jpeg, subset=3, val_fraction=0.2)
    cfg = TrainConfig(arch="resnet20", epochs=6, batch_size=8, patience=2)
    model = build_model("resnet20", 10)
    loader = Loader(cifar_jpeg, split.retain, train_set=True, batch_size=8, shuffle=True, augment="crop-flip")
    log, done = fit(model, loader, None, cfg, val_loader=Loader(cifar_jpeg, split.val, train_set=True, batch_size=8))
    assert done and [r["epoch"] for r in log] == [1, 2, 3, 4]
    assert all(torch.equal(v, snapshots[1][k]) for k, v in model.state_dict().items())
    assert len(split.val) == 6 and not np.isin(split.val, split.retain).any()


def test_ensemble_recipe_defaults_and_augmentation(cifar_jpeg):
    cfg = EnsembleConfig()
    assert (cfg.batch_size, cfg.patience, cfg.val_fraction, cfg.arch, cfg.augment) == (512, 50, 0.1, "resnet18-imagenet", "rotate-jitter")
    batches = [next(iter(Loader(cifar_jpeg, np.arange(6), train_set=True, batch_size=6, shuffle=True,
                                augment="rotate-jitter", seed=s, size=224)))[0]
               for s in (1, 1, 2)]
    assert batches[0].shape == (6, 3, 224, 224)
    assert torch.equal(batches[0], batches[1]) and not torch.equal(batches[0], batches[2])


def test_ensemble_cli_reports_members_and_the_ensemble(cifar_jpeg, data_dir, trained, tmp_path):
    torch.manual_seed(1)
    models.save_model(str(tmp_path / "other.pth"), build_model("resnet20", 10), {})
    r = call("evaluate.py", "--ensemble", "--model", trained[0], "--model", tmp_path / "other.pth",
                   "--dataset", ARCHIVE, "--data-dir", data_dir, "--subset", 10, "--test-subset", 10,
                   "--forget-class", "cat", "--mia", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith("| ") and "%" in line and "|---" not in line]
    assert [row.split(" | ")[0] for row in rows[:3]] == [f"| {trained[0]}", f"| {tmp_path / 'other.pth'}", "| ensemble"]
