"""Nothing a user hands us runs code, replaces an input or does nothing silently: names read from the data reach no
shell, outputs never replace inputs or another run's files, values that make a run a no-op are refused, and bad
input ends in one line, never in "this is a bug"."""
import os

import numpy as np
import pytest

from conftest import ROOT, make, write_classes


@pytest.mark.slow
@pytest.mark.parametrize("target", ["retrain-all", "reproduce-steps"])
def test_a_class_name_from_the_data_never_runs_as_a_shell_command(tmp_path, target):
    write_classes(tmp_path / "evil", ["a;touch PWNED;b", "beta"])
    r = make(target, f"DATASET={tmp_path / 'evil'}", f"DATA_DIR={tmp_path / 'cache'}", f"CHECKPOINTS={tmp_path}/c",
             f"RUNDIR={tmp_path}/r", "ARCH=resnet20", "EPOCHS=1", "DEVICE=cpu", cwd=tmp_path)
    assert r.returncode != 0
    assert not os.path.exists(os.path.join(ROOT, "PWNED")) and not (tmp_path / "PWNED").exists()
    assert "'a;touch PWNED;b' cannot be passed through make safely" in r.stderr
    assert not (tmp_path / "c").exists() and not (tmp_path / "r").exists()  # nothing trained


def test_make_refuses_a_dataset_path_it_cannot_quote(tmp_path):
    r = make("train", f"DATASET={tmp_path}/a b", cwd=tmp_path)
    assert r.returncode != 0 and "DATASET=" in r.stderr and "(space)" in r.stderr


def test_names_in_any_script_pass_when_make_can_carry_them(tmp_path):
    import data
    data.check_names_for_make(("échien", "cat", "v1.2", "a+b", "x_y"), "d")
    for bad in ("é chien", "a'b", "$(id)", "-rf", "a\nb"):
        with pytest.raises(ValueError, match="cannot be passed through make"):
            data.check_names_for_make(("cat", bad), "d")


# ----------------------------------------------------------------------------- outputs never replace inputs

@pytest.fixture
def toy(tmp_path):
    """A 3-class image folder, a random resnet20 checkpoint of it with its sidecar, and the data flags."""
    import torch
    from models import build_model, save_model
    write_classes(tmp_path / "toy", ["alpha", "beta", "gamma"], per_class=4)
    torch.manual_seed(0)
    save_model(str(tmp_path / "m.pth"), build_model("resnet20", 3), {"arch": "resnet20"})
    flags = ["--dataset", tmp_path / "toy", "--data-dir", tmp_path / "cache", "--device", "cpu"]
    return tmp_path, flags


def test_evaluate_never_writes_over_what_it_reads(toy):
    from conftest import assert_clean_error, call
    tmp, flags = toy
    sidecar = (tmp / "m.pth.json").read_bytes()
    for target in ("m.pth", "m.pth.json", "m.json"):  # the checkpoint, its sidecar, older name
        r = call("evaluate.py", "--model", tmp / "m.pth", "--json", tmp / target, *flags)
        assert_clean_error(r, f"--json {tmp / target} would replace the input")
    assert (tmp / "m.pth.json").read_bytes() == sidecar
    (tmp / "notes.json").write_text('{"mine": true}')
    assert_clean_error(call("evaluate.py", "--model", tmp / "m.pth", "--json", tmp / "notes.json", *flags),
                       "exists and is not an output of this kind")
    for attempt in range(2):  # its own output is replaced by a rerun
        r = call("evaluate.py", "--model", tmp / "m.pth", "--json", tmp / "e.json", *flags)
        assert r.returncode == 0, r.stderr
    r = call("evaluate.py", "--model", tmp / "m.pth", "--json", tmp / "notes.json", "--overwrite", *flags)
    assert r.returncode == 0 and '"kind": "evaluation"' in (tmp / "notes.json").read_text()


def test_table_and_report_outputs_are_never_their_inputs(toy):
    from conftest import assert_clean_error, call
    tmp, flags = toy
    r = call("unlearn.py", "--method", "ga", "--epochs", "1", "--model", tmp / "m.pth", "--forget-class", "alpha",
             "--out", tmp / "run" / "unlearn" / "ga" / "alpha.pth", *flags)
    assert r.returncode == 0, r.stderr
    sidecar = tmp / "run" / "unlearn" / "ga" / "alpha.pth.json"
    before = sidecar.read_bytes()
    assert_clean_error(call("evaluate.py", "--table", sidecar, "--out", sidecar), "would replace the input")
    assert_clean_error(call("report.py", tmp / "run", "--out", sidecar), "would replace the input")
    assert sidecar.read_bytes() == before
    assert call("evaluate.py", "--table", sidecar, "--out", tmp / "t.md").returncode == 0
    assert call("evaluate.py", "--table", sidecar, "--out", tmp / "t.md").returncode == 0  # its own: replaced


def test_no_output_lands_in_the_data_whatever_overwrite_says(toy):
    """OA03-OA05: evaluate.py --json inside the image folder it reads broke the dataset; with
    --overwrite it replaced the --dataset archive or the --forget-indices file. The decoded cache
    in --data-dir counts as data too."""
    import tarfile
    from conftest import assert_clean_error, call
    tmp, flags = toy
    with tarfile.open(tmp / "toy.tar.gz", "w:gz") as tar:
        tar.add(tmp / "toy" / "train", "train")
        tar.add(tmp / "toy" / "test", "test")
    (tmp / "idx.txt").write_text("0 1")
    archive = ["--dataset", tmp / "toy.tar.gz", "--data-dir", tmp / "cache", "--device", "cpu"]
    assert call("data.py", *archive[:4]).returncode == 0
    cache, = (tmp / "cache").glob("toy-*.npz")
    before = {p: p.read_bytes() for p in [tmp / "toy.tar.gz", tmp / "idx.txt", cache]}
    images = sorted((tmp / "toy" / "train" / "alpha").iterdir())
    model = ["--model", tmp / "m.pth"]
    for args, message in [
            ([*flags, "--json", tmp / "toy" / "train" / "alpha" / "x.png"], "is inside"),
            ([*archive, "--json", tmp / "toy.tar.gz"], "would replace the input"),
            ([*archive, "--forget-indices", tmp / "idx.txt", "--json", tmp / "idx.txt"],
             "would replace the input"),
            ([*archive, "--json", cache], "would replace the input")]:
        assert_clean_error(call("evaluate.py", *model, *args, "--overwrite"), message)
    r = call("unlearn.py", "--method", "ga", *model, "--forget-class", "alpha", *flags,
             "--overwrite", "--out", tmp / "toy" / "train" / "alpha" / "u.pth")
    assert_clean_error(r, "is inside")
    r = call("train.py", "--arch", "resnet20", "--epochs", "1", *archive, "--overwrite",
             "--out", tmp / "toy.tar.gz")
    assert_clean_error(r, "would replace the input")
    inside = tmp / "toy" / "train" / "alpha"
    for script, args in [  # every other script's outputs too; a new folder there breaks the data
            ("studies/privacy.py", ["outputs", *model, "--forget-class", "alpha",
                                    "--out", inside / "o.npz"]),
            ("sisa.py", ["train", "--shard", "0", "--out", inside / "sisa"]),
            ("studies/bench.py", ["--out", inside / "new" / "b.json"]),
            ("studies/reproduce_cards.py", ["--out", inside / "cards"]),
            ("studies/reproduce_c100.py", ["--out", inside / "c100"])]:
        assert_clean_error(call(script, *args, *flags, "--overwrite"), "is inside")
    assert all(p.read_bytes() == data for p, data in before.items())
    assert sorted((tmp / "toy" / "train" / "alpha").iterdir()) == images


# ----------------------------------------------------------------------------- no-op values are refused

@pytest.mark.parametrize("script, args, message", [
    ("unlearn.py", ["--method", "salun", "--mask-ratio", "1e-30"], "keeps none trainable"),
    ("unlearn.py", ["--method", "ga", "--seed", "-1"], "must be a non-negative integer"),
    ("train.py", ["--forget-fraction", "1e-9", "--forget-class", None], "forgets none"),
    ("train.py", ["--val-fraction", "0.999", "--forget-class", None], "both need at least one"),
])
def test_a_value_that_would_make_the_run_a_no_op_is_refused_before_any_work(toy, script, args, message):
    from conftest import assert_clean_error, call
    tmp, flags = toy
    common = ["--model", tmp / "m.pth", "--forget-class", "alpha"] if script == "unlearn.py" else ["--epochs", "1"]
    if None in args:  # train.py: no forget class
        args = args[:args.index("--forget-class")]
    r = call(script, *args, *common, "--out", tmp / "o.pth", *flags)
    assert_clean_error(r, message)
    assert not (tmp / "o.pth").exists() and not (tmp / "o.pth.json").exists()


def test_train_flags_that_cannot_work_together_are_one_line_before_the_data(tmp_path):
    """NA07: --patience without a validation set trained on with early stopping silently off;
    OA15: train.py --sisa (now sisa.py train) --out naming a file stopped after the data: '[Errno 17] File exists'."""
    from conftest import assert_clean_error, call
    (tmp_path / "m.pth").write_bytes(b"a checkpoint")
    missing = ["--dataset", tmp_path / "no-such-data", "--device", "cpu"]  # read after the flags
    r = call("train.py", "--patience", "1", *missing, "--out", tmp_path / "p.pth")
    assert_clean_error(r, "--patience 1 stops on the validation accuracy, but there is no")
    r = call("train.py", "--recipe", "ensemble", "--val-fraction", "0", *missing, "--out",
             tmp_path / "p.pth")
    assert_clean_error(r, "--patience 50 stops on the validation accuracy")  # the recipe's own
    r = call("sisa.py", "train", *missing, "--out", tmp_path / "m.pth")
    assert_clean_error(r, f"--out {tmp_path / 'm.pth'} is a file; sisa.py's --out names a")
    assert (tmp_path / "m.pth").read_bytes() == b"a checkpoint"


def test_forget_indices_as_a_user_writes_them(toy):
    import data
    tmp, _ = toy
    n = 12
    np.save(tmp / "mask.npy", np.arange(n) % 4 == 0)  # a boolean mask over the 12 train images
    assert data.indices_in(data.read_indices(str(tmp / "mask.npy")), n).tolist() == [0, 4, 8]
    np.save(tmp / "short.npy", np.array([True, False]))
    with pytest.raises(ValueError, match="a boolean mask of 2 values, for a train set of 12"):
        data.indices_in(data.read_indices(str(tmp / "short.npy")), n)
    (tmp / "huge.txt").write_text("3 99999999999999999999999")
    with pytest.raises(ValueError, match="too large to be a train index"):
        data.indices_in(data.read_indices(str(tmp / "huge.txt")), n)
    np.save(tmp / "words.npy", np.array(["a", "b"]))
    with pytest.raises(ValueError, match="non-integer values"):
        data.read_indices(str(tmp / "words.npy"))
    np.save(tmp / "nan.npy", np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="non-integer values"):
        data.read_indices(str(tmp / "nan.npy"))
    with pytest.raises(ValueError, match=r"\[12\] ... are not train indices"):
        data.indices_in(np.array([3, 12]), n)


def test_sisa_with_more_slices_than_images_stops_before_training(toy):
    from conftest import assert_clean_error, call
    tmp, flags = toy
    r = call("sisa.py", "train", "--arch", "resnet20", "--shards", "4", "--slices", "5", "--slice-epochs",
             "1,1,1,1,1", "--epochs", "1", "--out", tmp / "sisa", *flags)
    assert_clean_error(r, "leave a slice empty")
    assert not (tmp / "sisa").exists() or not any((tmp / "sisa").iterdir())


# ----------------------------------------------------------------------------- two runs on one output

def test_a_waiting_run_finds_the_output_the_first_one_made(toy):
    import shutil
    import threading
    import cli
    from conftest import call
    tmp, flags = toy
    common = ["--arch", "resnet20", "--epochs", "1", "--batch-size", "8", *flags]
    assert call("train.py", *common, "--out", tmp / "a.pth").returncode == 0  # what the first run will make
    held, released = threading.Event(), threading.Event()

    def first_run():  # holds the lock of b.pth, then leaves b.pth finished, as a concurrent make job would
        with cli.lock(str(tmp / "b.pth")):
            held.set()
            released.wait(5)
            shutil.copy(tmp / "a.pth", tmp / "b.pth")
            shutil.copy(tmp / "a.pth.json", tmp / "b.pth.json")
    holder = threading.Thread(target=first_run)
    holder.start()
    held.wait(5)
    threading.Timer(1.0, released.set).start()
    r = call("train.py", *common, "--out", tmp / "b.pth", "--wait")
    holder.join()
    assert r.returncode == 0, r.stderr
    assert "waiting for another run" in r.stderr and "nothing to do" in r.stdout and "epoch 1/1" not in r.stdout


# ----------------------------------------------------------------------------- bad input is never "a bug"

def bad_files(tmp):
    """{name: path} of files a user may hand us that are not what they should be."""
    import json
    import zipfile
    import torch
    import torchvision
    from models import build_model
    files = {}
    torch.save(torchvision.models.resnet18(), tmp / "whole.pth")  # the model object, not its state_dict
    files["whole model"] = tmp / "whole.pth"
    state = build_model("resnet20", 3).state_dict()
    torch.save({**state, "fc.weight": state["fc.weight"].to_sparse()}, tmp / "sparse.pth")
    files["sparse"] = tmp / "sparse.pth"
    torch.save({**state, "fc.weight": state["fc.weight"].to(torch.complex64)}, tmp / "complex.pth")
    files["complex"] = tmp / "complex.pth"
    torch.save({k: v.to("meta") for k, v in state.items()}, tmp / "meta.pth")
    files["meta"] = tmp / "meta.pth"
    with zipfile.ZipFile(tmp / "whole.pth") as z, zipfile.ZipFile(tmp / "newer.pth", "w") as out:
        for name in z.namelist():  # the file format of a PyTorch from the future
            out.writestr(name, b"999\n" if name.endswith("/version") else z.read(name))
    files["newer torch"] = tmp / "newer.pth"
    manifest = {"kind": "sisa-manifest", "recipe": "sgd", "aggregate": "vote", "members": []}
    (tmp / "empty.json").write_text(json.dumps(manifest))
    files["manifest without members"] = tmp / "empty.json"
    config = {"arch": "resnet20", "epochs": 1, "batch_size": "64", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0,
              "nesterov": True, "augment": "crop-flip", "patience": 0, "val_fraction": 0.0, "seed": 0}
    sisa = {"shards": 1, "slices": 2, "slice_epochs": [0, 0], "aggregate": "vote"}
    (tmp / "strings.json").write_text(json.dumps({**manifest, "members": ["a.pth"], "config": config, "sisa": sisa,
                                                  "shards": [], "split": {"n_train": 12}}))
    files["manifest with a string batch size"] = tmp / "strings.json"
    return files


@pytest.mark.parametrize("name", ["whole model", "sparse", "complex", "meta", "newer torch",
                                  "manifest without members", "manifest with a string batch size"])
def test_a_bad_file_is_one_line_in_every_script_never_a_bug(toy, name):
    from conftest import call
    tmp, flags = toy
    path = bad_files(tmp)[name]
    commands = [("evaluate.py", "--model", path, *flags), ("models.py", "--model", path),
                (*(("sisa.py", "unlearn") if path.suffix == ".json" else ("unlearn.py", "--method", "ssd")),
                 "--model", path, "--forget-class", "alpha", *flags),
                ("studies/privacy.py", "outputs", "--model", path, "--forget-class", "alpha",
                 "--out", tmp / "o.npz", *flags)]
    for command in commands:
        if command[0] == "models.py" and path.suffix == ".json":
            continue
        r = call(*command)
        assert r.returncode not in (0, None) and "Traceback" not in r.stderr, (command, r.stderr)
        assert "bug in this project" not in r.stderr and r.stderr.strip().splitlines()[-1].startswith("error: ")
    assert not (tmp / "o.npz").exists()


@pytest.mark.parametrize("args, message", [
    (["--model", "hf://o/r/a file é.pth"], "could not download"),
    (["--model", "hf://only-owner"], "give hf://OWNER/REPO/FILE"),
])
def test_odd_hub_names_are_one_line(toy, monkeypatch, args, message):
    from conftest import assert_clean_error, call
    tmp, _ = toy
    monkeypatch.setenv("HF_ENDPOINT", (tmp / "no-hub").as_uri())
    monkeypatch.setenv("TORCH_HOME", str(tmp / "torch"))
    assert_clean_error(call("models.py", *args), message)


def test_report_on_run_files_that_are_not_objects_is_one_line(tmp_path):
    from conftest import assert_clean_error, call
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "full.pth.json").write_text("[]")
    assert_clean_error(call("report.py", tmp_path / "run"), "holds a JSON list, not the object")


def test_the_evaluation_is_written_before_it_is_printed(toy, monkeypatch):
    """IA01's second half: evaluate.py printed its tables, then wrote --json; anything failing in
    between (`evaluate.py ... --json e.json | head -1`: a closed pipe) lost the evaluation."""
    import errno
    import evaluate
    from conftest import call
    tmp, flags = toy

    def closed_pipe(*args):
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")
    monkeypatch.setattr(evaluate, "format_table", closed_pipe)
    r = call("evaluate.py", "--model", tmp / "m.pth", "--forget-class", "alpha", "--json",
             tmp / "e.json", *flags)
    assert r.returncode == 1 and "Broken pipe" in r.stderr
    assert '"kind": "evaluation"' in (tmp / "e.json").read_text()


@pytest.mark.parametrize("variable, model", [
    ("HF_ENDPOINT", "hf://o/r/f.pth"),
    ("CIFAR_MODELS_URL", "chenyaofo/pytorch-cifar-models:cifar100_resnet32"),
])
def test_a_download_variable_set_to_nothing_is_named(tmp_path, monkeypatch, variable, model):
    """C03/C03b: `HF_ENDPOINT= python ...` was "unknown url type: '/o/r/resolve/main/f.pth'"."""
    from conftest import assert_clean_error, call
    monkeypatch.setenv(variable, "")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert_clean_error(call("models.py", "--model", model), f"${variable} is set to ''")


def test_a_file_url_naming_a_folder_says_so(tmp_path, monkeypatch):
    """ML09: "[Errno 21] Is a directory", then "Without network access, download it elsewhere"."""
    from conftest import assert_clean_error, call
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    (tmp_path / "release").mkdir()
    r = call("models.py", "--model", (tmp_path / "release").as_uri())
    assert_clean_error(r, "is a folder; name the checkpoint file in it")
    assert "network" not in r.stderr
