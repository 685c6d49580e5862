"""make reproduce's pieces on tiny data, and report.py: its numbers are the sidecars', its published columns the
stated constants, its plots real PNG files (or absent, with the report still written), its model cards complete."""
import json
import os
import shutil
import sys

import pytest
import torch

import published
import report
from conftest import ARCHIVE, assert_clean_error, call, make, make_commands, run_script

# The reproduce targets at a toy scale: 2 classes, 2 per-class methods, 1 one-class method,
# SISA 2 x 2 with one epoch per slice (the report reads its evaluation, whatever the design;
# 4 x 5 runs in test_c100.py), an ensemble of 2. 10 train images per class so that a random
# 20% leaves every SISA slice some.
TINY = ["ARCH=resnet20", "EPOCHS=1", "DEVICE=cpu", "EXTRA=--subset 10 --test-subset 3", "CLASSES=airplane cat", "N=2",
        "EVERY_CLASS=ssd advneggrad", "ONE_CLASS=ga", "CLASS=cat",
        "SISA_RECIPE=--arch resnet20 --shards 2 --slices 2 --slice-epochs 1,1",
        "ENSEMBLE_RECIPE=--arch resnet20 --epochs 1", "EXTRA_ga=--epochs 1",
        "PROBE="]  # --probe's steps: test_beneath.py


@pytest.fixture(scope="module")
def rundir(cifar_jpeg, data_dir, tmp_path_factory):
    """make reproduce-steps at the toy scale: make's own commands (make -n), each script run in this process in
    make's order (the commands make runs, without a new interpreter for each)."""
    folder = tmp_path_factory.mktemp("reproduce") / "run"
    commands = make_commands("reproduce-steps", f"RUNDIR={folder}", f"DATASET={ARCHIVE}", f"SISA_DATASET={ARCHIVE}",
                             f"DATA_DIR={data_dir}", *TINY)
    # 3 models, 2 x 2 + 1 unlearned, their evaluation; SISA trained, unlearned, evaluated; 2 members, the ensemble
    assert [c[0] for c in commands] == ["train.py"] * 2 + ["unlearn.py"] * 2 + ["train.py"] + ["unlearn.py"] * 3 + [
        "evaluate.py", "sisa.py", "sisa.py", "evaluate.py", "train.py", "train.py", "evaluate.py"], commands
    for command in commands:
        r = call(*command)
        assert r.returncode == 0, (command, r.stdout[-3000:] + r.stderr[-3000:])
    return folder


def read(path):
    with open(path) as f:
        return json.load(f)


def row(text, *cells):
    """The one report line whose first cells are `cells`."""
    lines = [line for line in text.splitlines() if line.startswith("| " + " | ".join(cells) + " |")]
    assert len(lines) == 1, (cells, lines)
    return lines[0]


@pytest.mark.slow
def test_the_report_shows_the_sidecars_numbers_beside_the_published_ones(rundir):
    r = run_script("report.py", rundir)  # report.py's one run in its own interpreter, as make report runs it
    assert r.returncode == 0, r.stderr
    text = (rundir / "report.md").read_text()
    full = read(rundir / "full.pth.json")
    assert f"| full | resnet20 | {full['metrics']['test_acc']:.2f}% | 95.4% |" in text
    for name, published in (("airplane", "95.3%"), ("cat", "96.6%")):
        unlearned = read(rundir / "unlearn" / "ssd" / f"{name}.pth.json")
        kept = unlearned["retrained_metrics"]["test_retain"]["acc"]
        retrained = read(rundir / f"no_{name}.pth.json")["metrics"]["test_acc"]
        assert f"| {retrained:.2f}% | {kept:.2f}% | {published} |" in row(text, name)
    for method, name in (("ssd", "airplane"), ("ssd", "cat"), ("advneggrad", "cat"), ("ga", "cat")):
        meta = read(rundir / "unlearn" / method / f"{name}.pth.json")
        m = meta["metrics"]
        forget, retain = m["test_forget"], m["test_retain"]
        assert row(text, method, name).startswith(
            f"| {method} | {name} | {forget['acc']:.2f}% ({forget['loss']:.3f}) | {retain['acc']:.2f}% "
            f"({retain['loss']:.3f}) | {m['test']['acc']:.2f}% | {m['test']['top5']:.2f}% | {m['mia']:.3f} | ")
        assert f"| {meta['seconds']:.1f} |" in row(text, method, name)
    metrics = read(rundir / "unlearn" / "ssd" / "airplane.pth.json")["metrics"]
    retain = metrics["test_retain"]["acc"]
    assert row(text, "ssd", "airplane").endswith(f"| 0.00% (8.102) | 83.38% (0.527) | {retain - 83.38:+.2f} |")
    assert "| 0.00% (26.171) | 92.44% (0.512) |" in row(text, "advneggrad", "cat")
    assert row(text, "ga", "cat").endswith("| - | - | - |")  # nothing published for ga
    sisa = read(rundir / "sisa" / "eval.json")["models"]
    before, after = (sisa[str(rundir / "sisa" / n)] for n in ("manifest_full.json", "unlearned.json"))
    assert f"| manifest_full.json | {before['test']['acc']:.2f}% | {before['mia']:.3f} |" in row(text, "before")
    assert f"| {after['test']['acc']:.2f}% | {after['mia']:.3f} |" in row(text, "after")
    assert "| 78.1% | 0.527 |" in row(text, "before") and "| 77.1% | 0.498 |" in row(text, "after")
    ensemble = read(rundir / "ensemble" / "eval.json")["models"]["ensemble"]
    assert row(text, "ensemble") == f"| ensemble | {ensemble['test']['acc']:.2f}% | 97.61% | " \
                                    f"{ensemble['test']['acc'] - 97.61:+.2f} |"


def test_published_constants_are_the_cards_numbers():
    assert published.PUBLISHED_FULL == 95.4 and published.PUBLISHED_ENSEMBLE == 97.61
    assert min(published.PUBLISHED_RETRAIN.values()) == 95.2 and max(published.PUBLISHED_RETRAIN.values()) == 96.6
    assert published.PUBLISHED_UNLEARN["ssd"]["dog"][2] == 12.53 and published.PUBLISHED_UNLEARN["ssd"]["horse"][2] == 17.71
    advneggrad = published.PUBLISHED_UNLEARN["advneggrad"].values()
    assert all(f == 0.0 and 26 <= loss <= 33 and 90.5 <= r <= 92.9 for f, loss, r, _ in advneggrad)
    assert published.PUBLISHED_SISA == {"before": (78.1, 0.527), "after": (77.1, 0.498)}


@pytest.mark.slow
def test_plots_are_png_files_listed_in_the_report(rundir):
    pytest.importorskip("matplotlib")
    assert call("report.py", rundir).returncode == 0
    names = sorted(os.listdir(rundir / "plots"))
    assert names == ["confusion_cat.png", "curves.png", "losses_cat.png", "per_class_cat.png", "seconds.png"]
    text = (rundir / "report.md").read_text()
    for name in names:
        assert (rundir / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"(plots/{name})" in text


@pytest.mark.slow
def test_without_matplotlib_the_report_is_written_without_plots(rundir, tmp_path, monkeypatch):
    copy = tmp_path / "run"
    shutil.copytree(rundir, copy, ignore=shutil.ignore_patterns("plots", "report.md", "*.pth"))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    report.main([str(copy)])
    text = (copy / "report.md").read_text()
    assert "matplotlib is not installed" in text and "![" not in text and not (copy / "plots").exists()
    assert "| full | resnet20 |" in text


@pytest.mark.slow
def test_every_checkpoint_gets_a_model_card_in_the_published_layout(rundir):
    assert call("report.py", rundir).returncode == 0
    cards = sorted(os.listdir(rundir / "cards"))
    assert cards == sorted(["full.md", "no_airplane.md", "no_cat.md", "unlearn_ssd_airplane.md", "unlearn_ssd_cat.md",
                            "unlearn_advneggrad_airplane.md", "unlearn_advneggrad_cat.md", "unlearn_ga_cat.md",
                            "ensemble_seed0.md", "ensemble_seed1.md"])
    card = (rundir / "cards" / "unlearn_ssd_cat.md").read_text()
    front = card.split("---\n")[1]
    for field in ["license: mit", "datasets:\n- uoft-cs/cifar10", "metrics:\n- accuracy", "base_model:\n- full.pth",
                  "tags:\n- machine_unlearning\n- ssd"]:
        assert field in front, field
    m = read(rundir / "unlearn" / "ssd" / "cat.pth.json")["metrics"]
    assert (f"| `cat.pth` | cat | {m['test_forget']['acc']:.2f} ({m['test_forget']['loss']:.3f}) | "
            f"{m['test_retain']['acc']:.2f} ({m['test_retain']['loss']:.3f}) | {m['mia']:.3f} |") in card
    assert "- **lam**: 1.0" in card and "- **alpha**: 10.0" in card  # the recipe's settings, from the sidecar
    full = (rundir / "cards" / "full.md").read_text()
    acc = read(rundir / "full.pth.json")["metrics"]["test_acc"]
    assert f"| `full.pth` | None | {acc:.2f}% |" in full


@pytest.mark.slow  # the pipeline of `rundir`: 7 s
def test_a_run_of_older_sidecars_gives_the_same_report(rundir, tmp_path, monkeypatch):
    """Sidecars written before December 2026 are x.json beside x.pth: read as x.pth.json is."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # no plots: the text is compared
    newer, older = tmp_path / "newer" / "run", tmp_path / "older" / "run"  # one name: one title
    for copy in (newer, older):
        shutil.copytree(rundir, copy, ignore=shutil.ignore_patterns("plots", "cards", "report.md"))
    for sidecar in older.rglob("*.pth.json"):
        sidecar.rename(sidecar.with_name(sidecar.name[:-len(".pth.json")] + ".json"))
    assert not list(older.rglob("*.pth.json")) and (older / "no_cat.json").exists()
    for copy in (newer, older):
        r = call("report.py", copy)
        assert r.returncode == 0, r.stderr
    assert (older / "report.md").read_text() == (newer / "report.md").read_text()
    assert "| full | resnet20 |" in (older / "report.md").read_text()  # found, not "Not run"
    assert sorted(os.listdir(older / "cards")) == sorted(os.listdir(newer / "cards"))


@pytest.mark.slow
def test_a_card_for_one_checkpoint(rundir, tmp_path):
    shutil.copy(rundir / "no_cat.pth", tmp_path / "m.pth")
    shutil.copy(rundir / "no_cat.pth.json", tmp_path / "m.pth.json")
    r = call("report.py", "--card", tmp_path / "m.pth", "--license", "apache-2.0")
    assert r.returncode == 0, r.stderr
    card = (tmp_path / "m.md").read_text()
    assert "license: apache-2.0" in card and "- **Excluded Class**: cat" in card and "- **lr**: 0.1" in card


def test_bad_input_is_refused(tmp_path):
    assert_clean_error(call("report.py", tmp_path / "missing"), "give a run folder")
    (tmp_path / "m.pth").write_bytes(b"x")
    assert_clean_error(call("report.py", "--card", tmp_path / "m.pth"), "m.pth.json not found")


@pytest.mark.slow
def test_reproduce_on_a_cpu_wants_yes(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: make reproduce would start the real thing")
    r = make("reproduce", f"RUNDIR={tmp_path / 'run'}", threads=1)
    assert r.returncode != 0 and "YES=1" in r.stdout + r.stderr and not (tmp_path / "run").exists()
