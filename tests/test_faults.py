"""Bad input and faults, tried as a careless user and an unlucky machine would: every expected failure ends in one
line naming the file or flag (non-zero exit, no traceback), nothing that was there before changes, and a run
interrupted at the wrong moment is redone by the next one. One test per problem; most run a script's command line
in this process (conftest.call), those that need a process (signals, terminals, limits, two runs) start one."""
import hashlib
import json
import os
import pickle
import pty
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ARCHIVE, ROOT, assert_clean_error, call, make, write_images
from models import build_model, save_model

CLASSES = ("alpha", "beta", "gamma")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """An image folder of 3 classes (6 train, 3 test images each), its cache, and an untrained resnet20 for it."""
    root = tmp_path_factory.mktemp("tiny")
    write_images(root / "folder", {"train": 6, "test": 3})
    save_model(str(root / "model.pth"), build_model("resnet20", 3), {"arch": "resnet20"})
    assert call("data.py", "--dataset", root / "folder", "--data-dir", root / "cache").returncode == 0
    return root


def data_flags(tiny):
    return ["--dataset", tiny / "folder", "--data-dir", tiny / "cache", "--device", "cpu"]


def files(folder):
    """Every file under `folder` with the sha256 of its content: what a failure must leave as it was."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def train(tiny, out, *extra):
    return call("train.py", *data_flags(tiny), "--arch", "resnet20", "--epochs", 1, "--batch-size", 8, "--out", out, *extra)


def unlearn(tiny, *extra, method="ga"):
    return call("unlearn.py", *data_flags(tiny), "--method", method, "--model", tiny / "model.pth", *extra)


def start(script, *args, preexec_fn=None, **kwargs):
    """A script in its own process, as a user starts it from a terminal: with Ctrl-C's default action, even where
    pytest itself runs in the background (`nohup`, `&`), which hands its children SIGINT ignored."""
    def prepare():
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if preexec_fn:
            preexec_fn()
    return subprocess.Popen([sys.executable, os.path.join(ROOT, script), *map(str, args)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=prepare, **kwargs)


# ----------------------------------------------------------------------------- the problems that lost work

def test_an_out_ending_in_json_is_refused_before_any_work(tiny, tmp_path):
    assert_clean_error(train(tiny, tmp_path / "m.json"), "cannot end in .json")
    assert_clean_error(unlearn(tiny, "--forget-class", "alpha", "--out", tmp_path / "u.json"), "cannot end in .json")
    assert files(tmp_path) == {}


def test_a_diverging_run_saves_nothing_even_with_overwrite(tiny, tmp_path):
    assert train(tiny, tmp_path / "m.pth").returncode == 0
    before = files(tmp_path)
    # one step per epoch: the loss of that step is finite, the weights it leaves are not
    assert_clean_error(train(tiny, tmp_path / "m.pth", "--lr", "3e38", "--batch-size", 64, "--overwrite"), "hold NaN or inf")
    assert files(tmp_path) == before
    state = torch.load(tmp_path / "m.pth", weights_only=True)
    state["fc.weight"][0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pth")  # evaluate.py used to score such a model without a word
    assert_clean_error(call("evaluate.py", *data_flags(tiny), "--model", tmp_path / "nan.pth"), "hold NaN or inf")


def test_forget_indices_without_out_get_the_default_name(tiny, tmp_path, monkeypatch):
    (tmp_path / "idx.txt").write_text("0 1 2")
    monkeypatch.chdir(tmp_path)
    r = unlearn(tiny, "--forget-indices", tmp_path / "idx.txt", "--no-eval")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "checkpoints" / "folder_resnet20_GA_forget3.pth").is_file()


class Planted:
    """What an attacker's pickle holds: loading it calls open(path, "w"), creating a file (any call would do)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def test_a_planted_cifar_batch_cannot_run_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(CLASSES)}, f, protocol=2)
    marker = tmp_path / "code-ran"
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({"data": Planted(str(marker)), "labels": [0]}, f, protocol=2)
    with open(folder / "data_batch_1", "rb") as f:
        pickle.load(f, encoding="latin1")  # the file is live: a plain load runs its code
    assert marker.exists()
    marker.unlink()
    r = call("data.py", "--dataset", "cifar10", "--data-dir", tmp_path)
    assert_clean_error(r, "data_batch_1: not a CIFAR batch file (it names")
    assert not marker.exists()


def sisa(tiny, folder):
    return call("sisa.py", "train", *data_flags(tiny), "--arch", "resnet20", "--shards", 2, "--slices", 2,
                "--slice-epochs", "1,1", "--batch-size", 8, "--out", folder)


def test_a_fault_between_a_slice_and_its_sidecar_is_redone_by_the_next_run(tiny, tmp_path):
    assert sisa(tiny, tmp_path / "sisa").returncode == 0
    slice_, = (tmp_path / "sisa").glob("shard0_slice2_*.pth")
    slice_.unlink()  # the fault: the sidecar written, the checkpoint not
    r = sisa(tiny, tmp_path / "sisa")
    assert r.returncode == 0, r.stderr
    assert "shard 0: trained slices [2]" in r.stdout and "shard 1: trained slices none" in r.stdout
    assert slice_.exists()
    next((tmp_path / "sisa").glob("shard1_slice1_*.json")).unlink()  # written the other way round, met by unlearning
    (tmp_path / "forget.txt").write_text("0")
    r = call("sisa.py", "unlearn", *data_flags(tiny), "--model", tmp_path / "sisa" / "manifest_full.json",
             "--forget-indices", tmp_path / "forget.txt", "--no-eval")
    assert r.returncode == 0, r.stderr


def test_a_damaged_dataset_cache_is_decoded_again(tmp_path):
    write_images(tmp_path / "folder", {"train": 2, "test": 1})
    flags = ["--dataset", tmp_path / "folder", "--data-dir", tmp_path / "cache"]
    assert call("data.py", *flags).returncode == 0
    cache, = (tmp_path / "cache").glob("*.npz")
    cache.write_bytes(cache.read_bytes()[:500])
    r = call("data.py", *flags)
    assert r.returncode == 0 and "is damaged" in r.stderr and "allow_pickle" not in r.stderr, r.stderr
    assert np.load(cache)["train_x"].shape == (6, 32, 32, 3)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [cache.name]  # no temp file left


def test_an_unusable_out_is_refused_before_the_work(tiny, tmp_path):
    (tmp_path / "folder").mkdir()
    r = unlearn(tiny, "--forget-class", "alpha", "--out", tmp_path / "folder")
    assert_clean_error(r, "is a folder")
    assert "device:" not in r.stderr  # stopped before the method ran
    assert_clean_error(train(tiny, "/proc/unwritable/m.pth"), "cannot write in /proc/unwritable")
    assert files(tmp_path) == {}


def on_a_terminal(script, *args):
    """Run a script with stderr on a pseudo-terminal, as in an interactive shell; returns what it drew there."""
    main, other = pty.openpty()
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, script), *map(str, args)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=other)
    os.close(other)
    shown = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        shown += chunk
    assert process.wait(timeout=300) == 0, shown
    os.close(main)
    return shown.decode(errors="replace")


@pytest.mark.slow  # processes on a pty: 2 s
def test_unlearning_and_evaluation_show_progress_on_a_terminal(tiny, tmp_path):
    shown = on_a_terminal("unlearn.py", *data_flags(tiny), "--method", "ssd", "--model", tiny / "model.pth",
                          "--forget-class", "alpha", "--out", tmp_path / "u.pth")
    assert "forget 1/1" in shown and "retain 1/" in shown and "evaluating test 1/1" in shown


# ----------------------------------------------------------------------------- damaged files and bad flags

def test_a_damaged_archive_or_image_is_named(tmp_path):
    write_images(tmp_path / "folder", {"train": 2, "test": 1})
    with tarfile.open(tmp_path / "data.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "folder" / "train", "train")
        tar.add(tmp_path / "folder" / "test", "test")
    (tmp_path / "cut.tar.gz").write_bytes((tmp_path / "data.tar.gz").read_bytes()[:300])
    (tmp_path / "text.tar.gz").write_text("not an archive")
    for name in ("cut.tar.gz", "text.tar.gz"):
        r = call("data.py", "--dataset", tmp_path / name, "--data-dir", tmp_path / "cache")
        assert_clean_error(r, f"{name}: not a readable .tar / .tar.gz archive")
    (tmp_path / "folder" / "train" / "beta" / "001.png").write_bytes(b"\x89PNG garbage")
    assert_clean_error(call("data.py", "--dataset", tmp_path / "folder", "--data-dir", tmp_path / "cache"),
                       "train/beta/001.png is not a readable image")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "folder" / "train" / "beta" / "001.png")
    assert_clean_error(call("data.py", "--dataset", tmp_path / "folder", "--data-dir", tmp_path / "cache"),
                       "train/beta/001.png is 16x16, the first image 32x32")


def test_resume_from_a_damaged_or_foreign_state_file(tiny, tmp_path):
    (tmp_path / "m.state.pt").write_bytes(b"half a file")
    assert_clean_error(train(tiny, tmp_path / "m.pth", "--resume"), "m.state.pt is damaged")
    (tmp_path / "m.state.pt").unlink()
    assert train(tiny, tmp_path / "m.pth", "--epochs", 2, "--stop-after", 1).returncode == 0
    before = files(tmp_path)
    assert_clean_error(train(tiny, tmp_path / "m.pth", "--epochs", 3, "--resume"), "written by a run with other settings")
    assert files(tmp_path) == before


@pytest.mark.slow  # a process and a signal each: 4 s
@pytest.mark.parametrize("script, args", [
    ("unlearn.py", ["--method", "finetune", "--epochs", 1000, "--forget-class", "alpha"]),
    ("evaluate.py", []),
])
def test_ctrl_c_ends_in_one_line(tiny, cifar_jpeg, trained, data_dir, tmp_path, script, args):
    flags = data_flags(tiny) + ["--model", tiny / "model.pth", "--out", tmp_path / "u.pth"] if script == "unlearn.py" \
        else ["--dataset", ARCHIVE, "--data-dir", data_dir, "--device", "cpu", "--model", trained[0], "--mia"]
    process = start(script, *flags, *args)
    for line in process.stderr:  # wait until main() runs: pick_device prints this line
        if line.startswith("device:"):
            break
    time.sleep(1)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("interrupted"), err
    assert files(tmp_path) == {}


def test_nothing_left_to_train_on_and_a_single_class_are_refused(tiny, tmp_path):
    (tmp_path / "all.txt").write_text(" ".join(map(str, range(18))))
    assert_clean_error(train(tiny, tmp_path / "m.pth", "--forget-indices", tmp_path / "all.txt"),
                       "nothing is left to train on")
    for split in ("train", "test"):
        (tmp_path / "one" / split / "alpha").mkdir(parents=True)
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "one" / split / "alpha" / "0.png")
    assert_clean_error(call("data.py", "--dataset", tmp_path / "one", "--data-dir", tmp_path / "cache"),
                       "one class (alpha) only")


@pytest.mark.parametrize("args, message", [
    (["train.py", "--device", "garbage"], "argument --device: use auto, cpu, cuda or cuda:N, got 'garbage'"),
    (["unlearn.py", "--method", "salun", "--mask-ratio", "1.5"], "argument --mask-ratio: must be a finite number in (0, 1]"),
    (["unlearn.py", "--method", "ssd", "--alpha", "nan"], "argument --alpha: must be a finite number in [0, inf), got nan"),
    (["train.py", "--lr", "inf"], "argument --lr: must be a finite number in (0, inf), got inf"),
    (["train.py", "--lr", "1e39"], "argument --lr: must be a finite number in (0, inf), got 1e39"),  # float32 overflow
    (["train.py", "--forget-fraction", "1.5"], "argument --forget-fraction: must be a finite number in (0, 1)"),
    (["train.py", "--seed", "-1"], "argument --seed: must be a non-negative integer"),
    (["evaluate.py", "--forget-seed", "-3"], "argument --forget-seed: must be a non-negative integer"),
])
def test_bad_flags_are_refused_where_they_are_parsed(tiny, args, message):
    r = call(*args)
    assert r.returncode == 2 and message in r.stderr.strip().splitlines()[-1], r.stderr


def test_a_table_of_a_train_sidecar_and_broken_json_are_named(tiny, tmp_path):
    assert_clean_error(call("evaluate.py", "--table", tiny / "model.pth.json"),
                       "model.pth.json is not an unlearn.py sidecar")
    (tmp_path / "broken.json").write_text('{"method": "ssd", ')
    assert_clean_error(call("evaluate.py", "--table", tmp_path / "broken.json"), "broken.json: not valid JSON")


def test_a_manifest_missing_a_field_is_refused(tiny, tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"members": ["a.pth"]}))
    assert_clean_error(call("evaluate.py", *data_flags(tiny), "--model", tmp_path / "m.json"),
                       "m.json is not a SISA manifest of this project")
    (tmp_path / "s.json").write_text(json.dumps({"sisa": {}, "split": {"n_train": 18}, "recipe": "sgd", "config": {}}))
    assert_clean_error(call("sisa.py", "unlearn", *data_flags(tiny), "--model", tmp_path / "s.json",
                            "--forget-class", "alpha"), "s.json is not a SISA manifest of this project")


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update({"conv1.weight": torch.tensor(1.0)}), "tensors of unexpected shapes"),
    (lambda s: s.update({"fc.weight": torch.zeros(3)}), "does not fit resnet20"),
    (lambda s: s.update({"layer1.0.conv1.weight": torch.zeros(2, 2)}), "does not fit resnet20"),
    (lambda s: s.update({"conv1.weight": "a string"}), "holds no state_dict"),
])
def test_crafted_state_dicts_are_refused(tiny, tmp_path, change, message):
    state = torch.load(tiny / "model.pth", weights_only=True)
    change(state)
    torch.save(state, tmp_path / "crafted.pth")
    assert_clean_error(call("evaluate.py", *data_flags(tiny), "--model", tmp_path / "crafted.pth"), message)


@pytest.mark.slow  # 5 s
def test_a_full_disk_loses_nothing(tiny, tmp_path):
    assert unlearn(tiny, "--forget-class", "alpha", "--out", tmp_path / "u.pth", "--no-eval").returncode == 0
    before = files(tmp_path)

    def small_disk():  # files may not grow past 100 kB: writes fail as on a full disk (ENOSPC / EFBIG)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
    process = start("unlearn.py", *data_flags(tiny), "--method", "ga", "--model", tiny / "model.pth", "--forget-class",
                    "alpha", "--out", tmp_path / "u.pth", "--lr", "0.01", "--overwrite", preexec_fn=small_disk)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 1 and "Traceback" not in err, err
    assert "could not write" in err.strip().splitlines()[-1] and "u.pth" in err, err
    assert files(tmp_path) == before  # the old checkpoint and sidecar intact, no temp file left


def test_index_files_must_hold_integers(tiny, tmp_path):
    np.save(tmp_path / "float.npy", np.array([1.5, 2.0]))
    assert_clean_error(unlearn(tiny, "--forget-indices", tmp_path / "float.npy"), "holds non-integer values")
    (tmp_path / "empty.txt").write_text("")
    assert_clean_error(train(tiny, tmp_path / "m.pth", "--forget-indices", tmp_path / "empty.txt"), "holds no index")
    assert not (tmp_path / "m.pth").exists()


def test_an_ensemble_needs_one_input_size(tiny, tmp_path):
    save_model(str(tmp_path / "big.pth"), build_model("resnet18-imagenet", 3), {})
    assert_clean_error(call("evaluate.py", *data_flags(tiny), "--ensemble", "--model", tiny / "model.pth", "--model",
                            tmp_path / "big.pth"), "an ensemble needs one input size")


@pytest.mark.slow
@pytest.mark.parametrize("target", ["retrain-all", "unlearn-table"])
def test_make_with_a_mistyped_dataset_says_so(tmp_path, target):
    r = make(target, "DATASET=cifar1O", f"DATA_DIR={tmp_path}", cwd=ROOT, timeout=120)
    assert r.returncode != 0 and "dataset 'cifar1O' not found" in r.stderr, r.stderr
    assert "no class list for DATASET=cifar1O" in r.stderr


@pytest.mark.slow  # two processes: 2 s
def test_two_runs_on_one_out_do_not_race(tiny, tmp_path):
    first = start("train.py", *data_flags(tiny), "--arch", "resnet20", "--epochs", 500, "--batch-size", 8, "--out",
                  tmp_path / "m.pth")
    deadline = time.time() + 120
    while not (tmp_path / ".m.pth.lock").exists() and time.time() < deadline:
        time.sleep(0.2)
    assert_clean_error(train(tiny, tmp_path / "m.pth", "--epochs", 500), "another run is writing")
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=120)
    assert first.returncode == 130


def test_temp_files_of_killed_runs_are_removed_and_no_other_file(tiny, tmp_path):
    """TMP01: any .tmp-<pid of no process>-* in an output's folder was deleted, whoever made it."""
    stale = tmp_path / ".unlearning-recipes-tmp-999999999-abcd"  # of a gone process (pids < 2^22)
    stale.write_bytes(b"left by kill -9")
    mine = tmp_path / ".tmp-999999999-notes.pth"  # a user's file named as temp files used to be
    mine.write_bytes(b"three weeks of work")
    r = unlearn(tiny, "--forget-class", "alpha", "--out", tmp_path / "u.pth", "--no-eval")
    assert r.returncode == 0, r.stderr
    assert not stale.exists() and mine.read_bytes() == b"three weeks of work"
    assert sorted(files(tmp_path)) == [mine.name, "u.pth", "u.pth.json"]


# ----------------------------------------------------------------------------- the three hazards

def test_a_finished_checkpoint_is_never_replaced_silently(tiny, tmp_path):
    assert train(tiny, tmp_path / "m.pth").returncode == 0
    before = files(tmp_path)
    assert_clean_error(train(tiny, tmp_path / "m.pth", "--epochs", 2), "made with other settings: pass --overwrite")
    (tmp_path / "mine.pth").write_bytes(b"a user's own file")
    assert_clean_error(train(tiny, tmp_path / "mine.pth"), "holds a file without a sidecar of this project")
    (tmp_path / "mine.pth").unlink()
    r = train(tiny, tmp_path / "m.pth", "--resume")  # the same command again: nothing to redo
    assert r.returncode == 0 and "nothing to do" in r.stdout and "epoch 1/1" not in r.stdout
    assert files(tmp_path) == before
    assert_clean_error(call("unlearn.py", *data_flags(tiny), "--method", "ga", "--model", tmp_path / "m.pth",
                            "--forget-class", "alpha", "--out", tmp_path / "m.pth"), "would replace the input")
    assert files(tmp_path) == before
    r = train(tiny, tmp_path / "m.pth", "--epochs", 2, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "m.pth.json").read_text())["config"]["epochs"] == 2


# ---------------------------------------------------------------- one sidecar per checkpoint file

def as_older(checkpoint):
    """Its sidecar moved to the name used until December 2026: x.pth.json -> x.json."""
    import cli
    os.replace(cli.sidecar_path(str(checkpoint)), cli.legacy_sidecar(str(checkpoint)))


def copy_model(tiny, path):
    """tiny's model.pth and its sidecar, as `path` (a checkpoint) and its sidecar."""
    import cli
    shutil.copy(tiny / "model.pth", path)
    shutil.copy(cli.sidecar_path(str(tiny / "model.pth")), cli.sidecar_name(str(path)))


def test_an_out_beside_the_input_with_another_ending_leaves_the_inputs_sidecar(tiny, tmp_path):
    """OA01: --out m.pt beside the input m.pth, whose sidecar had the name m.pt's took (m.json):
    refused as 'holds a checkpoint made with other settings', and --overwrite replaced m.json."""
    import models
    copy_model(tiny, tmp_path / "m.pth")
    as_older(tmp_path / "m.pth")
    older = (tmp_path / "m.json").read_bytes()
    assert models.finished(str(tmp_path / "m.pth"))  # an older sidecar is still read
    command = ["unlearn.py", *data_flags(tiny), "--method", "ga", "--model", tmp_path / "m.pth",
               "--forget-class", "alpha", "--no-eval", "--epochs", 1, "--out", tmp_path / "m.pt"]
    r = call(*command)
    assert r.returncode == 0, r.stderr
    r = call(*command, "--lr", "0.5", "--overwrite")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m.json").read_bytes() == older
    assert json.loads((tmp_path / "m.pt.json").read_text())["config"]["lr"] == 0.5
    assert models.finished(str(tmp_path / "m.pth")) and models.finished(str(tmp_path / "m.pt"))


def test_training_x_pt_with_overwrite_leaves_a_finished_x_pth_finished(tiny, tmp_path):
    """OA02: train.py --out b.pt --overwrite beside a finished b.pth replaced its sidecar b.json:
    the command that made b.pth then said 'made with other settings'."""
    assert train(tiny, tmp_path / "b.pth").returncode == 0
    as_older(tmp_path / "b.pth")
    assert train(tiny, tmp_path / "b.pt", "--seed", 1, "--overwrite").returncode == 0
    r = train(tiny, tmp_path / "b.pth", "--resume")
    assert r.returncode == 0 and "nothing to do" in r.stdout, r.stderr


def test_an_older_sidecar_is_read_only_by_the_checkpoint_it_describes(tmp_path):
    """x.pt and x.pth both older-style: the one x.json left names one of them, and only it."""
    import cli
    import models
    for name, classes in (("x.pt", 3), ("x.pth", 4)):  # x.pth last: x.json is x.pth's
        save_model(str(tmp_path / name), build_model("resnet20", classes), {})
    os.remove(tmp_path / "x.pt.json")
    as_older(tmp_path / "x.pth")
    assert cli.sidecar_path(str(tmp_path / "x.pth")) == str(tmp_path / "x.json")
    assert cli.sidecar_path(str(tmp_path / "x.pt")) == str(tmp_path / "x.pt.json")  # absent
    assert models.finished(str(tmp_path / "x.pth")) and not models.finished(str(tmp_path / "x.pt"))
    (tmp_path / "notes.json").write_text('{"mine": true}')  # a user's own JSON is nobody's sidecar
    assert cli.sidecar_path(str(tmp_path / "notes.pth")) == str(tmp_path / "notes.pth.json")


def test_a_runs_sidecars_are_found_under_either_name_with_or_without_weights(tmp_path):
    """What report.py reads of a run folder: each checkpoint's sidecar once, older ones too."""
    import cli
    for name in ("no_cat", "no_dog", "no_fox"):
        save_model(str(tmp_path / f"{name}.pth"), build_model("resnet20", 3), {})
    as_older(tmp_path / "no_cat.pth")
    as_older(tmp_path / "no_fox.pth")
    os.remove(tmp_path / "no_dog.pth")  # a run kept without its weights
    os.remove(tmp_path / "no_fox.pth")
    (tmp_path / "no_notes.json").write_text('{"mine": true}')  # not a sidecar
    found = cli.sidecars_of(str(tmp_path / "no_*.pth"))
    assert found == [str(tmp_path / n) for n in ("no_cat.json", "no_dog.pth.json", "no_fox.json")]


def test_refusals_name_the_file_that_is_there(tiny, tmp_path):
    import cli
    copy_model(tiny, tmp_path / "m.pth")
    as_older(tmp_path / "m.pth")
    before = files(tmp_path)
    r = call("unlearn.py", *data_flags(tiny), "--method", "ga", "--model", tmp_path / "m.pth",
             "--forget-class", "alpha", "--out", tmp_path / "m", "--overwrite")  # m's: m.json
    assert_clean_error(r, f"its sidecar {tmp_path / 'm.json'} would replace the input "
                          f"{tmp_path / 'm.pth'}'s sidecar {tmp_path / 'm.json'}")
    shutil.copy(cli.sidecar_path(str(tiny / "model.pth")), tmp_path / "u.pth.json")  # no u.pth
    r = unlearn(tiny, "--forget-class", "alpha", "--out", tmp_path / "u.pth")
    assert_clean_error(r, f"--out {tmp_path / 'u.pth'} is not there, but its sidecar "
                          f"{tmp_path / 'u.pth.json'} is")
    assert files(tmp_path) == {**before, "u.pth.json": files(tmp_path)["u.pth.json"]}
