"""What a user types reaches a script or a shell as the words meant, or ends in one line: flags
are never abbreviated (the scripts refuse a prefix of a flag, privacy.py jobs one of a flag it
sets), and every Makefile variable that becomes a shell word, a path, a number or part of a make
target is checked before make reads a rule (`make -n`: nothing runs)."""
import importlib
import os
import shlex
import sys

import pytest

from conftest import assert_clean_error, call, make, write_classes

# an abbreviation of one of each script's flags, after the flags the script requires
ABBREVIATED = [
    ("train", ["--epoch", "1"]),
    ("unlearn", ["--method", "ssd", "--model", "m.pth", "--forget-cl", "cat"]),
    ("evaluate", ["--model", "m.pth", "--forget-cl", "cat"]),
    ("data", ["--forget-cl", "cat"]),
    ("models", ["--mod", "m.pth"]),
    ("report", ["run", "--overwr"]),
    ("studies.reproduce_cards", ["--epoch", "1"]),
    ("studies.reproduce_c100", ["--epoch", "1"]),
    ("studies.verify_published", ["--test-sub", "1"]),
    ("studies.bench", ["--devic", "cpu"]),
    ("studies.privacy", ["outputs", "--model", "m.pth", "--out", "o.npz", "--forget-cl", "cat"]),
    ("studies.privacy", ["score", "pool", "--overwr"]),
    ("studies.privacy", ["jobs", "pool", "--n", "1", "--forget-cl", "cat"]),
]


@pytest.mark.parametrize("module, argv", ABBREVIATED, ids=[f"{m} {v[0]}" for m, v in ABBREVIATED])
def test_no_script_takes_an_abbreviated_flag(module, argv, capsys):
    """J03/J04's cause: argparse expanded --forget-cl to --forget-class, so a prefix slipped past
    every check made on the exact names (privacy.py jobs' list of the flags it sets). Every
    parser refuses it (allow_abbrev=False)."""
    with pytest.raises(SystemExit) as e:
        importlib.import_module(module).parse_args(argv)
    abbreviation = next(w for w in reversed(argv) if w.startswith("--"))
    assert e.value.code == 2
    assert f"unrecognized arguments: {abbreviation}" in capsys.readouterr().err


@pytest.mark.parametrize("flags, data, named", [
    ([], ["--dataset", "x", "--forget-cl", "dog"],
     "--forget-cl after --: an abbreviation of --forget-class"),  # J03
    (["--groups", "ssd", "--unlearn-flags", "--ou w/x.pth"], ["--dataset", "x"],
     "--ou --unlearn-flags: an abbreviation of --out"),  # J04
    (["--train-flags", "--forget-f=0.5"], ["--dataset", "x"],
     "--forget-f=0.5 --train-flags: an abbreviation of --forget-fraction"),
    (["--train-flags", "--n"], ["--dataset", "x"],
     "--n --train-flags: an abbreviation of --no-eval"),
])
def test_jobs_refuse_an_abbreviation_of_a_flag_they_set(tmp_path, flags, data, named):
    """Refused when the list is made, not when every method's job runs (J04 was found late: every
    job wrote w/x.pth)."""
    r = call("studies/privacy.py", "jobs", tmp_path / "p", "--n", 2, "--forget-class", "cat",
             *flags, "--", *data)
    assert_clean_error(r, named)
    assert r.stdout == ""


def test_jobs_take_a_single_flag_as_the_scripts_flags(tmp_path):
    """J06: --unlearn-flags '--no-augment' (one flag: the value starts with a dash) reaches every
    unlearn command, as the = form does; argparse alone stopped with 'expected one argument'."""
    def lines(*flags):
        r = call("studies/privacy.py", "jobs", tmp_path / "p", "--n", 1, "--forget-class", "cat",
                 "--groups", "ssd", *flags, "--", "--dataset", "x")
        assert r.returncode == 0, r.stderr
        return r.stdout.splitlines()
    spaced = lines("--unlearn-flags", "--no-augment", "--train-flags", "--no-augment")
    assert spaced == lines("--unlearn-flags=--no-augment", "--train-flags=--no-augment")
    # train, unlearn, outputs
    assert [shlex.split(line).count("--no-augment") for line in spaced] == [1, 1, 0]


# ----------------------------------------------------------------------------- the Makefile

def recorder(path, log):
    """An interpreter standing in for PY: appends its arguments to `log`, one a line, then a blank
    line."""
    path.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" "" >> {shlex.quote(str(log))}\n')
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("target, setting, message", [
    ("pool", "POOL_DIR=w/p\nid>PWNED #", "POOL_DIR=w/p\\nid>PWNED # holds a space,"),  # MA07
    ("evaluate", "MODEL=w/my model.pth", "MODEL=w/my model.pth holds a space"),  # MA08
    ("report", "RUNDIR=w/run dir", "RUNDIR=w/run dir holds a space"),  # MA09
    ("reproduce-cards-small", "CARDS_DIR=w/c d", "CARDS_DIR=w/c d holds a space"),  # MA10
    ("reproduce-c100-small", "C100_DIR=w/x y", "C100_DIR=w/x y holds a space"),  # MA11
    ("ensemble", "N=abc", "N=abc is not a whole number from 1"),  # MA12
    ("train", "DATASET=w/ds/c:x", "DATASET=w/ds/c:x names make targets c:x and holds a colon"),
    ("train", "CHECKPOINTS=w/a:b", "CHECKPOINTS=w/a:b holds a colon"),
    ("retrain", "CLASS=a:b", "CLASS=a:b holds a colon"),
    ("ensemble", "N=08", "N=08 is not a whole number from 1"),  # sh's arithmetic: not octal
    ("ensemble", "N=", "N= is not a whole number from 1"),
    ("sisa", "SHARDS=0", "SHARDS=0 is not a whole number from 1"),
    ("retrain-all", "JOBS=2;id>PWNED", "JOBS=2;id>PWNED is not a whole number from 1"),
    ("train", "EPOCHS=1e3", "EPOCHS=1e3 is not a whole number from 1"),
    ("ulira", "DRAWS=-1", "DRAWS=-1 is not a whole number from 1"),
    ("reproduce", "POOL=x", "POOL=x is not a whole number from 1"),
    ("reproduce", 'YES=1" ] || id>PWNED; [ "', 'YES=1" ] || id>PWNED; [ " holds a space'),
    ("verify-published", "VERIFY_DIR=-rf", "VERIFY_DIR=-rf holds a space, a shell character or a "
                                           "leading dash (leading-dash)"),
    ("ulira", "ULIRA_DIR=u`id>PWNED`", "ULIRA_DIR=u`id>PWNED` holds"),
    ("pool-jobs", "FRACTION=0.1;id", "FRACTION=0.1;id holds"),
    ("reproduce-steps", "SISA_DATASET=a b", "SISA_DATASET=a b holds"),
    ("reproduce-cards", "RETRAIN=cat d;g", "RETRAIN holds d;g with a shell character"),
    ("retrain-all", "DEVICES=cuda:0 cuda:1|id", "DEVICES holds cuda:1|id with a shell character"),
    ("reproduce-steps", "ONE_CLASS=ssd x:y", "ONE_CLASS=ssd x:y holds a colon"),
    ("ensemble", "PRETRAINED=a'b#sha256=0", "PRETRAINED=a'b#sha256=0 holds a space,"),
])
def test_make_refuses_a_variable_it_cannot_pass_in_one_line(tmp_path, target, setting, message):
    """MA07-MA13: each variable a user types that becomes a shell word, a path, a number or part of
    a make target is checked before make reads a rule: one line showing the value (a newline as
    \\n), nothing run or printed (make -n prints a target's commands). Before: a usage block and
    'unrecognized arguments', 'No rule to make target sh', 'target pattern contains no %' or sh's
    'Unterminated quoted string'."""
    r = make("-n", target, setting, cwd=tmp_path)
    assert r.returncode != 0 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, r.stderr
    assert not [f for f in os.listdir(tmp_path) if f.startswith("PWNED")]


def test_make_passes_the_pretrained_pin_and_urls_quoted(tmp_path):
    """MK04: PRETRAINED='hf://...#sha256=HEX', the documented pin, reaches train.py whole: make
    keeps a # given on its command line (only a makefile's own lines lose what follows a #) and
    the recipe single-quotes it. MODEL and DEVICE keep their colons (hf://, cuda:0): only what
    names make targets may not hold one."""
    pin = "hf://o/r/m.safetensors#sha256=" + "e0" * 32
    member = tmp_path / "c" / "ensemble" / "two_seed0.pth"
    r = make("-n", str(member), f"CHECKPOINTS={tmp_path}/c", "DATASET=w/ds/two",
             f"PRETRAINED={pin}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    words = shlex.split(r.stdout)
    assert words[words.index("--pretrained") + 1] == pin and f"--pretrained '{pin}'" in r.stdout
    model = "hf://jaeunglee/resnet18-cifar10-unlearning/resnet18_cifar10_full.pth"
    r = make("-n", "reproduce-cards", f"MODEL={model}", "DEVICE=cuda:0",
             f"CARDS_DIR={tmp_path}/cards", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    words = shlex.split(r.stdout)
    assert words[words.index("--model") + 1] == model
    assert words[words.index("--device") + 1] == "cuda:0"


def test_the_pin_reaches_each_ensemble_member_through_the_parallel_sub_makes(tmp_path):
    """The members are made by sub-makes (xargs, sh -c, make) that read PRETRAINED from MAKEFLAGS:
    the pin arrives whole at every train.py (PY records its arguments instead of running them)."""
    log = tmp_path / "argv"
    pin = "https://example.org/w.pth#sha256=" + "ab" * 32
    r = make("ensemble", "N=2", f"CHECKPOINTS={tmp_path}/c", "DATASET=w/ds/two",
             f"PRETRAINED={pin}", cwd=tmp_path, py=recorder(tmp_path / "py", log))
    assert r.returncode == 0, r.stderr
    commands = [c.splitlines() for c in log.read_text().split("\n\n") if c.strip()]
    members = [c for c in commands if c[0] == "train.py"]
    assert len(members) == 2 and all(c[c.index("--pretrained") + 1] == pin for c in members)


def test_a_dry_run_of_pool_unlearn_runs_nothing(tmp_path):
    """make -n runs a recipe line that names $(MAKE); pool-unlearn's line named it for its METHODS
    loop, so a dry run of one method ran privacy.py jobs and every job it listed. Now the line
    is only printed."""
    log = tmp_path / "ran"
    py = recorder(tmp_path / "py", log)
    for methods in ("ssd", "ssd ct"):
        r = make("-n", "pool-unlearn", f"METHODS={methods}", f"POOL_DIR={tmp_path}/p",
                 cwd=tmp_path, py=py)
        assert r.returncode == 0, r.stderr
        loop = "-m studies.privacy jobs" if methods == "ssd" else "pool-unlearn METHODS=$m"
        assert loop in r.stdout
    assert not log.exists()


# ----------------------------------------------------------------------------- class names through make

@pytest.mark.parametrize("name, reason", [
    ("-x", "it starts with -, which a script would read as a flag"),  # MA05
    ("a b", "it holds ' ', which is not a letter, a digit or one of . _ + -"),
    ("q\u0301", "it holds '\\u0301', which is not a letter"),  # no precomposed q-acute: a mark
])
def test_a_class_name_make_cannot_carry_is_refused_for_its_own_reason(tmp_path, name, reason):
    """MA05: '-x' was refused as holding 'a space, quote or shell character'; each name now gets
    its own reason, naming the character."""
    write_classes(tmp_path / "d", ["cat", name])
    r = call("data.py", "--for-make", "--dataset", tmp_path / "d", "--data-dir", tmp_path / "c")
    assert_clean_error(r, f"cannot be passed through make safely ({reason}")
    assert f"--forget-class {sorted(['cat', name]).index(name)}" in r.stderr  # classes: sorted


@pytest.mark.slow
def test_a_class_name_with_a_decomposed_accent_goes_through_make(tmp_path):
    """MA03: 'café' written as e + U+0301 (NFD, as macOS names folders) holds no space, quote or
    shell character and was refused as if it did; it is checked in NFC now and goes through make
    as the folder spells it (make -n reproduce-steps lists its retrain and unlearned models)."""
    nfd = "cafe\u0301"
    write_classes(tmp_path / "d", ["cat", nfd])
    r = call("data.py", "--for-make", "--dataset", tmp_path / "d", "--data-dir", tmp_path / "c")
    assert r.returncode == 0 and f"classes: {nfd} cat" in r.stdout, r.stderr
    r = make("-n", "reproduce-steps", f"DATASET={tmp_path / 'd'}", f"DATA_DIR={tmp_path / 'c'}",
             f"RUNDIR={tmp_path / 'r'}", f"CLASS={nfd}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"--forget-class '{nfd}' --out {tmp_path}/r/no_{nfd}.pth" in r.stdout
    assert f"--out {tmp_path}/r/unlearn/ssd/{nfd}.pth" in r.stdout
