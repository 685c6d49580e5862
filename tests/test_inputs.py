"""Nothing a user hands us runs code, replaces an input or does nothing silently: names read from the data reach no
shell, outputs never replace inputs or another run's files, values that make a run a no-op are refused, and bad
input ends in one line, never in "this is a bug"."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT


def write_classes(root, names, per_class=2):
    """train/<name>/*.png and test/<name>/*.png, random 8x8 pixels."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in names:
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / split / name / f"{i}.png")


def make(*args, cwd):
    return subprocess.run(["make", "-C", ROOT, "--no-print-directory", "INSTALL=", f"PY={sys.executable}", *args],
                          capture_output=True, text=True, timeout=300, cwd=cwd)


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
