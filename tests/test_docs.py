"""docs/METHODS.md states each default once, in `--help` (issue 29): every method's section names
where each of its flags' defaults comes from, and no section restates the values."""
import argparse
import os
import re

import cli
import unlearn
from conftest import ROOT

METHODS_MD = os.path.join(ROOT, "docs", "METHODS.md")
SOURCES = "Where each default comes from:"


def method_sections(text):
    """{method: its section}: from a "## `name`" heading to the next "## " heading."""
    found = {}
    for part in re.split(r"^(?=## )", text, flags=re.M):  # "### " subsections stay inside
        heading = re.match(r"## `([^`]+)`", part)
        if heading:
            found[heading.group(1)] = part
    return found


def sources_of(section):
    """The section's "Where each default comes from:" list, up to its next heading."""
    return re.split(r"^#", section.split(SOURCES, 1)[1], flags=re.M)[0]


def flags_of(config_class):
    """Each flag as cli builds it for the config (first spelling: --augment, not --no-augment)."""
    parser = argparse.ArgumentParser()
    cli.add_config_args(parser, config_class)
    fields = {f.name for f in cli.flag_fields(config_class)}  # flag=None fields come from the data
    return [a.option_strings[0] for a in parser._actions if a.dest in fields]


def named(flag, text):
    pattern = rf"(?<![\w-]){re.escape(flag)}(?![\w-])"  # --lr is not in --impair-lr
    return re.search(pattern, text) is not None


def test_every_method_names_the_source_of_each_of_its_flags():
    text = open(METHODS_MD, encoding="utf-8").read()
    sections = method_sections(text)
    missing = {}
    for name, (_, config_class, _) in unlearn.METHODS.items():  # methods.METHODS and retrain
        assert name in sections, f"docs/METHODS.md has no section ## `{name}`"
        assert sections[name].count(SOURCES) == 1, name
        unnamed = [f for f in flags_of(config_class) if not named(f, sources_of(sections[name]))]
        if unnamed:
            missing[name] = unnamed
    assert not missing, f"flags whose source docs/METHODS.md does not name: {missing}"


def test_methods_md_points_to_help_and_restates_no_defaults():
    text = open(METHODS_MD, encoding="utf-8").read()
    top = text.split("\n## ", 1)[0]
    assert "python unlearn.py --method M --help" in top  # where the values are
    restating = [line for line in text.splitlines() if line.startswith("Defaults:")]
    assert not restating, restating


def test_the_check_sees_a_flag_missing_and_a_flag_that_only_looks_alike():
    section = f"## `x`\n\nWhat: ...\n\n{SOURCES}\n- `--impair-lr`: a file.\n\n### x, y\n--lr"
    sources = sources_of(method_sections(section)["x"])
    assert named("--impair-lr", sources) and not named("--lr", sources)
    assert flags_of(unlearn.METHODS["boundary-shrink"][1])[-1] == "--bound"  # mean, std: no flag
