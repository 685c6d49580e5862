"""The layout: the card's scripts and what they share at the top, the studies in studies/ (run as
python -m studies.X), which the core never imports; the Makefile includes the studies' targets,
and every target of before the move is still listed and still makes its commands."""
import ast
import glob
import os
import re

import pytest

from conftest import ROOT, make

STUDIES = ("privacy", "reproduce_cards", "reproduce_c100", "verify_published", "bench",
           "first_call")
# `make help` before the studies moved to studies/studies.mk (commit 0ce4f42), test-fast added
TARGETS = """help install test test-fast demo train retrain retrain-all evaluate unlearn
unlearn-table ensemble sisa sisa-unlearn bench reproduce-cards reproduce-cards-train
reproduce-cards-small first-call reproduce reproduce-small report verify-published
verify-published-small pool pool-unlearn pool-score pool-jobs pool-unlearn-jobs
pool-small ulira ulira-retrain ulira-jobs ulira-unlearn-jobs ulira-small clean-demo""".split()


def core_files():
    return sorted(glob.glob(os.path.join(ROOT, "*.py")))


def studies_imports(path):
    """(line, what) of every import of studies in a file: import and from statements, and
    importlib.import_module / __import__ of a name starting with studies."""
    found = []
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(
                node.func, "id", None)) in ("import_module", "__import__") and node.args:
            first = node.args[0]
            names = [first.value] if isinstance(first, ast.Constant) else []
        found += [(node.lineno, n) for n in names
                  if isinstance(n, str) and n.split(".")[0] == "studies"]
    return found


def test_the_core_never_imports_the_studies_and_the_top_level_is_the_card():
    files = core_files()
    assert {os.path.basename(f)[:-3] for f in files}.isdisjoint(STUDIES)  # each moved for good
    assert len(files) <= 10, files  # the card, what it shares, sisa.py: `ls *.py` fits a screen
    imports = {os.path.basename(f): studies_imports(f) for f in files}
    assert not any(imports.values()), imports
    assert studies_imports(os.path.join(ROOT, "studies", "reproduce_c100.py"))  # the check sees one


def test_each_study_says_how_it_runs():
    """Every command of a study's docstring runs it as a module from the checkout."""
    for name in STUDIES:
        doc = ast.get_docstring(ast.parse(open(os.path.join(ROOT, "studies", f"{name}.py")).read()))
        commands = [line for line in doc.splitlines() if line.strip().startswith("python")]
        assert all(f"python -m studies.{name} " in line for line in commands), (name, commands)
        assert not re.search(rf"python (\S*/)?{name}\.py", doc), name


def test_make_help_lists_every_target_once_and_the_makefile_stays_short():
    r = make("help")
    assert r.returncode == 0, r.stderr
    listed = [line.split()[0] for line in r.stdout.splitlines()]
    assert sorted(listed) == sorted(TARGETS)  # the included file's too, no file name before them
    with open(os.path.join(ROOT, "Makefile")) as f:
        makefile = f.read()
    assert len(makefile.splitlines()) <= 200
    assert "include studies/studies.mk" in makefile


@pytest.mark.parametrize("target, expected", [
    ("train", "train.py --dataset"),
    ("unlearn", "unlearn.py --dataset"),
    ("bench", "-m studies.bench --dataset"),
    ("reproduce-cards", "-m studies.reproduce_cards --dataset"),
    ("reproduce-cards-train", "--stage train"),
    ("reproduce-c100-small", "-m studies.reproduce_c100 --data-dir"),
    ("verify-published-small", "-m studies.verify_published --dataset"),
    ("first-call", "-m studies.first_call --dataset"),
    ("pool-score", "-m studies.privacy score"),
    ("pool-jobs", "-m studies.privacy jobs"),
    ("ulira", "-m studies.privacy score"),
    ("report", "report.py runs/reproduce"),
    ("test-fast", '-m pytest -m "not slow"'),  # the inner loop: pytest.ini registers the marker
])
def test_a_dry_run_of_each_kind_of_target_names_its_script(tmp_path, target, expected):
    """make -n of a sample of the targets (one per script, core and studies): its commands,
    with the studies run as modules; nothing is run or written."""
    r = make("-n", target, cwd=tmp_path, py="py")
    assert r.returncode == 0, r.stderr
    assert expected in r.stdout.replace("\\\n", " "), r.stdout
    assert not os.listdir(tmp_path)
