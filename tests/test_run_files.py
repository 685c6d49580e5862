"""Run files read back: report.py and evaluate.py --table on sidecars, evaluations and pool scores
that a user edited or another version wrote. Each bad field is one line naming the file and the
field, never a traceback; the report and the cards never replace a card or a note of the user's."""
import json

import pytest

from conftest import assert_clean_error, call

SUMMARY = {"n": 10, "acc": 80.0, "loss": 0.5, "top5": 99.0}
FORGET = {**SUMMARY, "acc": 2.0, "loss": 6.0}
CAT = {"forget_class": "cat", "n_forget": 10, "n_train": 20, "n_test": 10}


def metrics(losses=False):
    """evaluate.evaluate_model's metrics as strip_losses writes them (with --losses: kept)."""
    forget = {**FORGET, "losses": [5.0, 6.5, 7.0]} if losses else FORGET
    return {"test": SUMMARY, "test_forget": forget, "test_retain": SUMMARY, "train_forget": forget,
            "train_retain": SUMMARY, "per_class": [2.0, 90.0], "confusion": [[1, 9], [0, 10]],
            "mia": 0.55}


def sidecar(**fields):
    """A train.py sidecar's fields that the report reads, as train.py writes them."""
    return {"argv": ["train.py"], "versions": {"torch": "2"}, "recipe": "sgd", "arch": "resnet20",
            "dataset": "toy", "device": "cpu", "seconds": 12.5, "config": {"epochs": 2, "lr": 0.1},
            "split": {"forget_class": None, "n_forget": 0, "n_train": 20, "n_test": 10},
            "metrics": {"epoch": 2, "loss": 0.4, "train_acc": 90.0, "test_acc": 85.0}, **fields}


def stat(mean):
    return {"mean": mean, "std": 0.5, "n": 3}


def group():
    """One group of privacy.py score's scores.json (the seeds design)."""
    spread = {"forget_acc": stat(1.0), "retain_acc": stat(90.0), "test_acc": stat(85.0),
              "mia": stat(0.5)}
    return {"models": 3, "forget_quality": 0.5, "utility": 1.0, "score": 0.5,
            "epsilons": [0.1, 0.7, 2.0],
            "klom_quantiles": {s: [0.0, 0.1, 0.2, 0.3, 0.4] for s in ("forget", "retain", "test")},
            "ulira": {"acc": 52.0, "tpr_at_1%": 1.0, "tpr_at_0.1%": 0.0, "models": [1, 2, 1, 2]},
            "spread": spread, "seconds": stat(3.0)}


def write_run(folder):
    """A run folder holding every kind of file report.py reads, with the fields the scripts
    write: the full model and its log, a retrain without cat, SSD on cat, the evaluation of both,
    SISA, the ensemble, a pool's scores."""
    evaluated = {"no_cat.pth": metrics(losses=True), "unlearn/ssd/cat.pth": metrics(losses=True)}
    files = {
        "full.json": sidecar(),
        "no_cat.json": sidecar(split=CAT),
        "unlearn/ssd/cat.json": sidecar(method="ssd", source="full.pth", metrics=metrics(),
                                        retrained_metrics=metrics(), split=CAT,
                                        config={"lam": 1.0, "alpha": 10.0}),
        "eval_cat.json": {"kind": "evaluation", "dataset": "toy", "classes": ["cat", "dog"],
                          "retrained": "no_cat.pth", "split": {"forget_class": "cat"},
                          "models": evaluated},
        "sisa/eval.json": {"models": {"sisa/full.json": {**metrics(), "member_mia": [0.5]},
                                      "sisa/unlearned.json": metrics()}},
        "ensemble/eval.json": {"models": {"ensemble/seed0.pth": metrics(), "ensemble": metrics()}},
        "pools/p/scores.json": {"kind": "pool-scores", "pool": "p", "n": 6,
                                "examples": {"forget": 10},
                                "groups": {"retrain": group(), "ssd": group()}},
    }
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(content))
    for name in ("full.pth", "no_cat.pth", "unlearn/ssd/cat.pth"):
        (folder / name).write_bytes(b"weights")  # with a sidecar: gets a card; never read
    lines = [{"epoch": e, "loss": 1.0 / e, "train_acc": 50.0 + e, "test_acc": 40.0 + e}
             for e in (1, 2)]
    (folder / "full.log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def edit(path, change):
    content = json.loads(path.read_text())
    change(content)
    path.write_text(json.dumps(content))


@pytest.fixture
def run(tmp_path):
    folder = tmp_path / "run"
    write_run(folder)
    return folder


def test_a_run_of_every_kind_of_file_is_reported(run):
    r = call("report.py", run)
    assert r.returncode == 0, r.stderr
    text = (run / "report.md").read_text()
    assert "| full | resnet20 | 85.00% | 95.4% | -10.40 | 12.5 |" in text
    assert "### p (N = 6" in text
    cards = sorted(p.name for p in (run / "cards").iterdir())
    assert cards == ["full.md", "no_cat.md", "unlearn_ssd_cat.md"]


def models(evaluation):
    return evaluation["models"]["no_cat.pth"]


# Each case: the file, a change a user (or another version) could make, the field the line names.
CASES = {
    "RP01 metrics a string": ("unlearn/ssd/cat.json", lambda c: c.update(metrics="none"),
                              "metrics is \"none\""),
    "RP02 split null": ("full.json", lambda c: c.update(split=None), "split is null"),
    "RP03 seconds a string": ("full.json", lambda c: c.update(seconds="12"), "seconds is \"12\""),
    "RP04 test_acc null": ("no_cat.json", lambda c: c["metrics"].update(test_acc=None),
                           "metrics.test_acc is null"),
    "RP05 groups a list": ("pools/p/scores.json", lambda c: c.update(groups=[]), "groups is []"),
    "groups empty": ("pools/p/scores.json", lambda c: c.update(groups={}), "groups is {}"),
    "an accuracy of 250": ("unlearn/ssd/cat.json",
                           lambda c: c["metrics"]["test_retain"].update(acc=250),
                           "metrics.test_retain.acc is 250"),
    "mia true": ("unlearn/ssd/cat.json", lambda c: c["metrics"].update(mia=True),
                 "metrics.mia is true"),
    "no n_forget": ("unlearn/ssd/cat.json", lambda c: c["split"].pop("n_forget"),
                    "lacks the field split.n_forget"),
    "a log line without loss": ("full.log.jsonl", None, "line 1: lacks the field loss"),
    "an evaluation without losses": ("eval_cat.json",
                                     lambda c: models(c)["train_forget"].pop("losses"),
                                     'models["no_cat.pth"].train_forget'),
    "per_class of 3 for 2 classes": ("eval_cat.json",
                                     lambda c: models(c)["per_class"].append(1.0),
                                     'models["no_cat.pth"] has per_class or confusion'),
    "a class that names a folder": ("eval_cat.json",
                                    lambda c: c["split"].update(forget_class="../../x"),
                                    "split.forget_class is \"../../x\""),
    "a pool that names a folder": ("pools/p/scores.json", lambda c: c.update(pool="../../x"),
                                   "pool is \"../../x\""),
    "a SISA model without MIA": ("sisa/eval.json",
                                 lambda c: c["models"]["sisa/unlearned.json"].update(mia=None),
                                 'models["sisa/unlearned.json"].mia is null'),
    "two KLOM quantiles": ("pools/p/scores.json",
                           lambda c: c["groups"]["ssd"]["klom_quantiles"].update(test=[0, 1]),
                           'groups["ssd"].klom_quantiles.test is [0, 1]'),
    "no epsilons": ("pools/p/scores.json", lambda c: c["groups"]["ssd"].update(epsilons=[]),
                    'groups["ssd"].epsilons is []'),
    "an int too large for a float": ("full.json", lambda c: c.update(seconds=10 ** 400),
                                     "seconds is 1000"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_bad_field_is_one_line_naming_the_file_and_the_field(run, case):
    name, change, field = CASES[case]
    if change is None:
        (run / name).write_text('{"epoch": 1, "train_acc": 50.0, "test_acc": 40.0}\n')
    else:
        edit(run / name, change)
    r = call("report.py", run)
    assert_clean_error(r, field)
    assert str(run / name) in r.stderr.strip().splitlines()[-1]
    assert not (run / "report.md").exists()


def test_klom_undefined_where_no_example_is_defined(run):
    """privacy.py leaves an undefined KLOM out of the quantiles (None when no example of the set
    has one) and lists the examples in klom_undefined: reported as such, not refused."""
    def undefined(c):
        c["groups"]["ssd"]["klom_quantiles"]["test"] = None
        c["groups"]["ssd"]["klom_undefined"] = {"forget": [], "retain": [], "test": [3, 5, 8]}
    edit(run / "pools/p/scores.json", undefined)
    r = call("report.py", run)
    assert r.returncode == 0, r.stderr
    assert "| - (3 undefined) |" in (run / "report.md").read_text()
    edit(run / "pools/p/scores.json", lambda c: c["groups"]["ssd"].update(klom_undefined=3))
    assert_clean_error(call("report.py", run), 'groups["ssd"].klom_undefined is 3')


def test_a_model_path_holding_unlearn_is_labelled_by_its_name(run):
    """A model evaluated as myunlearn.pth (no folder) was taken for unlearn/<method>/<class>."""
    def rename(c):
        c["models"]["myunlearn.pth"] = c["models"].pop("unlearn/ssd/cat.pth")
    edit(run / "eval_cat.json", rename)
    r = call("report.py", run)
    assert r.returncode == 0, r.stderr


def test_table_reads_sidecars_through_the_same_checks(run):
    path = run / "unlearn" / "ssd" / "cat.json"
    r = call("evaluate.py", "--table", path)
    assert r.returncode == 0, r.stderr
    row = "| `cat.pth` | cat | 2.00 (6.000) | 80.00 (0.500) | 0.550 |"
    assert r.stdout.splitlines()[-1].startswith(row)
    edit(path, lambda c: c["metrics"]["test_forget"].update(loss="6"))
    assert_clean_error(call("evaluate.py", "--table", path),
                       f"{path}: metrics.test_forget.loss is \"6\"")


# ----------------------------------------------------------------- what the report and cards write

def test_a_card_never_replaces_a_note_that_starts_with_front_matter(run):
    note = "---\ntitle: my notes on this model\n---\nThree weeks of observations.\n"
    (run / "full.md").write_text(note)
    assert_clean_error(call("report.py", "--card", run / "full.pth"), "--card")
    assert (run / "full.md").read_text() == note
    (run / "full.md").unlink()
    assert call("report.py", "--card", run / "full.pth").returncode == 0
    edit(run / "full.json", lambda c: c.update(seconds=99.0))
    r = call("report.py", "--card", run / "full.pth")  # our own card: a rerun replaces it
    assert r.returncode == 0, r.stderr
    assert "- **Seconds**: 99.0 on cpu" in (run / "full.md").read_text()


def test_the_report_is_never_written_over_a_card_it_links_to(run):
    assert call("report.py", run).returncode == 0
    card = (run / "cards" / "full.md").read_text()
    r = call("report.py", run, "--out", run / "cards" / "full.md", "--overwrite")
    assert_clean_error(r, "--out")
    assert (run / "cards" / "full.md").read_text() == card


def test_a_card_from_a_sidecar_without_the_optional_fields(run):
    """A sidecar of an earlier version lacks argv, versions and recipe: the checked reader reads
    them as null, which the card takes as none, as it took them absent."""
    edit(run / "full.json", lambda c: [c.pop(k) for k in ("argv", "versions", "recipe")])
    r = call("report.py", "--card", run / "full.pth")
    assert r.returncode == 0, r.stderr
    card = (run / "full.md").read_text()
    assert "trained with the sgd recipe (``)" in card and "- **Versions**: \n" in card
