"""Training: it learns, resume is bitwise, the retrain leaves the class out, bad input is refused cleanly."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ARCHIVE, ROOT, assert_clean_error, call, make, write_folder

TINY = ["--arch", "resnet20", "--subset", "20", "--test-subset", "10", "--batch-size", "32", "--device", "cpu"]


def test_training_learns(trained):
    _, _, log = trained
    # Measured: 32.8% test accuracy after 4 epochs on 300 images/class (chance is 10%).
    assert log[-1]["test_acc"] > 25
    assert log[-1]["loss"] < log[0]["loss"]
    assert [r["lr"] for r in log] == pytest.approx([0.1, 0.1 * (1 + 0.7071067811865476) / 2, 0.05, 0.1 * (1 - 0.7071067811865476) / 2])


@pytest.mark.slow  # three training runs: 4 s
def test_resume_ends_with_the_same_weights_bitwise(cifar_jpeg, data_dir, tmp_path):
    common = ["--dataset", ARCHIVE, "--data-dir", data_dir, "--epochs", "3", *TINY]
    straight = call("train.py", *common, "--out", tmp_path / "a.pth")
    assert straight.returncode == 0, straight.stderr
    first = call("train.py", *common, "--out", tmp_path / "b.pth", "--stop-after", "1")
    assert first.returncode == 0 and not (tmp_path / "b.pth").exists() and (tmp_path / "b.state.pt").exists()
    other = call("train.py", *common, "--out", tmp_path / "b.pth", "--resume", "--lr", "0.05")
    assert_clean_error(other, "other settings")
    resumed = call("train.py", *common, "--out", tmp_path / "b.pth", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr and "epoch 1/3" not in resumed.stdout
    a, b = (torch.load(tmp_path / f"{n}.pth", weights_only=True) for n in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "b.state.pt").exists()
    log = [json.loads(line) for line in open(tmp_path / "b.log.jsonl")]
    assert [r["epoch"] for r in log] == [1, 2, 3]


def test_retrain_without_a_class_uses_the_published_name_and_saves_the_split(cifar_jpeg, data_dir, tmp_path,
                                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = call("train.py", "--dataset", ARCHIVE, "--data-dir", data_dir, "--epochs", "1", "--forget-class", "cat", *TINY)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "checkpoints" / "resnet20_cifar10-jpeg_no_cat_subset20.pth"
    meta = json.load(open(f"{out}.json"))
    assert meta["split"]["forget_class"] == "cat" and meta["split"]["n_forget"] == 20 and meta["split"]["n_retain"] == 180
    assert meta["config"]["lr"] == 0.1 and meta["config"]["nesterov"] is True and meta["arch"] == "resnet20"


def test_help_shows_the_published_defaults():
    r = call("train.py", "--help")
    for text in ["(default: 200)", "(default: 128)", "(default: 0.1)", "(default: 0.9)", "(default: 0.0005)",
                 "(default: True)"]:
        assert text in r.stdout, text


@pytest.mark.parametrize("args, message", [
    (["--forget-class", "kitten"], "unknown class 'kitten'"),
    (["--epochs", "0"], "must be a positive integer"),
    (["--batch-size", "-1"], "must be a positive integer"),
    (["--dataset", "/no/such/folder"], "not found"),
    (["--forget-fraction", "1.5"], "argument --forget-fraction: must be a finite number in (0, 1)"),
])
def test_bad_input_is_refused_and_nothing_is_overwritten(cifar_jpeg, data_dir, tmp_path, args, message):
    out = tmp_path / "existing.pth"
    out.write_bytes(b"precious")
    r = call("train.py", "--dataset", ARCHIVE, "--data-dir", data_dir, *TINY, "--out", out, *args)
    assert_clean_error(r, message)
    assert out.read_bytes() == b"precious" and sorted(os.listdir(tmp_path)) == ["existing.pth"]


def torchrun(data_dir, out, *extra):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           os.path.join(ROOT, "train.py"), "--dataset", ARCHIVE, "--data-dir", data_dir, *map(str, TINY),
                           "--epochs", "2", "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_ddp_with_two_gloo_processes_saves_one_checkpoint_equal_across_ranks_and_resumes(cifar_jpeg, data_dir, tmp_path):
    r = torchrun(data_dir, tmp_path / "m.pth")
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(os.listdir(tmp_path)) == ["m.log.jsonl", "m.pth", "m.pth.json"]  # rank 0 writes
    meta = json.load(open(tmp_path / "m.pth.json"))
    assert meta["world_size"] == 2 and meta["ranks_agree"] is True
    assert r.stdout.count("epoch 2/2") == 1
    (tmp_path / "b").mkdir()
    first = torchrun(data_dir, tmp_path / "b" / "m.pth", "--stop-after", "1")
    assert first.returncode == 0 and sorted(os.listdir(tmp_path / "b")) == ["m.log.jsonl", "m.state.pt"], first.stderr[-2000:]
    resumed = torchrun(data_dir, tmp_path / "b" / "m.pth", "--resume")
    assert resumed.returncode == 0 and "epoch 1/2" not in resumed.stdout, resumed.stderr[-2000:]
    a, b = (torch.load(p, weights_only=True) for p in (tmp_path / "m.pth", tmp_path / "b" / "m.pth"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # stopped and resumed under torchrun = straight through


@pytest.mark.slow
def test_retrain_all_runs_jobs_at_once_and_keeps_finished_models(tmp_path):
    write_folder(tmp_path / "toy", {"train": 4, "test": 2})  # 3 classes
    command = ["retrain-all", "JOBS=2", "DEVICES=cpu cpu", f"DATASET={tmp_path / 'toy'}",
               f"DATA_DIR={tmp_path / 'cache'}", f"CHECKPOINTS={tmp_path / 'ckpt'}",
               "ARCH=resnet20", "EPOCHS=1", "EXTRA=--batch-size 4"]
    first = make(*command, timeout=300)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    made = sorted(p for p in os.listdir(tmp_path / "ckpt") if p.endswith(".pth"))
    assert made == ["resnet20_toy_no_alpha.pth", "resnet20_toy_no_beta.pth", "resnet20_toy_no_gamma.pth"]
    meta = json.load(open(tmp_path / "ckpt" / "resnet20_toy_no_beta.pth.json"))
    assert meta["split"]["forget_class"] == "beta"
    os.remove(tmp_path / "ckpt" / "resnet20_toy_no_gamma.pth")
    again = make(*command, timeout=300)
    assert again.returncode == 0 and again.stdout.count("saved ") == 1 and "no_gamma" in again.stdout  # only the missing one
