"""Evaluation: every metric equals an independent computation; the CLI prints the table and writes JSON."""
import json

import numpy as np
import torch
import torch.nn.functional as F

from conftest import (ARCHIVE, SUBSET, TEST_SUBSET, assert_clean_error, call,
                      independent_logits)
from data import make_split
from evaluate import evaluate_model, mia_score
from models import build_model, save_model


def test_metrics_equal_an_independent_computation(cifar_jpeg, trained):
    _, model, _ = trained
    d = cifar_jpeg
    split = make_split(d, forget_class=3, subset=SUBSET // 3, test_subset=TEST_SUBSET)
    m = evaluate_model(model, d, split, torch.device("cpu"), batch_size=77, mia=True)
    logits = independent_logits(model, d.test_x[split.test], d)
    labels = torch.tensor(d.test_y[split.test])
    losses = F.cross_entropy(logits, labels, reduction="none")
    hit = logits.argmax(1) == labels
    cat = labels == 3
    assert np.isclose(m["test"]["acc"], 100 * hit.float().mean().item())
    assert np.isclose(m["test_forget"]["acc"], 100 * hit[cat].float().mean().item())
    assert np.isclose(m["test_retain"]["loss"], losses[~cat].mean().item(), atol=1e-5)
    top5 = torch.tensor([labels[i].item() in logits[i].topk(5).indices.tolist() for i in range(len(labels))])
    assert np.isclose(m["test"]["top5"], 100 * top5.float().mean().item())
    for c in range(10):
        assert np.isclose(m["per_class"][c], 100 * hit[labels == c].float().mean().item())
        assert m["confusion"][c][5] == int(((labels == c) & (logits.argmax(1) == 5)).sum())
    forget_logits = independent_logits(model, d.train_x[split.forget], d)
    forget_losses = F.cross_entropy(forget_logits, torch.tensor(d.train_y[split.forget]), reduction="none")
    assert np.isclose(m["train_forget"]["loss"], forget_losses.mean().item(), atol=1e-5)
    assert np.isclose(m["mia"], mia_score(forget_losses.numpy(), losses[cat].numpy()), atol=1e-6)


def test_cli_table_json_and_gap_to_the_retrained_model(cifar_jpeg, data_dir, trained, tmp_path):
    path, _, _ = trained
    r = call("evaluate.py", "--model", path, "--retrained", path, "--dataset", ARCHIVE, "--data-dir", data_dir,
                   "--subset", 50, "--test-subset", 50, "--forget-class", "cat", "--mia", "--device", "cpu",
                   "--json", tmp_path / "out.json")
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith(f"| {path}")]
    assert len(rows) == 2 and rows[0] == rows[1] and rows[0].endswith("| 0.00 | - |")  # a model is 0 away from itself
    assert "| Model | Forget acc (loss) | Retain acc (loss) |" in r.stdout and "| cat |" in r.stdout
    out = json.load(open(tmp_path / "out.json"))
    m = out["models"][path]
    assert out["split"]["forget_class"] == "cat" and out["split"]["n_forget"] == 50
    assert m["test_forget"]["n"] == 50 and 0 <= m["mia"] <= 1 and len(m["confusion"]) == 10
    assert f"{m['test_forget']['acc']:.2f}% ({m['test_forget']['loss']:.3f})" in rows[0]


def test_cli_refuses_bad_checkpoints_without_writing(cifar_jpeg, data_dir, tmp_path):
    (tmp_path / "corrupt.pth").write_bytes(b"\x00garbage")
    save_model(str(tmp_path / "c100.pth"), build_model("resnet20", 100), {})
    (tmp_path / "out.json").write_text('{"kind": "evaluation", "keep": 1}')  # an earlier evaluation's: replaceable
    common = ["--dataset", ARCHIVE, "--data-dir", data_dir, "--device", "cpu", "--json", tmp_path / "out.json"]
    for model, message in [("corrupt.pth", "not a PyTorch checkpoint"), ("missing.pth", "not found"),
                           ("c100.pth", "with 100 classes, expected resnet20 with 10")]:
        assert_clean_error(call("evaluate.py", "--model", tmp_path / model, *common), message)
    assert (tmp_path / "out.json").read_text() == '{"kind": "evaluation", "keep": 1}'
