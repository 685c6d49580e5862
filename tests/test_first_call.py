"""The first GPU call (studies/first_call.py), rehearsed on a CPU: end to end at toy scale with a
compiler that fails on purpose, a step over its time limit, the outputs checked before any work,
and the make target that the GPU machine runs."""
import contextlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time

import pytest
import torch

import cli
from conftest import ARCHIVE, ROOT, make
from studies import first_call

# Written as sitecustomize.py on a child's PYTHONPATH: in train.py's compiled step (the only
# command line with --compile), torch.compile's backend fails as a broken compiler would.
FAILING_COMPILER = '''import sys
if "--compile" in sys.argv:
    import torch

    def failing(gm, example_inputs):
        raise RuntimeError("the test's compiler failed on purpose")
    compile_ = torch.compile
    torch.compile = lambda model, **kw: compile_(model, **{**kw, "backend": failing, "mode": None})
'''


@pytest.mark.slow
def test_the_first_call_rehearsed_on_a_cpu(cifar_jpeg, data_dir, tmp_path):
    # resnet20, 10 images a class, 1 epoch each, the cards for cat; the compiled step's compiler
    # fails: its traceback shows in the call's output and log, and the training goes on eager
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(FAILING_COMPILER)
    out, work = tmp_path / "out", tmp_path / "work"
    r = subprocess.run(
        [sys.executable, "-m", "studies.first_call", "--dataset", ARCHIVE, "--data-dir", data_dir,
         "--device", "cpu", "--arch", "resnet20", "--subset", "10", "--test-subset", "10",
         "--epochs", "1", "--cards-epochs", "1", "--classes", "cat", "--compile", "aot_eager",
         "--train-flags", "--batch-size 32", "--out", out, "--work", work, "--commit", "abc1234",
         "--budget", "1700"], cwd=ROOT, capture_output=True, text=True, timeout=1800,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "site")})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["cards.md", "log.txt", "results.json", "work.tar.gz"]
    results = json.load(open(out / "results.json"))
    assert results["kind"] == "first-call" and results["commit"] == "abc1234"
    steps = results["steps"]
    assert list(steps) == ["versions", "decode", "eager", "compiled", "cards"]
    assert all(s["rc"] == 0 and not s["timed_out"] for s in steps.values()), steps
    assert results["versions"]["torch"] == torch.__version__ and results["versions"]["gpu"] is None
    assert results["eager"]["finished"] and results["eager"]["epochs"] == 1
    assert results["eager"]["compile"] == "off" and results["eager"]["first_epoch_seconds"] > 0
    failure = results["compiled"]["compile_failed"]
    assert failure["epoch"] == 1 and "failed on purpose" in failure["error"]
    assert results["cards"]["commit"] == "abc1234" and results["cards"]["jobs"] == 1
    assert [row["class"] for row in results["cards"]["cards"]["advneggrad"]] == ["cat"]
    assert open(out / "cards.md").readline().startswith("# The model cards, reproduced")
    log = open(out / "log.txt").read()
    assert log.startswith(first_call.LOG_TITLE)
    compiled = [line for line in log.splitlines() if " compiled] " in line]
    for text in ("Traceback (most recent call last)", "failed on purpose", "without compiling"):
        assert any(text in line for line in compiled), text  # streamed into the log...
        assert text in r.stdout  # ...and to the terminal
    with tarfile.open(out / "work.tar.gz") as tar:
        names = tar.getnames()
    assert "work/eager.pth.json" in names and "work/cards/cards.json" in names
    assert not [n for n in names if n.endswith((".pth", ".pt"))]  # logs and sidecars, no weights


# A child that prints, starts a grandchild, says when SIGINT comes and sleeps on: SIGKILL ends it
STUBBORN = '''import signal, subprocess, sys, time
print("first line", flush=True)
sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                           stderr=subprocess.DEVNULL)  # its KeyboardInterrupt would cut our lines
open(sys.argv[1], "w").write(str(sleeper.pid))
signal.signal(signal.SIGINT, lambda *a: print("got SIGINT", flush=True))
print("waiting", flush=True)
while True:
    time.sleep(1)
'''


def gone(pid):
    """Whether process pid has ended (polled a while: a killed orphan is reaped by init)."""
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if open(f"/proc/{pid}/stat").read().split(") ")[-1].startswith("Z"):
            return True  # a zombie: ended, not yet reaped
        time.sleep(0.1)
    return False


@pytest.mark.slow  # waits out a 3 s limit
def test_a_step_over_its_limit_leaves_its_lines_and_no_process(tmp_path):
    started = time.time()
    log = first_call.Log(str(tmp_path / "log.txt"), started)
    try:
        argv = [sys.executable, "-c", STUBBORN, str(tmp_path / "pid")]
        result = first_call.run_step("stubborn", argv, limit=3, log=log, grace=1)
    finally:
        log.close()
    assert result["timed_out"] and result["rc"] == -9  # SIGINT ignored, so SIGKILL
    assert result["lines"][:2] == ["first line", "waiting"] and "got SIGINT" in result["lines"]
    text = open(tmp_path / "log.txt").read()
    lines = ("stubborn] first line", "stubborn] waiting", "over its 3 s limit",
             "stubborn] got SIGINT", "stubborn] rc -9")
    order = [text.index(line) for line in lines]
    assert order == sorted(order)  # each line written as it came, before the limit ended the step
    assert gone(int(open(tmp_path / "pid").read()))  # the grandchild too: the group was killed


def test_a_step_that_ends_takes_what_it_left_running_with_it(tmp_path):
    # a grandchild left behind (a compile worker, say) would hold the GPU during the next step
    leaves = ("import subprocess, sys\nsleeper = subprocess.Popen([sys.executable, '-c', "
              "'import time; time.sleep(600)'])\nopen(sys.argv[1], 'w').write(str(sleeper.pid))")
    log = first_call.Log(str(tmp_path / "log.txt"), time.time())
    try:
        argv = [sys.executable, "-c", leaves, str(tmp_path / "pid")]
        result = first_call.run_step("leaves", argv, limit=300, log=log, grace=1)
    finally:
        log.close()
    assert result["rc"] == 0 and not result["timed_out"]
    assert gone(int(open(tmp_path / "pid").read()))


def test_files_an_earlier_call_left_are_not_this_calls_figures(tmp_path):
    # the work folder outlives a call on the same machine: a step stopped this time must not
    # report the finished run an earlier call left there
    args = first_call.parse_args(["--work", str(tmp_path)])
    (tmp_path / "cards").mkdir()
    old = {"eager.json": '{"metrics": {"epoch": 3, "test_acc": 50.0}}', "eager.pth": "",
           "eager.log.jsonl": '{"seconds": 2.0, "compile_seconds": 0.0}\n',
           "cards/cards.json": "{}"}
    for name, text in old.items():
        (tmp_path / name).write_text(text)
        os.utime(tmp_path / name, (1, 1))  # written in 1970
    result = {"started": time.time(), "seconds": 1.0, "lines": []}
    assert first_call.figures("eager", args, result) is None
    assert first_call.figures("cards", args, result) is None
    os.utime(tmp_path / "eager.log.jsonl")  # this call's first epoch, then stopped
    assert first_call.figures("eager", args, result) == {
        "finished": False, "epochs": 1, "epoch_seconds": [2.0], "compile_seconds": 0.0}


def test_a_finished_trainings_figures_come_from_its_sidecar(tmp_path):
    # train.py writes eager.pth's sidecar as eager.pth.json (cli.sidecar_name): read there, the
    # step is finished; an older eager.json beside no newer one is still read
    args = first_call.parse_args(["--work", str(tmp_path)])
    (tmp_path / "eager.pth").write_bytes(b"weights")
    meta = {"metrics": {"epoch": 2, "test_acc": 61.5}, "seconds": 9.0, "device": "cpu"}
    (tmp_path / "eager.pth.json").write_text(json.dumps(meta))
    result = {"started": time.time() - 5, "seconds": 1.0, "lines": []}
    figures = first_call.figures("eager", args, result)
    assert figures["finished"] and figures["epochs"] == 2 and figures["test_acc"] == 61.5
    os.rename(tmp_path / "eager.pth.json", tmp_path / "eager.json")
    assert first_call.figures("eager", args, result)["seconds"] == 9.0


def first_call_main(*args):
    """studies.first_call's command line in this process, in the error boundary: (code, err)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            cli.run(lambda: first_call.main([str(a) for a in args]))
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else print(e.code, file=sys.stderr) or 1
    return code, err.getvalue()


@pytest.mark.parametrize("case, message", [
    ("foreign log", "exists and is not an output of this kind"),
    ("no archive", "not found; copy the CIFAR-10 archive there"),
    ("out in work", "must be apart"),
    ("bad limit", "use STEP=SECONDS"),
    ("abbreviated", "unrecognized arguments: --bud"),  # a prefix is no flag (as in every script)
])
def test_bad_input_stops_the_call_before_any_work(tmp_path, case, message):
    archive = tmp_path / "cifar10-jpeg.tar.gz"
    archive.write_bytes(b"not read before the decode step")
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    (out / "log.txt").write_text("someone's notes\n" if case == "foreign log" else "")
    flags = {"no archive": ["--dataset", tmp_path / "missing.tar.gz"],
             "out in work": ["--work", out.parent / "out" / ".."],
             "bad limit": ["--limit", "cards=0"], "abbreviated": ["--bud", "10"]}.get(case, [])
    code, err = first_call_main("--dataset", archive, "--out", out, "--work", work, *flags)
    assert code != 0 and "Traceback" not in err and message in err.strip().splitlines()[-1], err
    assert sorted(os.listdir(out)) == ["log.txt"] and not work.exists()  # nothing ran
    if case == "foreign log":
        assert open(out / "log.txt").read() == "someone's notes\n"


def test_make_first_call_runs_the_script_with_the_devices_variables(tmp_path):
    def first_call(*settings):
        return make("-n", "first-call", "DATASET=data/cifar10-jpeg.tar.gz", *settings,
                    cwd=tmp_path, py="python3", timeout=60)
    r = first_call("COMMIT=abc1234", "OUT=/tmp/out")
    assert r.returncode == 0, r.stderr
    command = " ".join(r.stdout.replace("\\\n", " ").split())  # as the shell reads it
    assert command == ("python3 -m studies.first_call --dataset 'data/cifar10-jpeg.tar.gz' "
                       "--data-dir './data' --device auto --arch resnet18 --out '/tmp/out' "
                       "--commit abc1234")
    r = first_call("OUT=/tmp/o'; id>PWNED; '")  # refused in one line, nothing printed or run
    assert r.returncode != 0 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1
    assert "OUT=/tmp/o'; id>PWNED; ' holds a space" in r.stderr and not os.listdir(tmp_path)
