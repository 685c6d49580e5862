"""The CIFAR-100 report's starting point, offline: option-B CIFAR ResNets (chenyaofo/pytorch-cifar-models' layout),
its published weights by short name from a stand-in release folder (the sha256 prefix of the file name checked),
and the normalisation a model was trained with used by every script."""
import hashlib
import json
import shutil

import pytest
import torch
import torch.nn.functional as F

import models
import published
from conftest import assert_clean_error, call, make, planes_to_rows, write_classes, write_pickle
from models import build_model, infer_arch, load_model, save_model


def reference_forward(state, x, n):
    """ResNet-(6n+2) for CIFAR as the description goes, written out with functional ops: a 3x3 stem (16 channels)
    + BN + ReLU; three stages of n basic blocks (16, 32, 64 channels; the first block of stages 2 and 3 with stride
    2 and a projection shortcut, a 1x1 stride-2 convolution + BN, named downsample.0 / downsample.1); global average
    pooling; a linear classifier. BatchNorm in eval mode (running statistics)."""
    def bn(h, name):
        return F.batch_norm(h, state[f"{name}.running_mean"], state[f"{name}.running_var"], state[f"{name}.weight"],
                            state[f"{name}.bias"], training=False, eps=1e-5)
    h = F.relu(bn(F.conv2d(x, state["conv1.weight"], padding=1), "bn1"))
    for stage in (1, 2, 3):
        for i in range(n):
            p = f"layer{stage}.{i}"
            stride = 2 if stage > 1 and i == 0 else 1
            out = F.relu(bn(F.conv2d(h, state[f"{p}.conv1.weight"], stride=stride, padding=1), f"{p}.bn1"))
            out = bn(F.conv2d(out, state[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
            shortcut = h if stride == 1 else bn(F.conv2d(h, state[f"{p}.downsample.0.weight"], stride=2),
                                                f"{p}.downsample.1")
            h = F.relu(out + shortcut)
    return F.linear(h.mean((2, 3)), state["fc.weight"], state["fc.bias"])


@pytest.mark.parametrize("depth", [20, 32, 56])
def test_option_b_resnets_are_the_described_network(depth):
    torch.manual_seed(0)
    model = build_model(f"resnet{depth}b", 100).eval()
    with torch.no_grad():  # statistics and affine parameters away from their defaults, so that each one matters
        for name, buffer in model.named_buffers():
            if "running" in name:
                buffer.uniform_(0.5, 1.5) if "var" in name else buffer.normal_(0, 0.1)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    state = model.state_dict()
    n = (depth - 2) // 6
    # option A's entries (stem 6, each block 12, fc 2) and two projections of 6 (conv, and BN's 5): 200 for n = 5
    assert len(state) == 6 + 12 * 3 * n + 2 + 12 and (depth != 32 or len(state) == 200)
    assert [k for k in state if "downsample" in k][0] == "layer2.0.downsample.0.weight"
    assert infer_arch(state) == (f"resnet{depth}b", 100)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), reference_forward(state, x, n), atol=1e-5)


def test_option_b_initialisation_is_chenyaofos():
    # convolutions Kaiming-normal (fan_out, relu): std sqrt(2 / (out_channels * k * k)); BatchNorm 1 and 0
    torch.manual_seed(0)
    model = build_model("resnet56b", 100)
    convs = [(name, p) for name, p in model.named_parameters() if p.dim() == 4]
    for name, w in convs:
        fan_out = w.shape[0] * w.shape[2] * w.shape[3]
        assert abs(w.std().item() / (2 / fan_out) ** 0.5 - 1) < (0.35 if w.numel() < 500 else 0.1), name
    assert all((m.weight == 1).all() and (m.bias == 0).all() for m in model.modules()
               if isinstance(m, torch.nn.BatchNorm2d))


@pytest.fixture
def release(tmp_path, monkeypatch):
    """A stand-in for chenyaofo/pytorch-cifar-models' release folder ($CIFAR_MODELS_URL), holding a resnet32b of
    100 classes under the published file name, and an empty torch hub cache."""
    folder = tmp_path / "release"
    folder.mkdir()
    monkeypatch.setenv("CIFAR_MODELS_URL", folder.as_uri())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.manual_seed(0)
    torch.save(build_model("resnet32b", 100).state_dict(), tmp_path / "m.pt")
    return folder, tmp_path / "m.pt"


def publish(folder, source, name):
    """Copies `source` under the published file name, whose sha256 prefix it will not match (a stand-in cannot),
    and returns the name to use: the published one with the prefix replaced by the stand-in's own."""
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    file = published.PUBLISHED_CIFAR_MODELS[name][0]
    shutil.copy(source, folder / file.replace(file.rsplit("-", 1)[1].split(".")[0], digest[:8]))
    return digest[:8]


def test_a_published_name_downloads_once_checks_its_sha256_prefix_and_carries_its_normalisation(release,
                                                                                                monkeypatch):
    folder, source = release
    name = published.CIFAR_MODELS + "cifar100_resnet32"
    file = published.PUBLISHED_CIFAR_MODELS["cifar100_resnet32"][0]
    shutil.copy(source, folder / file)  # the published file name with a sha256 prefix this file does not have
    with pytest.raises(ValueError, match=r"sha256 is [0-9a-f]{64}, not 84213ce6\.\.\. as its name says"):
        load_model(name)
    prefix = publish(folder, source, "cifar100_resnet32")
    monkeypatch.setitem(published.PUBLISHED_CIFAR_MODELS, "cifar100_resnet32", (f"cifar100_resnet32-{prefix}.pt", 70.16))
    model = load_model(name)
    assert infer_arch(model.state_dict()) == ("resnet32b", 100)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 torch.load(source, weights_only=True).values()))
    assert models.normalization_of(name) == ((0.5070, 0.4865, 0.4409), (0.2673, 0.2564, 0.2761))
    (folder / f"cifar100_resnet32-{prefix}.pt").unlink()
    assert load_model(name) is not None  # the cached copy serves, offline
    with pytest.raises(ValueError, match="unknown; the published ones are"):
        models.fetch(published.CIFAR_MODELS + "cifar100_resnet99")


def test_every_script_normalises_as_the_model_was_trained(tmp_path):
    write_classes(tmp_path / "toy", ["alpha", "beta", "gamma"], per_class=4)
    flags = ["--dataset", tmp_path / "toy", "--data-dir", tmp_path / "cache", "--device", "cpu"]
    r = call("train.py", "--arch", "resnet20b", "--epochs", "1", "--batch-size", "8", "--out", tmp_path / "m.pth",
             *flags)
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "m.pth.json").read_text())
    own = meta["normalization"]
    assert meta["arch"] == "resnet20b" and len(own["mean"]) == 3  # the dataset's own statistics, recorded
    meta["normalization"] = {"mean": [0.25, 0.5, 0.75], "std": [0.5, 0.5, 0.5]}  # as if trained with others
    (tmp_path / "m.pth.json").write_text(json.dumps(meta))
    r = call("evaluate.py", "--model", tmp_path / "m.pth", "--json", tmp_path / "e.json", *flags)
    assert r.returncode == 0 and "normalising as" in r.stderr and "mean (0.25, 0.5, 0.75)" in r.stderr
    r = call("unlearn.py", "--method", "ga", "--epochs", "1", "--model", tmp_path / "m.pth", "--forget-class",
             "alpha", "--out", tmp_path / "u.pth", "--no-eval", *flags)
    assert r.returncode == 0, r.stderr
    unlearned = json.loads((tmp_path / "u.pth.json").read_text())
    assert unlearned["normalization"]["mean"] == [0.25, 0.5, 0.75]
    save_model(str(tmp_path / "other.pth"), build_model("resnet20b", 3),
               {"normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}})
    assert_clean_error(call("evaluate.py", "--model", tmp_path / "m.pth", "--model", tmp_path / "other.pth", *flags),
                       "evaluate them in separate runs")


def write_cifar100(root, train_per_class=7, test_per_class=3):
    """A synthetic CIFAR-100 in torchvision's extracted format, every class present in both splits."""
    import numpy as np
    rng = np.random.default_rng(1)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for file, per_class in (("train", train_per_class), ("test", test_per_class)):
        n = 100 * per_class
        x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        write_pickle(folder / file, {"data": planes_to_rows(x), "fine_labels": (np.arange(n) % 100).tolist(),
                                     "coarse_labels": [0] * n, "filenames": [f"{i}.png" for i in range(n)]})
    write_pickle(folder / "meta", {"fine_label_names": [f"c{i:02d}" for i in range(100)], "coarse_label_names": ["x"]})


@pytest.fixture(scope="module")
def c100_small(tmp_path_factory):
    """make reproduce-c100-small's own command line, run in this process on a synthetic CIFAR-100
    and a stand-in release folder holding one resnet32b: first stopped by Ctrl-C during its
    fine-tuning, then the same command to the end. The stand-ins stay in place for the tests that
    use it. (argv, the folder, the interruption's exit, the files it left, the run)."""
    import shlex
    tmp_path = tmp_path_factory.mktemp("c100")
    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path / "release"
        folder.mkdir()
        patch.setenv("CIFAR_MODELS_URL", folder.as_uri())
        patch.setenv("TORCH_HOME", str(tmp_path / "torch"))
        # one test image a class: the steps pass over the test set again and again (six times for
        # the published ResNet32 alone), and no assertion counts its images
        write_cifar100(tmp_path / "data", test_per_class=1)
        name = "cifar100_resnet32"  # a stand-in in the release layout
        torch.manual_seed(32)
        torch.save(build_model("resnet32b", 100).state_dict(), tmp_path / f"{name}.pt")
        prefix = publish(folder, tmp_path / f"{name}.pt", name)
        patch.setitem(published.PUBLISHED_CIFAR_MODELS, name,
                      (f"{name}-{prefix}.pt", published.PUBLISHED_CIFAR_MODELS[name][1]))
        # make's own command line, run in this process (the stand-ins' names live in the
        # patched table above); one model: the second adds time, not checks
        dry = make("-n", "reproduce-c100-small", f"DATA_DIR={tmp_path / 'data'}",
                   f"C100_DIR={tmp_path / 'c100'}", "EXTRA=--models cifar100_resnet32")
        argv = shlex.split(dry.stdout.replace("\\\n", " "))
        assert argv[1:3] == ["-m", "studies.reproduce_c100"], dry.stdout
        out = tmp_path / "c100-small"
        interrupted = interrupt_the_fine_tuning(argv[3:], patch)
        left = sorted(str(p.relative_to(out)) for p in out.rglob("*.json"))
        run = call("studies/reproduce_c100.py", *argv[3:])  # the same command continues
        yield argv[3:], out, interrupted, left, run


@pytest.mark.slow
def test_reproduce_c100_small_end_to_end(c100_small):
    _, out, _, _, r = c100_small
    assert r.returncode == 0, r.stderr[-3000:]
    report = (out / "c100.md").read_text()
    results = json.loads((out / "c100.json").read_text())
    assert results["n_forget"] == 100 and "positions 200:300" in report
    assert list(results["models"]) == ["cifar100_resnet32"]
    for name in ("cifar100_resnet32",):
        model = results["models"][name]
        sidecar = json.loads((out / "finetune" / f"{name}.pth.json").read_text())
        assert sidecar["normalization"]["mean"] == [0.5070, 0.4865, 0.4409]  # the weights' own, not the dataset's
        assert sidecar["split"]["forget_positions"] == [200, 300] and sidecar["config"]["epochs"] == 1
        assert model["after"]["test"]["acc"] == sidecar["metrics"]["test"]["acc"]
        assert set(model["preprocessing"]) == {"their CIFAR-100 statistics", "CIFAR-10 statistics",
                                               "ImageNet statistics", "mean and std 0.5", "none (ToTensor only)"}
        assert f"| {name} | before | " in report and f"| {name} | after | " in report
    shard_mia = results["sisa"]["after"]["shard_mia"]
    assert len(shard_mia) == 4 and "0.494 / 0.523 / 0.584 / 0.506" in report  # ours beside the report's per shard
    manifest = json.loads((out / "sisa" / "unlearned.json").read_text())
    assert [s["trained"] for s in manifest["shards"]] == [[], [], [3, 4, 5], []]  # the report's design, as it says
    assert [s["carried"] for s in manifest["shards"]] == [[], [4, 5], [1, 2], []]
    assert "fine-tuning on the retain set (1 epochs; the report's: 20;" in report  # what ran


@pytest.mark.slow
def test_ctrl_c_stops_reproduce_c100_with_130_its_finished_steps_kept(c100_small):
    _, _, interrupted, left, _ = c100_small
    assert interrupted.code == 130
    assert left == ["before/cifar100_resnet32.json", "settings.json"]  # the fine-tuning not begun


@pytest.mark.slow
def test_a_copied_c100_folder_continues_and_evaluates_a_stopped_fine_tuning(c100_small, tmp_path):
    # the finished folder copied elsewhere, its fine-tuning stopped between 'saved' and its
    # evaluation: the copy continues (results found by file name, not by the first folder's
    # path) and the evaluation is made
    argv, out, *_ = c100_small
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    finetune = copy / "finetune" / "cifar100_resnet32.pth.json"
    metrics = json.loads(finetune.read_text())["metrics"]
    finetune.write_text(json.dumps({**json.loads(finetune.read_text()), "metrics": None}))
    again = call("studies/reproduce_c100.py", *with_out(argv, copy))
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(finetune.read_text())["metrics"]["test"] == metrics["test"]
    results = json.loads((out / "c100.json").read_text())
    assert json.loads((copy / "c100.json").read_text())["sisa"] == results["sisa"]


@pytest.mark.slow
def test_a_c100_folder_of_other_settings_is_refused_naming_the_setting(c100_small):
    argv, out, *_ = c100_small
    report = (out / "c100.md").read_text()
    for more, setting in ((["--epochs", "2"], "--epochs 1 there"),  # never the 1-epoch one
                          (["--sisa-flags", "--arch resnet20 --batch-size 32"], "--sisa-flags")):
        assert_clean_error(call("studies/reproduce_c100.py", *argv, *more), setting)
    assert (out / "c100.md").read_text() == report


def with_out(argv, out):
    argv = list(argv)
    argv[argv.index("--out") + 1] = str(out)
    return argv


def interrupt_the_fine_tuning(argv, monkeypatch):
    """reproduce_c100.py as `python -m studies.reproduce_c100` runs it, Ctrl-C coming during its
    fine-tuning step: its SystemExit."""
    import cli
    from studies import reproduce_c100
    import unlearn
    with monkeypatch.context() as patch:
        patch.setattr(unlearn, "main", lambda argv: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(SystemExit) as e:
            cli.run(lambda: reproduce_c100.main(argv), reproduce_c100.INTERRUPTED)
    return e.value


@pytest.mark.parametrize("flags, refusal", [
    (["--forget-class", "5"], "--forget-class: the report's forget set is --forget-positions"),
    (["--keep-half", "0"], "--keep-half: the report's forget set is --forget-positions"),
    (["--sisa-flags", "--arch resnet20 --seed 3"], "--seed is --forget-seed's"),
    (["--sisa-flags", "--arch resnet20 --shards 2"], "--shards is the report's design"),
    (["--sisa-flags", "--arch resnet20 --subset 5"], "--subset is a flag of reproduce_c100.py"),
    (["--sisa-flags", "--arch resnet20 --slice-epochs 1,1,1"],
     "--slice-epochs gives 3 values for 5 slices"),
    (["--sisa-flags", "--arch resnet20 --slice-epochs 0"],
     "must be a positive integer below 2,147,483,648 (2**31), got '0'"),
    (["--sisa-flags", "--arch resnet20 --slice-epoch 1"], "unrecognized arguments: --slice-epoch 1")])
def test_reproduce_c100_refuses_flags_it_cannot_honour_before_any_work(tmp_path, flags, refusal):
    r = call("studies/reproduce_c100.py", "--data-dir", tmp_path / "data", "--device", "cpu",
             "--out", tmp_path / "c100", *flags)
    assert_clean_error(r, refusal)
    assert not (tmp_path / "c100").exists() and not (tmp_path / "data").exists()  # no work


def test_reproduce_c100_passes_its_forget_seed_to_every_step_and_to_sisa(tmp_path, monkeypatch):
    from studies import reproduce_c100
    args = reproduce_c100.parse_args(["--forget-seed", "7", "--forget-positions", "0:10",
                                      "--data-dir", str(tmp_path)])
    steps = []

    class Enough(Exception):
        pass

    def step(argv):  # records the steps; makes the file each would make, so that the next comes
        steps.append(argv)
        out = argv[argv.index("--out") + 1] if "--out" in argv else None
        if argv[:2] == ["sisa.py", "train"]:
            (tmp_path / "sisa").mkdir()
            (tmp_path / "sisa" / "manifest_full.json").write_text("{}")
        elif argv[:2] == ["sisa.py", "unlearn"]:
            open(out, "w").close()
        else:
            raise Enough

    monkeypatch.setattr(reproduce_c100, "step", step)
    with pytest.raises(Enough):
        reproduce_c100.sisa(args, str(tmp_path))
    train, forget, evaluate = steps
    assert train[train.index("--seed") + 1] == "7"  # the shards cut in seed 7's order
    assert "--forget-positions" not in train
    for argv in (forget, evaluate):  # the positions counted in the same order
        assert argv[argv.index("--forget-seed") + 1] == "7"
        assert argv[argv.index("--forget-positions") + 1] == "0:10"
