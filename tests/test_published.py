"""Starting from the published checkpoints, offline: hf:// and URL names download once into torch's hub cache from a
local stand-in for the Hub's URL layout, a #sha256= suffix is checked, no network is one clear line; a checkpoint in
the card's format loads through its hf:// name; make verify-published-small runs end to end on stand-in files and its
tables and weight comparison hold the numbers computed here another way."""
import dataclasses
import hashlib
import json
import os
import shutil

import pytest
import torch
import torchvision

import published
import report
from conftest import ARCHIVE, assert_clean_error, call, make, make_commands, write_first
from data import STATS, Loader, make_split
from evaluate import predict
from models import build_model, cache_path, fetch, file_url, load_model
from studies import verify_published


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A folder laid out as the Hub serves files (OWNER/REPO/resolve/REV/FILE) as $HF_ENDPOINT, and an empty torch
    hub cache as $TORCH_HOME."""
    monkeypatch.setenv("HF_ENDPOINT", (tmp_path / "hub").as_uri())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "hub"


def publish(hub, repo, file, state, revision="main"):
    path = hub / repo / "resolve" / revision / file
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def card_resnet18():
    """The model card's snippet: torchvision's resnet18 with a 3x3 stem, no max-pool, 10 classes."""
    model = torchvision.models.resnet18(weights=None)
    model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = torch.nn.Identity()
    model.fc = torch.nn.Linear(512, 10)
    return model


def test_hf_names_resolve_to_the_hubs_file_urls(monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert (file_url("hf://jaeunglee/resnet18-cifar10-unlearning/resnet18_cifar10_full.pth") ==
            "https://huggingface.co/jaeunglee/resnet18-cifar10-unlearning/resolve/main/resnet18_cifar10_full.pth")
    assert file_url("hf://a/b@v1.0/sub/x.pth") == "https://huggingface.co/a/b/resolve/v1.0/sub/x.pth"
    monkeypatch.setenv("HF_ENDPOINT", "https://mirror.example/")
    assert file_url("hf://a/b/x.pth") == "https://mirror.example/a/b/resolve/main/x.pth"
    with pytest.raises(ValueError, match="hf://OWNER/REPO/FILE"):
        file_url("hf://a/x.pth")


def test_a_download_is_cached_reused_and_checked_by_sha256(hub, tmp_path):
    source = tmp_path / "served" / "m.pth"
    source.parent.mkdir()
    torch.save(build_model("resnet20", 10).state_dict(), source)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    local = fetch(source.as_uri())
    assert local == cache_path(source.as_uri()) and local.startswith(str(tmp_path / "torch" / "hub" / "checkpoints"))
    assert open(local, "rb").read() == source.read_bytes()
    stamp = os.stat(local).st_mtime_ns
    assert fetch(f"{source.as_uri()}#sha256={digest}") == local and os.stat(local).st_mtime_ns == stamp  # reused
    with pytest.raises(ValueError, match=f"sha256 is {digest}, not {'0' * 64}"):
        fetch(f"{source.as_uri()}#sha256={'0' * 64}")
    assert not os.path.exists(local)  # a file that fails its check is not kept
    source.unlink()
    with pytest.raises(OSError, match="could not download"):
        fetch(source.as_uri())


def test_the_cached_copy_serves_when_the_source_is_gone(hub, tmp_path):
    publish(hub, "o/r", "m.pth", build_model("resnet20", 10).state_dict())
    first = load_model("hf://o/r/m.pth")
    shutil.rmtree(hub)  # offline from now on
    again = load_model("hf://o/r/m.pth")
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:9", "missing-folder"])
def test_offline_or_missing_is_one_line_naming_the_url_and_the_cache(hub, tmp_path, monkeypatch, endpoint):
    if endpoint == "missing-folder":  # the Hub answers, but has no such file (a 404)
        endpoint = (tmp_path / endpoint).as_uri()
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    r = call("models.py", "--model", "hf://o/r/m.pth")
    assert_clean_error(r, f"could not download {endpoint}/o/r/resolve/main/m.pth")
    assert f"place it at {tmp_path / 'torch' / 'hub' / 'checkpoints'}" in r.stderr


def test_a_card_format_checkpoint_loads_through_its_hf_name_and_revision(hub):
    torch.manual_seed(0)
    main, tagged = card_resnet18(), card_resnet18()
    publish(hub, "owner/repo", "resnet18_cifar10_full.pth", main.state_dict())
    publish(hub, "owner/repo", "resnet18_cifar10_full.pth", tagged.state_dict(), revision="v1")
    for name, expected in [("hf://owner/repo/resnet18_cifar10_full.pth", main),
                           ("hf://owner/repo@v1/resnet18_cifar10_full.pth", tagged)]:
        model = load_model(name, arch="resnet18", num_classes=10)
        ours, theirs = model.state_dict(), expected.state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name


def test_unlearn_and_evaluate_take_hf_names(hub, trained, cifar_jpeg, data_dir, tmp_path):
    publish(hub, "o/r", "full.pth", torch.load(trained[0], weights_only=True))
    flags = ["--dataset", ARCHIVE, "--data-dir", data_dir, "--device", "cpu", "--subset", 10, "--test-subset", 3,
             "--forget-class", "cat"]
    r = call("unlearn.py", "--method", "ssd", "--model", "hf://o/r/full.pth", "--retrained", "hf://o/r/full.pth",
             "--out", tmp_path / "u.pth", *flags)
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "u.pth.json").read_text())
    assert meta["source"] == "hf://o/r/full.pth" and meta["identity"]["source"] == "hf://o/r/full.pth"
    via_hub = call("evaluate.py", "--model", "hf://o/r/full.pth", "--json", tmp_path / "a.json", *flags)
    local = call("evaluate.py", "--model", trained[0], "--json", tmp_path / "b.json", *flags)
    assert via_hub.returncode == local.returncode == 0, via_hub.stderr + local.stderr
    a = json.loads((tmp_path / "a.json").read_text())["models"]["hf://o/r/full.pth"]
    b = json.loads((tmp_path / "b.json").read_text())["models"][trained[0]]
    assert a["test"] == b["test"] and a["per_class"] == b["per_class"]


def test_published_names_are_one_table_of_31_checkpoints():
    names = published.published_names()
    assert len(names) == 31 and len(set(names.values())) == 31
    assert names["resnet18_cifar10_no_cat.pth"] == (
        "hf://jaeunglee/resnet18-cifar10-unlearning/resnet18_cifar10_no_cat.pth")
    assert names["cifar10_resnet18_SSD_3.pth"] == (
        "hf://Yurim0507/Selective_Synapse_Dampening/cifar10_resnet18_SSD_3.pth")
    assert names["cifar10_resnet18_AdvNegGrad_9.pth"] == "hf://Yurim0507/AdvNegGrad/cifar10_resnet18_AdvNegGrad_9.pth"


def test_a_card_names_the_published_source_and_counterpart_by_hf_name():
    meta = {"method": "ssd", "dataset": "cifar10", "arch": "resnet18",
            "source": "checkpoints/resnet18_cifar10_full.pth", "split": {"forget_class": "cat", "n_forget": 5000},
            "config": {"lam": 1.0}, "seconds": 1.0, "device": "cpu",
            "metrics": None}
    card = report.model_card(meta, "cifar10_resnet18_SSD_3.pth")
    assert "base_model:\n- jaeunglee/resnet18-cifar10-unlearning\n" in card
    assert "- **Unlearned from**: `hf://jaeunglee/resnet18-cifar10-unlearning/resnet18_cifar10_full.pth`" in card
    assert ("- **Published counterpart**: `hf://Yurim0507/Selective_Synapse_Dampening/cifar10_resnet18_SSD_3.pth`"
            in card)


def test_the_weight_comparison_on_a_known_case():
    original = {"w": torch.ones(100), "v": torch.ones(10, 10), "count": torch.tensor(7)}
    ours = {k: v.clone() for k, v in original.items()}
    theirs = {k: v.clone() for k, v in original.items()}
    ours["w"][:10] = 0.5         # ours dampens 0-9
    theirs["w"][5:10] = 0.25     # theirs dampens 5-14 and v[0, 0], by other factors on 5-9
    theirs["w"][10:15] = 0.5
    theirs["v"][0, 0] = 0.25
    c = verify_published.compare_weights(original, ours, theirs)
    assert c["n"] == 200  # floating-point entries only
    assert c["changed_ours"] == 10 / 200 and c["changed_theirs"] == 11 / 200
    assert c["same_selection"] == (200 - 5 - 5 - 1) / 200  # 0-4: ours only; 10-14 and v[0, 0]: theirs only
    assert c["equal"] == (200 - 16) / 200  # 0-14 and v[0, 0] differ
    assert c["max_diff"] == 0.75


def card_sums(k, forget, retain):
    """Class sums whose class-k and other-class (acc %, loss) are `forget` and `retain`: 100 images a class."""
    n, correct, loss = [100.0] * 10, [retain[0]] * 10, [100 * retain[1]] * 10
    correct[k], loss[k] = forget[0], 100 * forget[1]
    return {"n": n, "correct": correct, "loss": loss}


def test_the_verdict_says_which_rows_do_not_agree():
    card = published.PUBLISHED_UNLEARN["ssd"]
    evals = {("ssd", k): card_sums(k, card[c][:2], card[c][2:]) for k, c in enumerate(published.CIFAR10)}
    text = verify_published.section_unlearned("ssd", "SSD", evals, range(10), comparable=True)
    assert "Agrees with the card" in text and "+0.00 (+0.000)" in text
    evals["ssd", 5] = card_sums(5, (1.0, card["dog"][1]), card["dog"][2:])  # one point more forget accuracy on dog
    text = verify_published.section_unlearned("ssd", "SSD", evals, range(10), comparable=True)
    assert "Does not agree with the card for dog (" in text and "| dog | 1.00 (6.917) | 0.00 (6.917) | +1.00" in text
    assert "Not comparable" in verify_published.section_unlearned("ssd", "SSD", evals, range(10), comparable=False)


# make verify-published-small's data: the first 13 images a class of the real CIFAR-10 (its
# --subset / --test-subset 100 take them all), 130 test images: three batches of the CPU's 64, as
# the 1000 were eight
FIRST = 13


@pytest.mark.slow
def test_make_verify_published_small_on_stand_in_files(hub, trained, cifar_jpeg, tmp_path,
                                                        monkeypatch):
    """Every published name served from the stand-in Hub: the trained resnet20 as each model, but the SSD model for
    cat with 100 known weights halved. The report's numbers must be those of our evaluation, done here directly."""
    state = torch.load(trained[0], weights_only=True)
    dampened = {k: v.clone() for k, v in state.items()}
    dampened["conv1.weight"].view(-1)[:100] *= 0.5
    for name in [published.published_name("full")] + [published.published_name(role, k) for role in
                                                   ("retrain", "ssd", "advneggrad") for k in (3, 5)]:
        repo, file = name[len("hf://"):].rsplit("/", 1)
        publish(hub, repo, file, dampened if file == "cifar10_resnet18_SSD_3.pth" else state)
    out = tmp_path / "verify"
    dataset = write_first(cifar_jpeg, tmp_path / "cifar10-first", FIRST)
    args = ["verify-published-small", f"DATASET={dataset}", f"DATA_DIR={tmp_path / 'cache'}",
            "DEVICE=cpu", f"VERIFY_DIR={out}", "EXTRA=--classes cat dog"]
    r = make(*args, threads=1)  # $HF_ENDPOINT, $TORCH_HOME (the fixture's): by the environment
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    result = out.parent / "verify-small"  # the Makefile's $(VERIFY_DIR)-small
    text = (result / "report.md").read_text()

    card_data = dataclasses.replace(cifar_jpeg, mean=STATS["cifar10"][0], std=STATS["cifar10"][1])  # card's Normalize
    split = make_split(card_data, test_subset=FIRST)  # the folder's test images, from the archive
    logits, labels = predict(trained[1], Loader(card_data, split.test, train_set=False, batch_size=500))
    top1 = 100 * (logits.argmax(1) == labels).double().mean().item()
    cat = (labels == 3).numpy()
    loss = torch.nn.functional.cross_entropy(logits, labels, reduction="none").double().numpy()
    correct = (logits.argmax(1) == labels).double().numpy()
    assert f"| full | {top1:.2f} | - | 95.4 | {top1 - 95.4:+.2f} |" in text
    assert (f"| `cifar10_resnet18_AdvNegGrad_3.pth` | cat | {100 * correct[cat].mean():.2f} ({loss[cat].mean():.3f}) | "
            f"0.00 (26.171) |") in text
    assert f"| no_dog | {top1:.2f} | {100 * correct[labels.numpy() != 5].mean():.2f} | 96.6 |" in text
    assert text.count("Not comparable") == 4  # every table says a subset is no check of the cards

    comparison = json.loads((result / "ssd_comparison_retain+forget.json").read_text())
    n = sum(v.numel() for v in state.values() if v.is_floating_point())
    source = hashlib.sha256(open(fetch(published.published_name("full")), "rb").read()).hexdigest()[:16]
    ours = torch.load(result / "ssd" / "retain+forget" / source / "cifar10_resnet18_SSD_3.pth", weights_only=True)
    changed_ours = sum(int((ours[k] != state[k]).sum()) for k in state if state[k].is_floating_point())
    assert comparison["cat"]["changed_theirs"] == 100 / n and comparison["cat"]["changed_ours"] == changed_ours / n
    assert comparison["dog"]["changed_theirs"] == 0.0
    steps = [*(result / "evals").iterdir(), *(result / "ssd" / "retain+forget" / source).iterdir()]
    stamps = {p: os.stat(p).st_mtime_ns for p in steps}
    command, = make_commands(*args)  # the reruns: make's command, in this process
    assert command[0] == "studies/verify_published.py", command
    assert call(*command).returncode == 0
    assert stamps == {p: os.stat(p).st_mtime_ns for p in stamps}  # a rerun reuses every step

    # Another endpoint serves other weights under the same names: nothing of the first is reused for them
    other = tmp_path / "other-hub"
    shutil.copytree(hub, other)
    torch.manual_seed(1)
    publish(other, "jaeunglee/resnet18-cifar10-unlearning", "resnet18_cifar10_full.pth",
            build_model("resnet20", 10).state_dict())
    monkeypatch.setenv("HF_ENDPOINT", other.as_uri())
    r = call(*command)
    assert r.returncode == 0, r.stderr[-3000:]
    full = json.loads((result / "evals" / "resnet18_cifar10_full.pth.json").read_text())
    assert full["sha256"] == hashlib.sha256(open(fetch(published.published_name("full")), "rb").read()).hexdigest()
    assert full["sha256"][:16] != source and (result / "ssd" / "retain+forget" / full["sha256"][:16]).is_dir()
    top1 = 100 * sum(full["correct"]) / sum(full["n"])
    assert f"| full | {top1:.2f} | - | 95.4 |" in (result / "report.md").read_text()
