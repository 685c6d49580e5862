"""What a user types reaches a script or a shell as the words meant, or ends in one line: flags are never
abbreviated (the scripts refuse a prefix of a flag, privacy.py jobs refuses one of the flags it sets), and every
Makefile variable that becomes a shell word, a path or a make target is checked (`make -n`: nothing runs)."""
import importlib
import shlex

import pytest

from conftest import assert_clean_error, call

# an abbreviation of one of each script's flags, after the flags the script requires
ABBREVIATED = [
    ("train", ["--epoch", "1"]),
    ("unlearn", ["--method", "ssd", "--model", "m.pth", "--forget-cl", "cat"]),
    ("evaluate", ["--model", "m.pth", "--forget-cl", "cat"]),
    ("data", ["--forget-cl", "cat"]),
    ("models", ["--mod", "m.pth"]),
    ("report", ["run", "--overwr"]),
    ("reproduce_cards", ["--epoch", "1"]),
    ("reproduce_c100", ["--epoch", "1"]),
    ("verify_published", ["--test-sub", "1"]),
    ("bench", ["--devic", "cpu"]),
    ("privacy", ["outputs", "--model", "m.pth", "--out", "o.npz", "--forget-cl", "cat"]),
    ("privacy", ["score", "pool", "--overwr"]),
    ("privacy", ["jobs", "pool", "--n", "1", "--forget-cl", "cat"]),
]


@pytest.mark.parametrize("module, argv", ABBREVIATED, ids=[f"{m} {v[0]}" for m, v in ABBREVIATED])
def test_no_script_takes_an_abbreviated_flag(module, argv, capsys):
    """J03/J04's cause: argparse expanded --forget-cl to --forget-class, so a prefix slipped past every check made on
    the exact names (privacy.py jobs' list of flags it sets). Every parser refuses it (allow_abbrev=False)."""
    with pytest.raises(SystemExit) as e:
        importlib.import_module(module).parse_args(argv)
    assert e.value.code == 2 and f"unrecognized arguments: {argv[-2] if argv[-1][0] != '-' else argv[-1]}" in \
        capsys.readouterr().err


@pytest.mark.parametrize("flags, data, named", [
    ([], ["--dataset", "x", "--forget-cl", "dog"], "--forget-cl after --: an abbreviation of --forget-class"),  # J03
    (["--groups", "ssd", "--unlearn-flags", "--ou w/x.pth"], ["--dataset", "x"],
     "--ou --unlearn-flags: an abbreviation of --out"),  # J04
    (["--train-flags", "--forget-f=0.5"], ["--dataset", "x"],
     "--forget-f=0.5 --train-flags: an abbreviation of --forget-fraction"),
    (["--train-flags", "--n"], ["--dataset", "x"], "--n --train-flags: an abbreviation of --no-eval"),
])
def test_jobs_refuse_an_abbreviation_of_a_flag_they_set(tmp_path, flags, data, named):
    """Refused when the list is made, not when every method's job runs (J04 was found late: all jobs wrote w/x.pth)."""
    r = call("privacy.py", "jobs", tmp_path / "p", "--n", 2, "--forget-class", "cat", *flags, "--", *data)
    assert_clean_error(r, named)
    assert r.stdout == ""


def test_jobs_take_a_single_flag_as_the_scripts_flags(tmp_path):
    """J06: --unlearn-flags '--no-augment' (one flag, the value starts with a dash) reaches every unlearn command, as
    the = form does; argparse alone stopped with 'expected one argument'."""
    def lines(*flags):
        r = call("privacy.py", "jobs", tmp_path / "p", "--n", 1, "--forget-class", "cat", "--groups", "ssd", *flags,
                 "--", "--dataset", "x")
        assert r.returncode == 0, r.stderr
        return r.stdout.splitlines()
    spaced = lines("--unlearn-flags", "--no-augment", "--train-flags", "--no-augment")
    assert spaced == lines("--unlearn-flags=--no-augment", "--train-flags=--no-augment")
    assert [shlex.split(line).count("--no-augment") for line in spaced] == [1, 1, 0]  # train, unlearn, outputs
