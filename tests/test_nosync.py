"""No host sync in a hot loop, proved on a CPU: every training step, unlearning method, SSD importance pass, Loader
augmentation and prediction loop is run twice, over 2 and over 4 batches, while every read of a tensor's value to
the host is counted; a loop that reads once per step reads more the second time. On a GPU each such read (`.item()`,
`bool(tensor)`, `.tolist()`, `.cpu()`, a boolean-mask index, whose output size needs the values) stalls the device
until its queue drains."""
import dataclasses

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import methods
import unlearn
from data import AUGMENT, Dataset, Loader
from evaluate import predict
from models import build_model
from train import train_epoch

# ops whose result (or output shape) needs tensor values on the host: dispatched even for CPU tensors
SYNCING_OPS = ("aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.unique", "aten._unique")
MASK_INDEXING = ("aten.index", "aten.index_put", "aten.index_put_")  # x[mask], x[mask] = v: sizes from the mask


class HostReads(TorchDispatchMode):
    """Counts host reads inside the block: the syncing ops as they are dispatched, and Tensor.tolist / .cpu / .numpy,
    which on a CPU tensor dispatch nothing and are counted by wrapping them."""

    def __init__(self, monkeypatch):
        super().__init__()
        self.reads, self.monkeypatch = [], monkeypatch

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        masked = name in MASK_INDEXING and any(i is not None and i.dtype == torch.bool for i in args[1])
        if name in SYNCING_OPS or masked:
            self.reads.append(name)
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        for name in ("tolist", "cpu", "numpy"):
            original = getattr(torch.Tensor, name)
            def counted(tensor, *args, _original=original, _name=name, **kwargs):
                self.reads.append(f"Tensor.{_name}")
                return _original(tensor, *args, **kwargs)
            self.monkeypatch.setattr(torch.Tensor, name, counted)
        return super().__enter__()

    def __exit__(self, *exc):
        self.monkeypatch.undo()
        return super().__exit__(*exc)


def tiny_data(n=32, classes=4):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 16, 16, 3), generator=g, dtype=torch.uint8).numpy()
    y = (torch.arange(n) % classes).numpy()
    return Dataset("tiny", tuple(f"c{k}" for k in range(classes)), x, y, x, y, (0.5,) * 3, (0.25,) * 3)


def loader(data, batches, batch_size=4, augment=None, shuffle=True, size=None):
    return Loader(data, torch.arange(batches * batch_size).numpy(), train_set=True, batch_size=batch_size,
                  shuffle=shuffle, augment=augment, size=size)


def reads(monkeypatch, run):
    with HostReads(monkeypatch) as counter:
        run()
    return counter.reads


def assert_constant(monkeypatch, make_run):
    """The reads of make_run(2) and make_run(4) (2 and 4 batches) are the same: none per step."""
    few, many = reads(monkeypatch, make_run(2)), reads(monkeypatch, make_run(4))
    assert few == many, f"host reads grow with the number of steps: {len(few)} over 2 batches, {len(many)} over 4: {many}"
    return few


def test_the_counter_sees_every_kind_of_read(monkeypatch):
    x = torch.arange(4.0)
    for read in (lambda: x.sum().item(), lambda: bool(x.sum() > 0), lambda: x.tolist(), lambda: x.cpu(),
                 lambda: x.numpy(), lambda: x[x > 1], lambda: float(x.max())):
        assert len(reads(monkeypatch, read)) >= 1


def test_train_epoch_reads_once_at_the_end(monkeypatch):
    data = tiny_data()
    def make_run(batches):
        model = build_model("resnet20", 4)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        batches_loader = loader(data, batches, augment="crop-flip")
        return lambda: train_epoch(model, batches_loader, optimizer)
    assert len(assert_constant(monkeypatch, make_run)) <= 3  # the epoch's loss, accuracy and finiteness


@pytest.mark.parametrize("augment", [None, *AUGMENT])
def test_the_loader_reads_nothing(monkeypatch, augment):
    data = tiny_data()
    def make_run(batches):
        batches_loader = loader(data, batches, augment=augment, size=24 if augment == "rotate-jitter" else None)
        return lambda: list(batches_loader)
    assert assert_constant(monkeypatch, make_run) == []


def test_predict_reads_once_at_the_end(monkeypatch):
    data, model = tiny_data(), build_model("resnet20", 4)
    def make_run(batches):
        batches_loader = loader(data, batches, shuffle=False)
        return lambda: predict(model, batches_loader)
    assert len(assert_constant(monkeypatch, make_run)) <= 2  # the logits and labels, moved to the CPU once


@pytest.mark.parametrize("importance", ["batch", "per-sample"])
def test_ssd_importance_passes_read_nothing(monkeypatch, importance):
    data, model = tiny_data(), build_model("resnet20", 4).eval()  # as unlearn_ssd runs them
    def make_run(batches):
        batches_loader = loader(data, batches, shuffle=False)
        return lambda: methods.IMPORTANCE[importance](model, batches_loader)
    assert assert_constant(monkeypatch, make_run) == []


# the smallest settings that still run each method's loops: one epoch (SCRUB: one max-step epoch;
# UNSIR: 2 noise steps, 2 x 3 noise copies)
QUICK = {"epochs": 1, "max_epochs": 1, "batch_size": 4, "forget_batch_size": 4, "noise_steps": 2,
         "noise_copies": 2}


@pytest.mark.parametrize("method", unlearn.METHODS)
def test_every_unlearning_method_reads_nothing_per_step(monkeypatch, method):
    fn, config_class, _ = unlearn.METHODS[method]
    fields = {f.name for f in dataclasses.fields(config_class)}
    cfg = config_class(**{k: v for k, v in QUICK.items() if k in fields})
    data = tiny_data()
    def make_run(batches):
        model = build_model("resnet20", 4)
        retain, forget = loader(data, batches), loader(data, batches)
        return lambda: fn(model, retain, forget, cfg, torch.device("cpu"))
    assert len(assert_constant(monkeypatch, make_run)) <= 4  # once per epoch at most (finetune: train_epoch's reads)
