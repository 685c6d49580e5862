"""The layout: the card's scripts and what they share at the top, the studies in studies/ (run as
python -m studies.X), which the core never imports."""
import ast
import glob
import os
import re

from conftest import ROOT

STUDIES = ("privacy", "reproduce_cards", "reproduce_c100", "verify_published", "bench",
           "first_call")


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
