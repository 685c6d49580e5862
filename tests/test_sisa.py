"""SISA: shards, hash-named slice checkpoints that are reused, unlearning that retrains only what it must,
vote aggregation; and the whole path from the command line."""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn

import sisa as sisa_py
import train
from conftest import ARCHIVE, assert_clean_error, call
from data import Dataset, make_split
from models import Ensemble
from sisa import SisaConfig, shard_slices, train_sisa
from train import TrainConfig

CPU = torch.device("cpu")
CFG = TrainConfig(arch="resnet20", epochs=1, batch_size=16)
SISA = SisaConfig(shards=2, slices=3, slice_epochs=(1, 1, 1))


def test_a_random_forget_set_is_spread_over_every_shard():
    data = Dataset("toy", ("a", "b"), np.zeros((1000, 32, 32, 3), np.uint8), np.arange(1000) % 2,
                   np.zeros((10, 32, 32, 3), np.uint8), np.arange(10) % 2, (0.5,) * 3, (0.2,) * 3)
    split = make_split(data, forget_fraction=0.2, forget_seed=0)  # both seeds at their defaults, 0
    forgotten = [np.isin(np.concatenate(shard), split.forget).mean() for shard in shard_slices(split.train, 4, 5, 0)]
    assert all(0.14 < f < 0.26 for f in forgotten), forgotten  # binomial: 250 images a shard, sd 2.5%


def test_shards_and_slices_are_disjoint_complete_and_seeded():
    plan = shard_slices(np.arange(103), 4, 5, seed=0)
    parts = [s for shard in plan for s in shard]
    assert len(plan) == 4 and all(len(shard) == 5 for shard in plan)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(103))
    assert all(abs(len(p) - 103 / 20) < 1 for p in parts)
    assert all(np.array_equal(a, b) for a, b in zip(parts, [s for sh in shard_slices(np.arange(103), 4, 5, 0) for s in sh]))
    assert not np.array_equal(plan[0][0], shard_slices(np.arange(103), 4, 5, seed=1)[0][0])


@pytest.fixture()
def recorded(monkeypatch):
    """Every (indices) a slice was trained on, through the real training code."""
    calls = []
    real = sisa_py.train_slice

    def spy(data, indices, *args):
        calls.append(np.array(indices))
        return real(data, indices, *args)
    monkeypatch.setattr(sisa_py, "train_slice", spy)
    return calls


def test_slices_are_reused_and_unlearning_retrains_only_from_the_right_slice(cifar_jpeg, tmp_path, recorded):
    split = make_split(cifar_jpeg, subset=4)
    first = train_sisa(cifar_jpeg, split, CFG, SISA, str(tmp_path), CPU)
    assert len(recorded) == 6 and [s["trained"] for s in first["shards"]] == [[1, 2, 3], [1, 2, 3]]
    recorded.clear()
    again = train_sisa(cifar_jpeg, split, CFG, SISA, str(tmp_path), CPU)
    assert recorded == [] and again["members"] == first["members"]  # same data: every checkpoint reused

    plan = shard_slices(split.train, 2, 3, CFG.seed)
    forgotten = int(plan[1][1][0])  # in shard 1, slice 2
    unlearned = train_sisa(cifar_jpeg, make_split(cifar_jpeg, subset=4, forget_indices=[forgotten]), CFG, SISA,
                           str(tmp_path), CPU)
    assert [s["trained"] for s in unlearned["shards"]] == [[], [2, 3]]
    assert len(recorded) == 2 and not any(forgotten in r for r in recorded)
    assert unlearned["shards"][1]["checkpoints"][0] == first["shards"][1]["checkpoints"][0]  # slice 1 reused
    assert unlearned["members"][0] == first["members"][0] and unlearned["members"][1] != first["members"][1]
    retrained = np.concatenate([plan[1][0], plan[1][1]])
    assert np.array_equal(np.sort(recorded[0]), np.sort(retrained[retrained != forgotten]))  # slices 1-2 minus it


class Fixed(nn.Module):
    """A 'model' that returns given logits, whatever the input."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits)
        self.conv1 = nn.Conv2d(3, 1, 3)

    def forward(self, x):
        return self.logits


def test_vote_and_mean_softmax_match_a_hand_computation():
    members = [Fixed([[3.0, 1, 0], [0, 2, 1], [1, 0, 0]]),
               Fixed([[0.0, 2, 1], [0, 0, 5], [0, 1, 0]]),
               Fixed([[2.0, 0, 1], [0, 3, 0], [0, 0, 4]])]
    x = torch.zeros(3, 3, 32, 32)
    # votes: example 0 -> 0, 1, 0 = class 0; example 1 -> 1, 2, 1 = class 1; example 2 -> 0, 1, 2: a three-way tie,
    # broken by the mean probability.
    mean = torch.stack([m(x).softmax(1) for m in members]).mean(0)
    tie = int(mean[2].argmax())
    assert Ensemble(members, "vote")(x).argmax(1).tolist() == [0, 1, tie]
    assert torch.allclose(Ensemble(members, "mean-softmax")(x).exp(), mean, atol=1e-6)
    with pytest.raises(ValueError):
        Ensemble(members, "median")


def test_sisa_from_the_command_line(cifar_jpeg, data_dir, tmp_path):
    common = ["--dataset", ARCHIVE, "--data-dir", data_dir, "--subset", 4, "--test-subset", 2, "--device", "cpu"]
    sisa = ["train", "--arch", "resnet20", "--batch-size", 16, "--shards", 2, "--slices", 2, "--slice-epochs", "1,1",
            "--out", tmp_path / "sisa", *common]
    one = call("sisa.py", *sisa, "--shard", 1)  # a shard as its own job, as `make -j sisa` runs them
    assert one.returncode == 0 and not (tmp_path / "sisa" / "manifest_full.json").exists(), one.stderr
    r = call("sisa.py", *sisa)
    assert r.returncode == 0, r.stderr
    assert "shard 0: trained slices [1, 2]" in r.stdout and "shard 1: trained slices none (all reused)" in r.stdout
    assert_clean_error(call("sisa.py", *sisa, "--shard", 2), "--shard must be in 0..1")
    manifest = tmp_path / "sisa" / "manifest_full.json"
    u = call("sisa.py", "unlearn", "--model", manifest, "--forget-class", "cat", *common)
    assert u.returncode == 0, u.stderr
    split = make_split(cifar_jpeg, forget_class=3, subset=4)
    for shard, slices in enumerate(shard_slices(split.train, 2, 2, 0)):
        hit = [k for k, part in enumerate(slices, 1) if np.isin(part, split.forget).any()]
        expected = f"retrained slices {list(range(hit[0], 3))}" if hit else "untouched"
        assert f"shard {shard}: {expected}" in u.stdout
    assert "a full retrain of all shards" in u.stdout
    out = tmp_path / "sisa" / "cifar10-jpeg_resnet20_SISA_3_subset4.json"
    assert len(json.load(open(out))["members"]) == 2
    e = call("evaluate.py", "--model", out, "--forget-class", "cat", "--mia", *common)
    assert e.returncode == 0, e.stderr
    assert "(shards " in e.stdout  # the per-shard MIA mean beside the aggregate's
    bad = call("sisa.py", "train", "--arch", "resnet20", "--slices", 3, "--slice-epochs", "1,1", *common)
    assert bad.returncode != 0 and "gives 2 values for 3 slices" in bad.stderr


def test_the_old_sisa_commands_end_in_one_line_naming_sisa_py(tmp_path):
    """train.py --sisa and unlearn.py --method sisa moved to sisa.py: they fail as argparse does
    (exit 2) with the command to use, and train nothing."""
    for script, flags, instead in (
            ("train.py", ["--sisa", "--shards", 2, "--out", tmp_path / "s"], "python sisa.py train"),
            ("unlearn.py", ["--method", "sisa", "--model", tmp_path / "m.json", "--forget-class",
                            "cat", "--out", tmp_path / "u.json"], "python sisa.py unlearn")):
        r = call(script, *flags)
        last = r.stderr.strip().splitlines()[-1]
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert last.startswith(f"{script}: error: ") and instead in last, last
    assert not any(tmp_path.iterdir())


def test_the_reports_forget_positions_are_its_slices_and_sisa_redoes_what_the_report_says(tmp_path, monkeypatch):
    # The CIFAR-100 report: one random order of the 50,000 train indices; the forget set is positions [20000, 30000)
    # of it; 4 shards of 12,500 positions, each 5 slices of 2,500. So the forget set is slices 4-5 of shard 1 and
    # slices 1-2 of shard 2, written here from that description, not from our code
    data = Dataset("c100", tuple(f"c{k}" for k in range(100)), np.zeros((50000, 1, 1, 3), np.uint8),
                   np.arange(50000) % 100, np.zeros((100, 1, 1, 3), np.uint8), np.arange(100) % 100, (0.5,) * 3,
                   (0.2,) * 3)
    split = make_split(data, forget_positions=(20000, 30000), forget_seed=0)
    order = np.random.default_rng([0, 1]).permutation(np.arange(50000))  # the seeded order SISA uses
    slices = lambda s: [order[12500 * s + 2500 * k:12500 * s + 2500 * (k + 1)] for k in range(5)]
    expected = np.sort(np.concatenate([slices(1)[3], slices(1)[4], slices(2)[0], slices(2)[1]]))
    assert np.array_equal(split.forget, expected) and len(split.retain) == 40000
    plan = shard_slices(split.train, 4, 5, 0)
    assert all(np.array_equal(plan[s][k], slices(s)[k]) for s in range(4) for k in range(5))

    # the same design at a CPU's scale: 200 images, 4 shards x 5 slices of 10, forget positions [80, 120)
    small = Dataset("toy", ("a", "b"), np.random.default_rng(0).integers(0, 256, (200, 8, 8, 3), np.uint8),
                    np.arange(200) % 2, np.zeros((4, 8, 8, 3), np.uint8), np.arange(4) % 2, (0.5,) * 3, (0.2,) * 3)
    sisa = SisaConfig(shards=4, slices=5, slice_epochs=(1, 1, 1, 1, 1))
    cfg = TrainConfig(arch="resnet20", epochs=1, batch_size=32)
    first = train_sisa(small, make_split(small), cfg, sisa, str(tmp_path), CPU)
    calls, real = [], sisa_py.train_slice
    monkeypatch.setattr(sisa_py, "train_slice", lambda data, indices, cfg, epochs, *rest: calls.append(
        (np.sort(indices).tolist(), epochs)) or real(data, indices, cfg, epochs, *rest))
    after = train_sisa(small, make_split(small, forget_positions=(80, 120)), cfg, sisa, str(tmp_path), CPU)
    assert [s["trained"] for s in after["shards"]] == [[], [], [3, 4, 5], []]
    assert [s["carried"] for s in after["shards"]] == [[], [4, 5], [1, 2], []]
    assert after["members"][0] == first["members"][0] and after["members"][3] == first["members"][3]  # untouched
    slice3, final = (torch.load(tmp_path / after["shards"][1]["checkpoints"][k], weights_only=True) for k in (2, 4))
    assert after["shards"][1]["checkpoints"][2] == first["shards"][1]["checkpoints"][2]  # shard 1: its slice 3 ...
    assert all(torch.equal(slice3[k], final[k]) for k in slice3)  # ... is its final model
    order = np.random.default_rng([0, 1]).permutation(np.arange(200))
    kept = lambda s, *ks: np.sort(np.concatenate([order[50 * s + 10 * (k - 1):50 * s + 10 * k] for k in ks])).tolist()
    assert calls == [(kept(1, 1, 2, 3), 0), (kept(1, 1, 2, 3), 0),  # shard 1's slices 4, 5: carried, not trained
                     ([], 0), ([], 0),  # shard 2's slices 1, 2: the fresh model
                     (kept(2, 3), 1), (kept(2, 3, 4), 1), (kept(2, 3, 4, 5), 1)]  # shard 2 on its slices 3-5 only


# ------------------------------------------------------------------- manifests are never lost

@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A 3-class image folder (6 train, 2 test images a class) and the data flags that read it."""
    from PIL import Image
    root = tmp_path_factory.mktemp("sisa-folder")
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 2)):
        for name in ("alpha", "beta", "gamma"):
            (root / "toy" / split / name).mkdir(parents=True)
            for i in range(n):
                image = Image.fromarray(rng.integers(0, 256, (8, 8, 3), np.uint8))
                image.save(root / "toy" / split / name / f"{i}.png")
    return ["--dataset", root / "toy", "--data-dir", root / "cache", "--device", "cpu"]


def sisa_train(flags, out, *extra):
    return call("sisa.py", "train", "--arch", "resnet20", "--shards", 2, "--slices", 2,
                "--slice-epochs", "1,1", "--batch-size", 8, *flags, "--out", out, *extra)


def sisa_unlearn(flags, manifest, *extra):
    return call("sisa.py", "unlearn", "--model", manifest, "--no-eval", *flags, *extra)


def test_a_training_manifest_is_replaced_only_by_the_same_command_or_overwrite(folder, tmp_path):
    """OA08: train.py --sisa --seed 2 into the folder of the seed-0 set replaced its manifest."""
    import cli
    manifest = tmp_path / "a" / "manifest_full.json"
    assert sisa_train(folder, tmp_path / "a").returncode == 0
    before = manifest.read_bytes()
    r = sisa_train(folder, tmp_path / "a", "--seed", 2)
    assert_clean_error(r, f"--out {manifest} exists and is not")
    assert manifest.read_bytes() == before
    r = sisa_train(folder, tmp_path / "a")  # the same command: every slice reused, the same file
    assert r.returncode == 0 and "trained slices none (all reused)" in r.stdout, r.stderr
    with cli.lock(str(manifest)):  # another run writing it now: no second one at once
        assert_clean_error(sisa_train(folder, tmp_path / "a"), "another run is writing")
    assert sisa_train(folder, tmp_path / "a", "--seed", 2, "--overwrite").returncode == 0
    assert json.loads(manifest.read_text())["config"]["seed"] == 2


def test_an_unlearned_manifest_never_replaces_another_sets(folder, tmp_path):
    """OA07: --out naming another set's manifest replaced it with one naming slices elsewhere;
    OA09: two forget sets of one size shared the default name; CC02: two runs on one --out both
    said 'saved'."""
    import shutil

    import cli
    assert sisa_train(folder, tmp_path / "a").returncode == 0
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # another set, as trained: its own folder
    a, b = tmp_path / "a" / "manifest_full.json", tmp_path / "b" / "manifest_full.json"
    before = b.read_bytes()
    forget = ["--forget-fraction", "0.2"]
    r = sisa_unlearn(folder, a, *forget, "--out", b, "--overwrite")
    assert_clean_error(r, "goes in the folder of --model")
    r = sisa_unlearn(folder, a, *forget, "--out", a, "--overwrite")
    assert_clean_error(r, "would replace the input")
    assert b.read_bytes() == before
    for seed in (0, 1):
        r = sisa_unlearn(folder, a, *forget, "--forget-seed", seed)
        assert r.returncode == 0, r.stderr
    one, other = (tmp_path / "a" / f"toy_resnet20_SISA_forget0.2_seed{k}.json" for k in (0, 1))
    assert json.loads(one.read_text())["split"]["forget_seed"] == 0
    assert json.loads(other.read_text())["split"]["forget_seed"] == 1
    r = sisa_unlearn(folder, a, *forget, "--forget-seed", 1, "--out", one)
    assert_clean_error(r, "exists and is not")
    assert sisa_unlearn(folder, a, *forget, "--out", one).returncode == 0  # the same: its own
    with cli.lock(str(tmp_path / "a" / "u.json")):  # another run writing it now
        r = sisa_unlearn(folder, a, *forget, "--out", tmp_path / "a" / "u.json")
    assert_clean_error(r, "another run is writing")
    assert not (tmp_path / "a" / "u.json").exists()


@pytest.mark.parametrize("flags, part", [
    ({"forget_fraction": 0.2}, "forget0.2_seed0_subset8"),
    ({"forget_fraction": 0.2, "forget_seed": 1, "keep_half": 1}, "forget0.2_seed1_subset8_half1"),
    ({"forget_positions": (2, 6)}, "forget2-6_seed0_subset8"),
    ({"forget_indices": [0, 3, 5]}, "forget3_subset8")])
def test_one_forget_set_has_one_name_in_every_output(flags, part):
    """Issue 29: the forget part was spelt in three places that disagreed (unlearn.py --method
    sisa --forget-fraction 0.2 wrote forget10000, unlearn.py forget0.2_seed0): train.py's
    retrained name, unlearn.py's default --out and sisa.py's unlearned manifest now say the same."""
    import unlearn
    data = Dataset("toy", ("a", "b"), np.zeros((20, 8, 8, 3), np.uint8), np.arange(20) % 2,
                   np.zeros((2, 8, 8, 3), np.uint8), np.arange(2) % 2, (0.5,) * 3, (0.2,) * 3)
    split = make_split(data, subset=8, **flags)
    names = [train.default_out("resnet20", data, split, 8),
             unlearn.default_out(data, "resnet20", "SSD", split, 8),
             sisa_py.unlearned_name(data, "resnet20", split, 8)]
    assert names == [f"checkpoints/resnet20_toy_{part}.pth",
                     f"checkpoints/toy_resnet20_SSD_{part}.pth", f"toy_resnet20_SISA_{part}.json"]
    # a class keeps the published spellings: resnet18_cifar10_no_cat.pth, cifar10_resnet18_SSD_3.pth
    split = make_split(data, forget_class=1, subset=8)
    assert train.default_out("resnet20", data, split, 8) == "checkpoints/resnet20_toy_no_b_subset8.pth"
    assert sisa_py.unlearned_name(data, "resnet20", split, 8) == "toy_resnet20_SISA_1_subset8.json"
