"""The fast path does the plain path's math; bench.py runs end to end."""
import copy
import json

import numpy as np
import pytest
import torch

from conftest import ARCHIVE, call
from data import Loader
from models import build_model
from train import TrainConfig, train_epoch
from studies.bench import plain_loader, plain_train_epoch
from methods import METHODS


def test_fast_and_plain_paths_end_with_the_same_weights(cifar_jpeg):
    """Same batches in the same order (augmentation off), fp32: our Loader + train_epoch against a torchvision
    DataLoader over PIL images + the textbook loop."""
    torch.manual_seed(0)
    model = build_model("resnet20", 10)
    indices = np.arange(0, 50000, 500)  # 100 images, all classes
    ours, plain = copy.deepcopy(model), copy.deepcopy(model)
    opt_ours, _ = TrainConfig().optimizer(ours)
    opt_plain, _ = TrainConfig().optimizer(plain)
    train_epoch(ours, Loader(cifar_jpeg, indices, train_set=True, batch_size=32), opt_ours)
    plain_train_epoch(plain, plain_loader(cifar_jpeg, indices, train_set=True, batch_size=32, augment=False, workers=0,
                                   shuffle=False), opt_plain, torch.device("cpu"))
    for (name, a), b in zip(ours.state_dict().items(), plain.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5, rtol=1e-4), name
    assert not torch.equal(ours.fc.weight, model.fc.weight)  # it did train


@pytest.mark.slow  # a study end to end (in this process: its start-up is not what it tests)
def test_bench_runs_and_writes_json(cifar_jpeg, data_dir, tmp_path):
    r = call("studies/bench.py", "--dataset", ARCHIVE, "--data-dir", data_dir, "--arch",
             "resnet20", "--subset", 5, "--test-subset", 5, "--per-sample", 4, "--workers", 0,
             "--device", "cpu", "--out", tmp_path / "b.json")
    assert r.returncode == 0, r.stderr
    rows = json.load(open(tmp_path / "b.json"))["rows"]
    assert [row["measure"] for row in rows] == ["train epoch", "evaluate test set", "SSD importance (batch 64)",
                                                 "SSD importance (per-sample)", "ensemble rotation + jitter (32 px)"] + \
        [f"unlearn: {m}, 1 epoch" for m in METHODS]
    assert all(row["speedup"] > 0 and row["images"] > 0 for row in rows[:5])
    sizes = {row["measure"]: row["images"] for row in rows}  # 5 images a class: class 0 is the forget set
    assert sizes["unlearn: ga, 1 epoch"] == 5 and sizes["unlearn: finetune, 1 epoch"] == 45
    assert sizes["unlearn: ssd, 1 epoch"] == 55 and sizes["unlearn: scrub, 1 epoch"] == 50
