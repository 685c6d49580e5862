"""make reproduce-cards-small end to end on a CPU: the cards' tables beside the published numbers, from the runs'
own sidecars, and a rerun that continues instead of starting again."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ARCHIVE, ROOT
from published import CIFAR10, PUBLISHED_UNLEARN


def make_cards(out, data_dir):
    return subprocess.run(["make", "-C", ROOT, "--no-print-directory", "INSTALL=", f"PY={sys.executable}",
                           "reproduce-cards-small", f"CARDS_DIR={out}", f"DATA_DIR={data_dir}"],
                          capture_output=True, text=True, timeout=600)


def table_rows(markdown, title):
    """{class: cells} of the table under the heading that starts with `title`."""
    section = markdown.split(f"## {title}")[1].split("\n## ")[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ")][1:]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows}


def test_reproduce_cards_small_writes_both_cards_beside_the_published_tables_and_resumes(cifar_jpeg, data_dir,
                                                                                          tmp_path):
    out = tmp_path / "cards"
    r = make_cards(out, data_dir)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = (tmp_path / "cards-small" / "cards.md").read_text()
    folder = tmp_path / "cards-small"
    for title, sub, card in (("SSD, D = retain + forget", "ssd", "ssd"), ("SSD, D = the retain set", "ssd-retain", "ssd"),
                             ("AdvNegGrad", "advneggrad", "advneggrad")):
        rows = table_rows(report, title)
        assert list(rows) == list(CIFAR10), title
        for name, cells in rows.items():
            meta = json.load(open(folder / sub / f"{name}.json"))
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
    full = json.load(open(folder / "full.json"))
    assert full["config"]["epochs"] == 2 and full["arch"] == "resnet20"
    assert f"first epoch {full['first_epoch_seconds']:.2f} s" in report
    results = json.load(open(folder / "cards.json"))
    assert results["training"]["test_acc"] == pytest.approx(
        json.load(open(folder / "full_eval.json"))["models"][str(folder / "full.pth")]["test"]["acc"])

    os.remove(folder / "advneggrad" / "cat.pth")  # as if interrupted before this run finished
    again = make_cards(out, data_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "1 job(s)" in again.stdout and "epoch 1/2" not in again.stdout  # only the missing run, no training
    assert (folder / "advneggrad" / "cat.pth").exists()


def test_jobs_at_once_follow_the_free_gpu_memory_and_the_methods_need(tmp_path, monkeypatch, fake_cuda):
    import torch
    import reproduce_cards
    import unlearn
    from models import build_model, save_model
    save_model(str(tmp_path / "m.pth"), build_model("resnet18", 10), {"arch": "resnet18"})
    args = reproduce_cards.parse_args(["--device", "cuda"])
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    need = unlearn.memory_need(build_model("resnet18", 10), unlearn.AdvNegGradConfig(), torch.bfloat16) / 2 ** 30
    for free, expected in ((139, int(139 // (2 * need + 1.5))), (20, 1), (1000, 8)):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None, free=free: (free * 2 ** 30, 141 * 2 ** 30))
        jobs, per_job = reproduce_cards.auto_jobs(args, str(tmp_path / "m.pth"))
        assert jobs == expected and per_job == pytest.approx(2 * need + 1.5)
    assert 3 <= int(139 // (2 * need + 1.5)) <= 6  # AdvNegGrad's 11 GB estimate, doubled: 5 jobs on an H200
