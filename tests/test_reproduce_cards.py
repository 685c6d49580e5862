"""make reproduce-cards-small end to end on a CPU: the cards' tables beside the published numbers, from the runs'
own sidecars, and a rerun that continues instead of starting again."""
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from conftest import ROOT, call, make, make_commands, write_classes, write_first
from published import CIFAR10, PUBLISHED_UNLEARN


def cards_small(out, dataset, data_dir):
    """make reproduce-cards-small's variables: the cards of `dataset` under OUT-small."""
    return ("reproduce-cards-small", f"CARDS_DIR={out}", f"DEMO_DATASET={dataset}",
            f"DATA_DIR={data_dir}")


def table_rows(markdown, title):
    """{class: cells} of the table under the heading that starts with `title`."""
    section = markdown.split(f"## {title}")[1].split("\n## ")[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ")][1:]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows}


@pytest.mark.slow
def test_reproduce_cards_small_writes_both_cards_beside_the_published_tables_and_resumes(cifar_jpeg,
                                                                                          tmp_path):
    # the first 5 images a class of the real CIFAR-10 (the target's --subset 20 takes them all):
    # every assertion reads the run's own files, whatever their number; the 31 jobs take about
    # a third of the time of 20 a class
    dataset = write_first(cifar_jpeg, tmp_path / "cifar10-first5", 5)
    args = cards_small(tmp_path / "cards", dataset, tmp_path / "cache")
    r = make(*args, timeout=1800)  # a limit against a hang only
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = (tmp_path / "cards-small" / "cards.md").read_text()
    folder = tmp_path / "cards-small"
    for title, sub, card in (("SSD, D = retain + forget", "ssd", "ssd"), ("SSD, D = the retain set", "ssd-retain", "ssd"),
                             ("AdvNegGrad", "advneggrad", "advneggrad")):
        rows = table_rows(report, title)
        assert list(rows) == list(CIFAR10), title
        for name, cells in rows.items():
            meta = json.load(open(folder / sub / f"{name}.pth.json"))
            forget, retain = meta["metrics"]["test_forget"], meta["metrics"]["test_retain"]
            published = PUBLISHED_UNLEARN[card][name]
            assert cells[0] == f"{forget['acc']:.2f} ({forget['loss']:.3f})"  # ours, from the run's own sidecar
            assert cells[1] == f"{published[0]:.2f} ({published[1]:.3f})"  # the card's
            assert cells[2] == f"{forget['acc'] - published[0]:+.2f} ({forget['loss'] - published[1]:+.3f})"
            assert cells[3] == f"{retain['acc']:.2f} ({retain['loss']:.3f})"
            assert cells[4] == f"{published[2]:.2f} ({published[3]:.3f})"
            assert cells[6] == f"{meta['changed_weights']:,}"
            assert meta["split"]["forget_class"] == name and meta["method"] == sub.split("-")[0]
            assert meta["config"].get("full_set", "retain") == ("retain" if sub != "ssd" else "retain+forget")
    assert "Not comparable with the card" in report  # a subset: the verdict says so instead of agreeing or not
    assert "12.53 (2.799)" in table_rows(report, "SSD, D = retain + forget")["dog"][4]  # the card's dog collapse
    full = json.load(open(folder / "full.pth.json"))
    assert full["config"]["epochs"] == 2 and full["arch"] == "resnet20"
    assert f"first epoch {full['first_epoch_seconds']:.2f} s" in report
    results = json.load(open(folder / "cards.json"))
    assert results["training"]["test_acc"] == pytest.approx(
        json.load(open(folder / "full_eval.json"))["models"][str(folder / "full.pth")]["test"]["acc"])

    os.remove(folder / "advneggrad" / "cat.pth")  # as if interrupted before this run finished
    command, = make_commands(*args)  # the rerun: make's command, in this process
    assert command[0] == "studies/reproduce_cards.py", command
    again = call(*command)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "1 job(s)" in again.stdout and "epoch 1/2" not in again.stdout  # only the missing run, no training
    assert (folder / "advneggrad" / "cat.pth").exists()


def test_jobs_at_once_follow_the_free_gpu_memory_and_the_methods_need(tmp_path, monkeypatch, fake_cuda):
    import torch
    import methods
    from studies import reproduce_cards
    import unlearn
    from models import build_model, save_model
    save_model(str(tmp_path / "m.pth"), build_model("resnet18", 10), {"arch": "resnet18"})
    args = reproduce_cards.parse_args(["--device", "cuda"])
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    need = unlearn.memory_need(build_model("resnet18", 10), methods.AdvNegGradConfig(), torch.bfloat16) / 2 ** 30
    for free, expected in ((139, int(139 // (2 * need + 1.5))), (20, 1), (1000, 8)):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None, free=free: (free * 2 ** 30, 141 * 2 ** 30))
        jobs, per_job = reproduce_cards.auto_jobs(args, str(tmp_path / "m.pth"))
        assert jobs == expected and per_job == pytest.approx(2 * need + 1.5)
    assert 3 <= int(139 // (2 * need + 1.5)) <= 6  # AdvNegGrad's 11 GB estimate, doubled: 5 jobs on an H200


# ----------------------------------------------------------------------------- the staged run

TOY = ["--subset", "3", "--test-subset", "2", "--classes", "cat", "--train-flags",
       "--batch-size 8"]


def toy_argv(folder, dataset, *more):
    """reproduce_cards.py's flags of the toy folder: resnet20, 1 epoch, 3 images a class, cat."""
    return ["--dataset", dataset, "--data-dir", dataset.parent / "cache", "--device", "cpu",
            "--arch", "resnet20", "--epochs", "1", "--out", folder, *TOY, *more]


@pytest.fixture(scope="module")
def toy_cards(tmp_path_factory):
    """A folder made by the staged make targets as two GPU calls would run them (the training
    alone, by make; then the cards, make's command run in this process), on a synthetic CIFAR-10
    image folder: (folder, dataset, (the first call, the files it left, the second call))."""
    root = tmp_path_factory.mktemp("toy")
    write_classes(root / "cifar", CIFAR10, per_class=4)
    flags = [f"DATASET={root / 'cifar'}", f"DATA_DIR={root / 'cache'}", "DEVICE=cpu",
             "ARCH=resnet20", "EPOCHS=1", f"CARDS_DIR={root / 'cards'}",
             "EXTRA=" + " ".join(TOY[:-1]) + f" '{TOY[-1]}'"]
    train = make("reproduce-cards-train", *flags, timeout=1200)  # a limit against a hang only
    trained = {p.name for p in (root / "cards").iterdir()}
    command, = make_commands("reproduce-cards", *flags)  # the second call: make's command, here
    cards = call(*command)
    return root / "cards", root / "cifar", (train, trained, cards)


def with_flag(argv, flag, value):
    """argv with `flag` set to `value` (added, or replaced), or left out where value is None."""
    argv = list(argv)
    i = argv.index(flag) if flag in argv else len(argv)
    argv[i:i + 2] = [] if value is None else [flag, value]
    return argv


def copy_of(toy_cards, tmp_path):
    folder = tmp_path / "cards"
    shutil.copytree(toy_cards[0], folder)
    return folder


@pytest.mark.slow
def test_make_reproduce_cards_in_stages_trains_then_makes_the_cards_from_that_model(toy_cards):
    folder, _, (train, trained, cards) = toy_cards
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    assert "full.pth" in trained and "cards.md" not in trained and "ssd" not in trained
    assert "stage train done" in train.stdout and "epoch 1/1" in train.stdout
    assert cards.returncode == 0, cards.stdout[-3000:] + cards.stderr[-3000:]
    assert "epoch 1/1" not in cards.stdout  # the trained model reused: no training
    report = (folder / "cards.md").read_text()
    assert list(table_rows(report, "AdvNegGrad")) == ["cat"]
    # the verdict names why these numbers are not the card's: the subset, the model's recipe
    assert ("Not comparable with the card: a subset of the data (--subset / --test-subset); "
            "arch resnet20 (the recipe's resnet18); epochs 1 (the recipe's 200); batch_size 8 "
            "(the recipe's 128)") in report
    log = (folder / "ssd" / "cat.log").read_text()  # each job's output kept beside its result
    assert "unlearn.py" in log.splitlines()[0] and "saved" in log


@pytest.mark.slow
def test_a_folder_of_other_settings_is_refused_naming_the_setting_or_redone(toy_cards, tmp_path):
    from conftest import assert_clean_error, call
    from models import build_model, save_model, sha256_file
    folder, dataset = copy_of(toy_cards, tmp_path), toy_cards[1]
    full, report = sha256_file(folder / "full.pth"), (folder / "cards.md").read_text()
    save_model(str(tmp_path / "other.pth"), build_model("resnet20", 10), {"arch": "resnet20"})
    for flag, value, setting in (("--epochs", "2", "--epochs 1 there"),
                                 ("--subset", None, "--subset 3 there"),
                                 ("--test-subset", None, "--test-subset 2 there"),
                                 ("--arch", "resnet32", "--arch resnet20 there"),
                                 ("--train-flags", "--batch-size 16", "--batch-size 8 there"),
                                 ("--precision", "bf16", "--precision fp32 there"),
                                 ("--model", tmp_path / "other.pth", "--model not given there")):
        r = call("studies/reproduce_cards.py", *with_flag(toy_argv(folder, dataset), flag, value))
        assert_clean_error(r, setting)
        assert f"{folder / 'settings.json'}" in r.stderr and "--overwrite" in r.stderr
    assert sha256_file(folder / "full.pth") == full  # nothing touched
    assert (folder / "cards.md").read_text() == report
    # --overwrite redoes the folder with the new settings: the old runs are gone, never reported
    # as the new ones
    argv = toy_argv(folder, dataset, "--epochs", "2", "--stage", "train", "--overwrite")
    r = call("studies/reproduce_cards.py", *argv)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.load(open(folder / "full.pth.json"))["config"]["epochs"] == 2
    assert not (folder / "ssd" / "cat.pth").exists() and not (folder / "cards.md").exists()
    assert json.load(open(folder / "settings.json"))["--epochs"] == 2


@pytest.mark.slow
def test_a_model_by_path_is_known_by_content_and_never_removed_by_overwrite(toy_cards, tmp_path):
    from conftest import assert_clean_error, call
    from models import build_model, save_model
    folder = copy_of(toy_cards, tmp_path)
    argv = toy_argv(folder, toy_cards[1], "--model", folder / "full.pth")
    r = call("studies/reproduce_cards.py", *argv, "--overwrite")  # the folder's own model: --model
    assert r.returncode == 0, r.stderr[-3000:]
    assert (folder / "full.pth").exists() and (folder / "full.pth.json").exists()  # the input kept
    assert json.load(open(folder / "ssd" / "cat.pth.json"))["source"] == str(folder / "full.pth")
    save_model(str(folder / "full.pth"), build_model("resnet20", 10), {"arch": "resnet20"})
    assert_clean_error(call("studies/reproduce_cards.py", *argv), "--model sha256:")  # another one


@pytest.mark.slow
def test_a_run_stopped_between_saved_and_its_evaluation_is_evaluated_next_time(toy_cards):
    from conftest import call
    folder = toy_cards[0]  # not a copy: the runs' identity names their model's path; undone below
    sidecar = folder / "ssd" / "cat.pth.json"
    meta = json.load(open(sidecar))
    unlearn = [*toy_argv(folder, toy_cards[1])[:6], "--subset", "3", "--test-subset", "2",
               "--method", "ssd", "--model", folder / "full.pth", "--forget-class", "cat",
               "--out", folder / "ssd" / "cat.pth"]  # the driver's job, as it runs it
    try:
        for script, argv in (("studies/reproduce_cards.py", toy_argv(folder, toy_cards[1])),
                             ("unlearn.py", unlearn)):
            json.dump({**meta, "metrics": None}, open(sidecar, "w"))  # killed after 'saved'
            r = call(script, *argv)
            assert r.returncode == 0, r.stderr[-3000:]
            assert "not evaluated (a run stopped after 'saved'); evaluating it" in r.stdout
            again = json.load(open(sidecar))
            assert again["metrics"]["test_forget"] == meta["metrics"]["test_forget"]
            assert again["sha256"] == meta["sha256"]  # evaluated, not unlearned again
    finally:
        json.dump(meta, open(sidecar, "w"))


def missing_cat_runs(folder):
    for sub in ("ssd", "ssd-retain", "advneggrad"):
        os.remove(folder / sub / "cat.pth")
        os.remove(folder / sub / "cat.pth.json")


@pytest.mark.slow
def test_ctrl_c_in_a_job_stops_every_job_and_the_driver_with_130(toy_cards, tmp_path,
                                                                   monkeypatch, capsys):
    import cli
    from studies import reproduce_cards
    import unlearn
    folder = copy_of(toy_cards, tmp_path)
    missing_cat_runs(folder)  # three jobs to run
    calls = []

    def interrupted(argv):
        calls.append(argv)
        raise KeyboardInterrupt  # Ctrl-C in the first job: its cli.run makes it exit 130

    monkeypatch.setattr(unlearn, "main", interrupted)
    argv = [str(a) for a in toy_argv(folder, toy_cards[1])]
    with pytest.raises(SystemExit) as e:  # as `python -m studies.reproduce_cards` runs main
        cli.run(lambda: reproduce_cards.main(argv), reproduce_cards.INTERRUPTED)
    assert e.value.code == 130 and len(calls) == 1  # the other two jobs never ran
    err = capsys.readouterr().err
    assert "finished steps are kept under --out" in err and "failed" not in err


@pytest.mark.slow
def test_a_failing_job_shows_its_traceback_in_the_error_and_its_log(toy_cards, tmp_path,
                                                                     monkeypatch):
    import unlearn
    from conftest import call
    folder = copy_of(toy_cards, tmp_path)
    missing_cat_runs(folder)

    def deep_inside():
        raise RuntimeError("the cause, deep inside")

    monkeypatch.setattr(unlearn, "main", lambda argv: deep_inside())
    r = call("studies/reproduce_cards.py", *toy_argv(folder, toy_cards[1]))
    assert r.returncode == 1
    error = r.stderr[r.stderr.index("3 job(s) failed; the first"):]  # the driver's message
    assert "Traceback (most recent call last)" in error and "in deep_inside" in error
    assert "RuntimeError: the cause, deep inside" in error
    assert str(folder / "ssd" / "cat.log") in error
    assert "in deep_inside" in (folder / "ssd" / "cat.log").read_text()


# ----------------------------------------------------------------------------- processes (CUDA)

def child(tmp_path, name, body):
    """A stand-in job: a script that records it started, then runs `body` (Python; `out` is its
    --out)."""
    script = tmp_path / f"{name}.py"
    script.write_text("import os, signal, sys, time\nout = sys.argv[sys.argv.index('--out') + 1]\n"
                      "open(out + '.started', 'w').close()\n" + body)
    return [str(script), "--out", str(tmp_path / name)]


def test_a_child_process_failure_shows_its_traceback_not_only_its_last_line(tmp_path):
    from studies import reproduce_cards
    argv = child(tmp_path, "bad", "def inner():\n    1 / 0\nprint('working')\ninner()\n")
    with pytest.raises(ValueError) as e:
        reproduce_cards.run_jobs([argv], 2, in_process=False)
    message = str(e.value)
    assert "Traceback (most recent call last)" in message and "in inner" in message
    assert "ZeroDivisionError: division by zero" in message.splitlines()[-1]
    assert "in inner" in (tmp_path / "bad.log").read_text()


def test_a_child_process_output_reaches_its_log_and_the_terminal_as_it_comes(tmp_path, capsys):
    import threading
    from studies import reproduce_cards
    go = tmp_path / "go"
    argv = child(tmp_path, "slow", f"print('first line')\nwhile not os.path.exists({str(go)!r}):\n"
                                   f"    time.sleep(0.05)\nprint('last line')\n")
    job = threading.Thread(target=reproduce_cards.run_jobs, args=([argv], 2, False))
    job.start()
    log = tmp_path / "slow.log"
    for _ in range(2400):  # at most 2 minutes on a loaded machine; the child waits for `go`
        if log.exists() and "first line" in log.read_text():
            break
        job.join(0.05)
    seen = log.read_text()
    go.touch()
    job.join()
    assert "first line" in seen and "last line" not in seen  # written while the child still ran
    assert "slow] first line" in capsys.readouterr().out  # after the job's name


def ctrl_c_default():
    """Ctrl-C's default action in the driver, as a terminal gives it, even where pytest runs in
    the background (nohup, &), whose children inherit SIGINT ignored (the driver then ran all
    three jobs and exited 0)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow  # process groups and signals: 5 s
def test_ctrl_c_stops_child_processes_running_and_waiting(tmp_path):
    # The driver gets SIGINT (as from `timeout -s INT`) while its first job runs: that job is
    # interrupted, the two waiting never start, and the driver exits 130 with its own line.
    first = child(tmp_path, "first", "open(out + '.pid', 'w').write(str(os.getpid()))\n"
                                     "os.kill(os.getppid(), signal.SIGINT)\ntime.sleep(120)\n")
    jobs = [first, *(child(tmp_path, name, "") for name in ("second", "third"))]
    code = (f"import cli\nfrom studies import reproduce_cards\n"
            f"cli.run(lambda: reproduce_cards.run_jobs({jobs!r}, 1, in_process=False), "
            f"reproduce_cards.INTERRUPTED)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, preexec_fn=ctrl_c_default)
    assert r.returncode == 130, r.stderr
    assert "finished steps are kept under --out" in r.stderr.splitlines()[-1]
    assert (tmp_path / "first.started").exists()
    assert not (tmp_path / "second.started").exists() and not (tmp_path / "third.started").exists()
    with pytest.raises(ProcessLookupError):  # the running job was stopped too, not left behind
        os.kill(int((tmp_path / "first.pid").read_text()), 0)
