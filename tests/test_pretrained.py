"""--pretrained, offline: the ensemble report's starting weights (timm's Instagram-1B ResNet18) by
their hf:// name against a local stand-in for the Hub, any state_dict by path, .safetensors read
without the safetensors package; every pretrained layer is the file's, fc is new, the sidecar names
the file and its sha256, and a file that does not fit is one line naming it and the first key."""
import hashlib
import json
import struct

import numpy as np
import pytest
import torch
import torchvision

import published
from conftest import ARCHIVE, assert_clean_error, call
from models import build_model, cache_path, file_url, load_model, load_pretrained
from sisa import read_manifest, train_slice
from train import EnsembleConfig, TransferConfig, recipe_identity

ARCH = "resnet18-imagenet"
TIMM_REPO, TIMM_FILE = published.PUBLISHED_PRETRAINED["ensemble"]


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A folder laid out as the Hub serves files (OWNER/REPO/resolve/REV/FILE) as $HF_ENDPOINT, and
    an empty torch hub cache as $TORCH_HOME (as in test_published)."""
    monkeypatch.setenv("HF_ENDPOINT", (tmp_path / "hub").as_uri())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "hub"


def timm_state(classes=1000, seed=5):
    """A stand-in for timm's resnet18 pytorch_model.bin: timm's ResNet18 names its tensors as
    torchvision does (conv1, bn1, layer1-4 with downsample.0/.1, fc; timm/models/resnet.py), so a
    torchvision resnet18 with random weights and an ImageNet fc has the layout. Without BatchNorm's
    num_batches_tracked, which such files may leave out: the model keeps its own."""
    torch.manual_seed(seed)
    state = torchvision.models.resnet18(weights=None, num_classes=classes).state_dict()
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def publish(hub, state, repo=TIMM_REPO, file=TIMM_FILE):
    path = hub / repo / "resolve" / "main" / file
    path.parent.mkdir(parents=True, exist_ok=True)
    if file.endswith(".safetensors"):
        path.write_bytes(safetensors_bytes(state))
    else:
        torch.save(state, path)
    return path


def safetensors_bytes(state, header_extra=None):
    """The safetensors format written by hand: header size (8 bytes, little-endian), JSON header,
    the tensors' raw bytes back to back."""
    names = {torch.float32: "F32", torch.float16: "F16", torch.int64: "I64", torch.bfloat16: "BF16"}
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for key, value in state.items():
        blob = value.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        header[key] = {"dtype": names[value.dtype], "shape": list(value.shape),
                       "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    header.update(header_extra or {})
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def fresh(seed=0, classes=10):
    torch.manual_seed(seed)
    return build_model(ARCH, classes)


def test_the_reports_weights_load_by_hf_name_every_layer_the_files_and_fc_new(hub):
    assert published.pretrained_name() == (
        "hf://timm/resnet18.fb_swsl_ig1b_ft_in1k/pytorch_model.bin")
    assert EnsembleConfig().pretrained == published.pretrained_name()
    assert TransferConfig().pretrained == "torchvision"  # the transfer recipe as before
    state = timm_state()
    path = publish(hub, state)
    model, reference = fresh(), fresh()
    info = load_pretrained(model, ARCH, published.pretrained_name())
    ours = model.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in state.items() if not k.startswith("fc."))
    assert state.keys() <= ours.keys()
    assert ours.keys() - state.keys() == {k for k in ours if k.endswith("num_batches_tracked")}
    assert all(int(v) == 0 for k, v in ours.items() if k.endswith("num_batches_tracked"))
    assert torch.equal(model.fc.weight, reference.fc.weight) and model.fc.weight.shape == (10, 512)
    assert info == {"name": published.pretrained_name(), "file": TIMM_FILE,
                    "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    # a file whose fc has as many classes as ours: its fc is still not taken
    ten = timm_state(classes=10, seed=6)
    local = hub.parent / "ten.pth"
    torch.save(ten, local)
    model = fresh()
    load_pretrained(model, ARCH, str(local))
    assert torch.equal(model.fc.weight, reference.fc.weight)
    assert torch.equal(model.fc.bias, reference.fc.bias)
    assert not torch.equal(model.fc.weight, ten["fc.weight"])
    assert torch.equal(model.layer4[1].bn2.running_var, ten["layer4.1.bn2.running_var"])


@pytest.mark.slow  # 3 s
def test_a_one_epoch_ensemble_member_trains_from_them_and_its_sidecar_names_them(
        hub, cifar_jpeg, data_dir, tmp_path):
    path = publish(hub, timm_state())
    out = tmp_path / "member.pth"
    r = call("train.py", "--recipe", "ensemble", "--dataset", ARCHIVE, "--data-dir", data_dir,
             "--subset", 1, "--test-subset", 1, "--epochs", 1, "--batch-size", 8, "--device", "cpu",
             "--out", out)
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "member.pth.json").read_text())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert meta["pretrained"] == {"name": published.pretrained_name(), "file": TIMM_FILE,
                                  "sha256": digest}
    assert meta["config"]["pretrained"] == meta["identity"]["cfg"]["pretrained"] == (
        published.pretrained_name())
    assert len(open(tmp_path / "member.log.jsonl").readlines()) == 1
    trained = load_model(str(out), arch=ARCH, num_classes=10).state_dict()
    assert not torch.equal(trained["layer1.0.conv1.weight"], timm_state()["layer1.0.conv1.weight"])


def test_a_file_that_does_not_fit_is_one_line_naming_it_and_the_first_missing_key(
        hub, cifar_jpeg, data_dir, tmp_path):
    state = timm_state()
    del state["layer3.1.bn2.weight"], state["layer4.0.conv1.weight"]
    path = tmp_path / "cut.pth"
    torch.save(state, path)
    r = call("train.py", "--recipe", "transfer", "--pretrained", path, "--dataset", ARCHIVE,
             "--data-dir", data_dir, "--subset", 1, "--test-subset", 1, "--epochs", 1,
             "--device", "cpu", "--out", tmp_path / "t.pth")
    assert_clean_error(r, f"{path}: does not fit {ARCH}: it has no layer3.1.bn2.weight (the first")
    assert not (tmp_path / "t.pth").exists()
    # timm's deep-stem resnet18d names its stem conv1.0/1.3/1.6: the first missing key is conv1's
    deep = {("conv1.0.weight" if k == "conv1.weight" else k): v for k, v in timm_state().items()}
    with pytest.raises(ValueError, match=r"it has no conv1\.weight \(the first key missing\)"):
        load_pretrained(fresh(), ARCH, str(publish(hub, deep, "timm/resnet18d", "m.bin")))
    wrong = timm_state()
    wrong["layer2.0.downsample.0.weight"] = torch.zeros(128, 64, 3, 3)
    with pytest.raises(ValueError, match=r"layer2\.0\.downsample\.0\.weight is \(128, 64, 3, 3\)"):
        load_pretrained(fresh(), ARCH, str(publish(hub, wrong, "o/wrong", "m.bin")))
    extra = {**timm_state(), "layer1.0.se.fc1.weight": torch.zeros(4, 64, 1, 1)}
    with pytest.raises(ValueError, match=r"it holds layer1\.0\.se\.fc1\.weight, which"):
        load_pretrained(fresh(), ARCH, str(publish(hub, extra, "o/extra", "m.bin")))
    nan = timm_state()
    nan["bn1.weight"][0] = float("nan")
    with pytest.raises(ValueError, match="1 of .* tensors hold NaN or inf"):
        load_pretrained(fresh(), ARCH, str(publish(hub, nan, "o/nan", "m.bin")))
    torch.save(torch.nn.Linear(2, 2), publish(hub, {}, "o/r", "x.pth"))  # a pickled object
    with pytest.raises(ValueError, match=r"hf://o/r/x\.pth: holds a pickled object"):
        load_pretrained(fresh(), ARCH, "hf://o/r/x.pth")


def test_neither_downloadable_is_one_line_naming_the_file_and_where_to_put_it(
        hub, cifar_jpeg, data_dir, tmp_path):
    r = call("train.py", "--recipe", "ensemble", "--dataset", ARCHIVE, "--data-dir", data_dir,
             "--subset", 1, "--epochs", 1, "--device", "cpu", "--out", tmp_path / "m.pth")
    url = file_url(published.pretrained_name())
    assert_clean_error(r, f"--pretrained {published.pretrained_name()}: could not download {url}")
    last = r.stderr.strip().splitlines()[-1]
    assert f"place it at {cache_path(url)}" in last and "--pretrained torchvision" in last
    assert not (tmp_path / "m.pth").exists()


def test_safetensors_load_as_the_bin_does_and_bad_ones_are_one_line(hub):
    state = timm_state()
    half = {k: (v.half() if k.startswith("layer4.") and v.is_floating_point() else v)
            for k, v in state.items()}
    publish(hub, half, file="model.safetensors")
    model = fresh()
    name = f"hf://{TIMM_REPO}/model.safetensors"
    info = load_pretrained(model, ARCH, name)
    ours = model.state_dict()
    assert all(torch.equal(ours[k], v.float() if v.is_floating_point() else v)
               for k, v in half.items() if not k.startswith("fc."))
    assert info["file"] == "model.safetensors"

    small = {"conv1.weight": torch.randn(2, 3), "bn1.num_batches_tracked": torch.tensor(3)}
    good = safetensors_bytes(small)
    length = struct.unpack("<Q", good[:8])[0]
    header = json.loads(good[8:8 + length])
    cases = {
        "short": (b"\x01\x00", "header size does not fit"),
        "huge": (struct.pack("<Q", 1 << 40) + good[8:], "header size does not fit"),
        "json": (struct.pack("<Q", 4) + b"{no}" + good[8 + length:], "header is not JSON"),
        "dtype": (safetensors_bytes(small, {"conv1.weight": {**header["conv1.weight"],
                                                             "dtype": "I32"}}), "dtype 'I32'"),
        "shape": (safetensors_bytes(small, {"conv1.weight": {**header["conv1.weight"],
                                                             "shape": [2, 4]}}),
                  "are not a torch.float32 tensor of shape [2, 4]"),
        "offsets": (safetensors_bytes(small, {"conv1.weight": {**header["conv1.weight"],
                                                               "data_offsets": [0, "24"]}}),
                    "are not whole numbers"),
        "overlap": (safetensors_bytes(small, {"conv1.weight": {**header["conv1.weight"],
                                                               "data_offsets": [8, 32]}}),
                    "overlap or leave gaps"),
        "past": (good[:-1], "of 31 are not"),
    }
    for case, (data, message) in cases.items():
        path = hub.parent / f"{case}.safetensors"
        path.write_bytes(data)
        with pytest.raises(ValueError, match=f"{path}: not a valid .safetensors file") as e:
            load_model(str(path))
        assert message in str(e.value) and "pytorch_model.bin" in str(e.value), (case, e.value)
    path = hub.parent / "good.safetensors"
    path.write_bytes(good)
    with pytest.raises(ValueError, match="not a ResNet state_dict"):  # read, then judged as others
        load_model(str(path))


def test_sisas_transfer_slices_start_from_pretrained_and_old_identities_hold(tmp_path):
    state = timm_state(seed=7)
    torch.save(state, tmp_path / "start.pth")
    cfg = TransferConfig(pretrained=str(tmp_path / "start.pth"))
    train_slice(None, np.arange(3), cfg, 0, None, str(tmp_path / "s.pth"), torch.device("cpu"), 0,
                10)  # 0 epochs: no data read, the fresh model saved as it is
    saved = torch.load(tmp_path / "s.pth", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in state.items() if not k.startswith("fc."))
    meta = json.loads((tmp_path / "s.pth.json").read_text())
    assert meta["pretrained"]["sha256"] == hashlib.sha256(
        (tmp_path / "start.pth").read_bytes()).hexdigest()
    # torchvision, the only starting point before --pretrained, is left out of identities, so
    # that what was trained before keeps its identity (and SISA's slices their hashes)
    assert "pretrained" not in recipe_identity(TransferConfig())
    pinned = f"{tmp_path / 'start.pth'}#sha256={meta['pretrained']['sha256']}"
    assert recipe_identity(cfg)["pretrained"] == pinned  # a local file: by its content
    manifest = {"recipe": "transfer", "config": {k: v for k, v in json.loads(json.dumps(
        recipe_identity(TransferConfig()))).items()}, "sisa": {"shards": 1, "slices": 1,
        "slice_epochs": [1], "aggregate": "vote"}, "shards": [{"checkpoints": ["s.pth"],
        "seconds": [0.0]}], "split": {"n_train": 3}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert read_manifest(str(tmp_path / "manifest.json"))[1].pretrained == "torchvision"


def test_a_replaced_pretrained_file_is_other_settings_and_a_local_pin_is_checked(tmp_path):
    """PT16: --pretrained replaced by other weights under its path, then the same command: 'already
    trained with these settings; nothing to do'. PT13: a local path with the #sha256= pin that URLs
    take: 'no such file'."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in ("alpha", "beta"):
            (tmp_path / "toy" / split / name).mkdir(parents=True)
            image = Image.fromarray(rng.integers(0, 256, (8, 8, 3), np.uint8))
            image.save(tmp_path / "toy" / split / name / "0.png")
    start = tmp_path / "start.pth"
    torch.save(timm_state(seed=1), start)
    command = ["train.py", "--recipe", "transfer", "--arch", ARCH, "--pretrained", start,
               "--epochs", 1, "--dataset", tmp_path / "toy", "--data-dir", tmp_path / "cache",
               "--device", "cpu", "--out", tmp_path / "m.pth"]
    assert call(*command).returncode == 0
    torch.save(timm_state(seed=2), start)  # other weights under the same name
    assert_clean_error(call(*command), "holds a checkpoint made with other settings")
    digest = hashlib.sha256(start.read_bytes()).hexdigest()
    info = load_pretrained(build_model(ARCH, 2), ARCH, f"{start}#sha256={digest}")
    assert info["sha256"] == digest
    pinned = recipe_identity(TransferConfig(pretrained=f"{start}#sha256={digest}"))
    assert pinned == recipe_identity(TransferConfig(pretrained=str(start)))  # the same file
    with pytest.raises(ValueError, match=f"the sha256 of {start} is {digest}, not the one"):
        load_pretrained(build_model(ARCH, 2), ARCH, f"{start}#sha256={'0' * 64}")


# ----------------------------------------------------------------- hostile .safetensors (issue 32)

def write(path, header_text, tail=b""):
    """A .safetensors file byte by byte: its header size, the header as given, then `tail`."""
    path.write_bytes(struct.pack("<Q", len(header_text)) + header_text + tail)
    return path


@pytest.mark.parametrize("case", ["deep", "huge dimension"])
def test_a_hostile_header_is_one_line(tmp_path, case):
    """PT04: a header of arrays nested 200000 deep was a RecursionError; PT09: an empty tensor of
    shape [0, 2^63] passed the byte count (0 = 0) and overflowed in reshape."""
    if case == "deep":
        path = write(tmp_path / "deep.safetensors", b"[" * 200000 + b"]" * 200000)
        message = "nests"
    else:
        entry = {"dtype": "F32", "shape": [0, 2 ** 63], "data_offsets": [0, 0]}
        path = write(tmp_path / "shape.safetensors", json.dumps({"conv1.weight": entry}).encode())
        message = "a dimension at most"
    r = call("models.py", "--model", path)
    assert_clean_error(r, f"{path}: not a valid .safetensors file")
    assert message in r.stderr


def test_a_layout_that_does_not_fit_is_refused_before_the_data_is_read(tmp_path, monkeypatch):
    """PT10: the whole file was read (and copied) before its byte ranges were checked: a sparse
    file of gigabytes costs no disk and all of that memory. Here 64 MiB of zeros after a header
    that names 16 bytes: refused having read the header only."""
    import models
    entry = {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}
    path = write(tmp_path / "sparse.safetensors", json.dumps({"fc.bias": entry}).encode())
    with open(path, "ab") as f:
        f.truncate(path.stat().st_size + (64 << 20))  # a hole: no disk
    read = []

    class Counted:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def read(self, n=-1):
            data = self.f.read(n)
            read.append(len(data))
            return data

        def readinto(self, buffer):
            read.append(self.f.readinto(buffer))
            return read[-1]
    monkeypatch.setattr(models, "open", lambda *a, **k: Counted(open(*a, **k)), raising=False)
    with pytest.raises(ValueError, match="overlap or leave gaps"):
        load_model(str(path))
    assert sum(read) < 1 << 20, sum(read)


def test_a_safetensors_file_named_pth_loads_by_its_content(tmp_path):
    """CK02: it was "not a PyTorch checkpoint (UnpicklingError)"; its first bytes tell."""
    torch.manual_seed(0)
    state = build_model("resnet20", 10).state_dict()
    (tmp_path / "m.pth").write_bytes(safetensors_bytes(state))
    r = call("models.py", "--model", tmp_path / "m.pth")
    assert r.returncode == 0, r.stderr
    assert "resnet20, 10 classes" in r.stdout
    model = load_model(str(tmp_path / "m.pth"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_a_tensor_of_integers_is_called_what_it_is(tmp_path):
    """CK03: a uint8 fc.bias was called not "dense real" (it is both)."""
    state = build_model("resnet20", 10).state_dict()
    torch.save({**state, "fc.bias": state["fc.bias"].to(torch.uint8)}, tmp_path / "u8.pth")
    r = call("models.py", "--model", tmp_path / "u8.pth")
    assert_clean_error(r, "fc.bias is a torch.uint8 tensor")
    assert "floating-point" in r.stderr and "dense real" not in r.stderr
