"""The CUDA paths, run on a CPU through their equivalents: the compiled step (a CPU backend), bf16 autocast reaching
every method's training steps, IEEE fp32 where fp32 is promised (the flags themselves), the weights' digest of a
distributed run on the weights' own device, and out of GPU memory naming what the published setting needs."""
import argparse
import copy
import dataclasses
import json
import types

import numpy as np
import pytest
import torch

import cli
import evaluate
import methods
import unlearn
from conftest import assert_clean_error, call, write_folder
from data import Dataset, Loader
from models import build_model, save_model
from train import Run, TrainConfig, fit, weights_digest

CPU = torch.device("cpu")


def tiny_data(n=70, classes=7, side=16):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, side, side, 3), generator=g, dtype=torch.uint8).numpy()
    y = (torch.arange(n) % classes).numpy()
    return Dataset("tiny", tuple(f"c{k}" for k in range(classes)), x, y, x, y, (0.5,) * 3, (0.25,) * 3)


def train_twice(step_model_of, epochs=2):
    """The recipe's fit on 70 images in batches of 32 (two full batches and a last one of 6), from one
    initialisation and one batch order: once eager, once through step_model_of(model). (logs, models)."""
    data = tiny_data()
    runs = []
    for make in (lambda m: None, step_model_of):
        torch.manual_seed(0)
        model = build_model("resnet20", 7)
        loader = Loader(data, np.arange(70), train_set=True, batch_size=32, shuffle=True, augment="crop-flip", seed=1)
        log, _ = fit(model, loader, None, TrainConfig(arch="resnet20", epochs=epochs, batch_size=32),
                     run=Run(step_model=make(model)))
        runs.append((log, model))
    return runs


@pytest.mark.slow  # torch.compile: 7 s
def test_fit_trains_through_a_compiled_model_as_the_eager_step_does():
    # aot_eager: the graph torch.compile captures (forward and backward through AOTAutograd), no code generation
    (eager_log, eager), (compiled_log, compiled) = train_twice(
        lambda m: torch.compile(m, backend="aot_eager", dynamic=False))
    assert [r["compile_seconds"] for r in eager_log] == [0.0, 0.0]
    assert compiled_log[0]["compile_seconds"] > 0 and compiled_log[1]["compile_seconds"] == 0  # 2 shapes, epoch 1
    for a, b in zip(eager_log, compiled_log):  # 6 steps, the last batch of each epoch 6 images
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["train_acc"] == b["train_acc"]
    for (name, a), b in zip(eager.state_dict().items(), compiled.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5), name  # measured: within 2e-6


@pytest.mark.slow  # torch.compile: 5 s
def test_train_cli_compiles_and_reports_compile_time_apart(tmp_path):
    write_folder(tmp_path / "toy", {"train": 6, "test": 2})
    out = tmp_path / "m.pth"
    r = call("train.py", "--dataset", tmp_path / "toy", "--data-dir", tmp_path / "cache", "--arch", "resnet20",
             "--epochs", "2", "--batch-size", "8", "--device", "cpu", "--compile", "aot_eager", "--save-every", "2",
             "--out", out)
    assert r.returncode == 0, r.stderr
    meta = json.load(open(tmp_path / "m.pth.json"))
    assert meta["compile"] == "aot_eager" and meta["compile_seconds"] > 0 and meta["precision"] == "fp32"
    assert meta["first_epoch_seconds"] > 0 and meta["median_epoch_seconds"] > 0
    assert "compiling" in r.stdout.splitlines()[0] + r.stdout  # printed beside the epoch, not inside its seconds


def test_the_resumable_state_is_written_every_k_epochs_and_at_stop_after(tmp_path, monkeypatch):
    import train
    writes, logs = [], []
    monkeypatch.setattr(train, "save_state", lambda path, *a: writes.append(len(a[4])))  # a[4]: the log so far
    write_log = train.write_log
    monkeypatch.setattr(train, "write_log",
                        lambda path, log: logs.append(len(log)) or write_log(path, log))
    data = tiny_data()
    for stop_after, expected, lines in ((None, [2, 4], [1, 2, 3, 4, 5]), (3, [2, 3], [1, 2, 3])):
        writes.clear(), logs.clear()
        model = build_model("resnet20", 7)
        loader = Loader(data, np.arange(70), train_set=True, batch_size=32, shuffle=True, seed=1)
        fit(model, loader, None, TrainConfig(arch="resnet20", epochs=5, batch_size=32),
            run=Run(prefix=str(tmp_path / "m"), stop_after=stop_after, save_every=2))
        assert writes == expected
        assert logs == lines  # every epoch: a run killed from outside leaves its epochs' lines
    assert len(open(tmp_path / "m.log.jsonl").readlines()) == 3  # every epoch run, also after the last state


def test_the_median_epoch_of_an_even_count_is_the_mean_of_the_middle_two():
    import train
    log = [{"seconds": s, "compile_seconds": 0.0} for s in (4.0, 1.0, 3.0, 9.0)]
    stats = train.runtime_stats(log, CPU)
    assert stats["median_epoch_seconds"] == 3.5 and stats["first_epoch_seconds"] == 4.0
    assert train.runtime_stats(log[:3], CPU)["median_epoch_seconds"] == 3.0


def test_ctrl_c_promises_the_resume_point_that_resume_uses(tmp_path, monkeypatch):
    # interrupted during epoch 4 with --save-every 2: --resume continues after epoch 2's state, the
    # last multiple of --save-every, not after epoch 3, the last finished; the message says so
    import train
    data = tiny_data()
    calls = []
    epoch = train.train_epoch

    def interrupted_in_epoch_4(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return epoch(*args, **kwargs)
    monkeypatch.setattr(train, "train_epoch", interrupted_in_epoch_4)
    cfg, prefix = TrainConfig(arch="resnet20", epochs=5, batch_size=32), str(tmp_path / "m")

    def run(resume):
        model = build_model("resnet20", 7)
        loader = Loader(data, np.arange(70), train_set=True, batch_size=32, shuffle=True, seed=1)
        return fit(model, loader, None, cfg, run=Run(prefix=prefix, resume=resume, identity={},
                                                     save_every=2))
    with pytest.raises(KeyboardInterrupt):
        run(resume=False)
    state = torch.load(prefix + ".state.pt", weights_only=True)
    assert [r["epoch"] for r in state["log"]] == [1, 2]
    assert len(open(prefix + ".log.jsonl").readlines()) == 3  # epoch 3 ran, its state unwritten
    log, done = run(resume=True)
    assert done and [r["epoch"] for r in log] == [1, 2, 3, 4, 5]
    assert len(calls) == 4 + 3  # epochs 3 to 5 run again
    assert "--save-every" in train.INTERRUPTED and "last finished epoch)" in train.INTERRUPTED
    assert "continue from the last finished epoch" not in train.INTERRUPTED


def failing_at(batch):
    """A torch.compile backend that runs the captured graph as it is, except that compiling a graph
    whose batch has `batch` images fails as a broken compiler would (batch=None: every graph)."""
    def backend(gm, example_inputs):
        images = [t for t in example_inputs if getattr(t, "ndim", 0) == 4]
        if batch is None or any(t.shape[0] == batch for t in images):
            raise RuntimeError("the stand-in compiler failed")
        return gm.forward
    return backend


@pytest.mark.slow  # torch.compile: 3 s
def test_a_compile_failure_midway_falls_back_to_eager_from_the_epochs_start(capsys):
    # the tail batch of 6 fails to compile after two compiled steps of epoch 1: the epoch runs
    # again from its start, eager, and the run ends bitwise where the eager one does; the
    # traceback is printed
    (eager_log, eager), (log, model) = train_twice(
        lambda m: torch.compile(m, backend=failing_at(6), dynamic=False))
    err = capsys.readouterr().err
    assert "Traceback" in err and "stand-in compiler failed" in err and "without compiling" in err
    assert "stand-in compiler failed" in log[0]["compile_failed"] and not log[1]["compile_failed"]
    assert log[0]["compile_seconds"] > 0  # the failed try: compiling, not the epoch's seconds
    assert [r["loss"] for r in log] == [r["loss"] for r in eager_log]
    for (name, a), b in zip(eager.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_compile_failure_after_a_resumed_state_falls_back_to_eager(tmp_path, capsys):
    # the cards' training writes its state every 10 epochs: a compile failure after resuming from
    # it (a new process compiles again) goes on eager from there, bitwise the eager run
    data = tiny_data()
    cfg, prefix = TrainConfig(arch="resnet20", epochs=3, batch_size=32), str(tmp_path / "m")

    def run(step_model_of, **kwargs):
        torch.manual_seed(0)
        model = build_model("resnet20", 7)
        loader = Loader(data, np.arange(70), train_set=True, batch_size=32, shuffle=True,
                        augment="crop-flip", seed=1)
        log, _ = fit(model, loader, None, cfg, run=Run(identity={}, step_model=step_model_of(model),
                                                       **kwargs))
        return log, model
    eager_log, eager = run(lambda m: None)
    run(lambda m: None, prefix=prefix, stop_after=2)
    log, model = run(lambda m: torch.compile(m, backend=failing_at(None), dynamic=False),
                     prefix=prefix, resume=True)
    assert "Traceback" in capsys.readouterr().err and log[2]["compile_failed"]
    pairs = zip(eager.state_dict().values(), model.state_dict().values())
    assert all(torch.equal(a, b) for a, b in pairs)
    assert log[2]["loss"] == eager_log[2]["loss"]


def test_the_weights_digest_stays_on_the_weights_device():
    # NCCL gathers CUDA tensors only: the digest must be made on the weights' device (meta stands in for cuda here;
    # a digest built through a Python float lands on the CPU, and fails on meta)
    model = build_model("resnet20", 10)
    digest = weights_digest(model)
    assert digest.device == CPU and digest.dtype == torch.float64 and digest.shape == (1,)
    assert digest.item() == pytest.approx(sum(v.double().sum().item() for v in model.state_dict().values()), rel=1e-12)
    assert weights_digest(model.to("meta")).device.type == "meta"


class StandInOnCuda:
    """A model whose parameters say whether they are on CUDA, for code that only asks (the
    optimizers' constructors are recorders in these tests, so nothing else is read)."""

    def __init__(self, cuda):
        self.parameter = types.SimpleNamespace(is_cuda=cuda)

    def parameters(self):
        return iter([self.parameter])

    def named_parameters(self):
        return iter([("conv1.weight", self.parameter), ("fc.weight", self.parameter)])


def record_optimizer(monkeypatch, name):
    """torch.optim.<name> replaced by a recorder of its keyword arguments, which returns the real
    optimizer over a stand-in CPU parameter (unfused), for the schedulers built on it."""
    seen, real = [], getattr(torch.optim, name)

    def record(params, **kwargs):
        seen.append(kwargs)
        plain = {k: v for k, v in kwargs.items() if k != "fused"}
        return real([torch.zeros(1, requires_grad=True)], **plain)
    monkeypatch.setattr(torch.optim, name, record)
    return seen


@pytest.mark.parametrize("cuda", [True, False], ids=["cuda", "cpu"])
def test_the_optimizers_are_fused_on_cuda_and_torchs_default_elsewhere(cuda, monkeypatch):
    # fused SGD / Adam: one kernel for every parameter's update on CUDA; on a CPU torch's default
    # (foreach), which keeps CPU runs bitwise as before; the methods' Adam is fused everywhere
    from train import TransferConfig
    sgd, adam = record_optimizer(monkeypatch, "SGD"), record_optimizer(monkeypatch, "Adam")
    model = StandInOnCuda(cuda)
    TrainConfig().optimizer(model)
    methods.sgd(model, methods.AdvNegGradConfig())
    TransferConfig().optimizer(model)
    methods.adam([torch.zeros(1, requires_grad=True)], 1e-4)
    expected = True if cuda else None
    assert [kw["fused"] for kw in sgd] == [expected, expected]
    assert [kw["fused"] for kw in adam] == [expected, True]
    assert sgd[0]["nesterov"] and sgd[0]["momentum"] == 0.9  # the recipe's, fused or not


def test_inductor_compiles_the_step_into_cuda_graphs_on_cuda_only(monkeypatch):
    # mode="reduce-overhead": each batch shape captured once as a CUDA graph and replayed;
    # dynamic=False keeps the full and the tail batch two static graphs
    import train
    seen = []
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: seen.append(kwargs) or model)
    model = build_model("resnet20", 7)
    cuda = torch.device("cuda")  # a device object only: nothing is moved or run on it
    for device, backend in ((cuda, "inductor"), (CPU, "inductor"), (cuda, "aot_eager")):
        assert train.compile_step(model, device, backend) is model
    assert seen == [{"backend": "inductor", "mode": "reduce-overhead", "dynamic": False},
                    {"backend": "inductor", "mode": None, "dynamic": False},
                    {"backend": "aot_eager", "mode": None, "dynamic": False}]


def test_the_cards_jobs_take_the_classes_in_turn_with_the_methods_interleaved(tmp_path):
    # class by class, each class's three runs together: AdvNegGrad's large runs (11 GB each in
    # bf16) are a third of any window of jobs running at once, never all of them
    from studies import reproduce_cards
    args = argparse.Namespace(dataset="cifar10", data_dir="data", device="cuda", precision="auto",
                              subset=None, test_subset=None)
    commands = reproduce_cards.unlearning_commands(args, str(tmp_path), "full.pth", [3, 5, 0])
    runs = [(c[c.index("--forget-class") + 1], c[c.index("--out") + 1]) for c in commands]
    folders = [folder for folder, _, _, _ in reproduce_cards.RUNS]
    assert runs == [(name, str(tmp_path / folder / f"{name}.pth"))
                    for name in ("cat", "dog", "airplane") for folder in folders]
    assert folders == ["ssd", "ssd-retain", "advneggrad"]


@pytest.fixture
def conv_dtypes():
    """The dtypes of every Conv2d output computed with gradients on (training forward passes), in any model."""
    seen = []

    def hook(module, args, output):
        if isinstance(module, torch.nn.Conv2d) and torch.is_grad_enabled():
            seen.append(output.dtype)
    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    yield seen
    handle.remove()


SMALL = {"advneggrad": dict(batch_size=16), "neggrad+": dict(epochs=1, batch_size=16, forget_batch_size=8),
         "finetune": dict(epochs=1, batch_size=16), "retrain": dict(epochs=1, batch_size=16),
         "ga": dict(epochs=1, batch_size=8), "rl": dict(epochs=1, batch_size=16),
         "salun": dict(epochs=1, batch_size=16), "scrub": dict(epochs=1, max_epochs=1, batch_size=16,
                                                               forget_batch_size=8),
         "ct": dict(epochs=1, batch_size=16), "msg": dict(epochs=1, batch_size=16),
         "bad-teacher": dict(batch_size=16), "amnesiac": dict(epochs=1, batch_size=16),
         "unsir": dict(noise_steps=1, noise_copies=2, retain_per_class=3, impair_batch=8, repair_batch=8),
         "l1-sparse": dict(epochs=1, batch_size=16), "boundary-shrink": dict(epochs=1, batch_size=8),
         "boundary-expand": dict(epochs=1, batch_size=8)}


@pytest.mark.parametrize("method", sorted(SMALL))
def test_bf16_reaches_every_training_step_of_every_method(method, monkeypatch):
    """Every training forward of the model returned runs in bf16; copies of it (teachers, boundary-shrink's frozen
    original, whose FGSM sign is computed in fp32 on purpose) are not what is trained."""
    from data import make_split
    data = tiny_data(n=42)
    split = make_split(data, forget_class=0)
    fn, config_class, _ = unlearn.METHODS[method]
    cfg = config_class(**SMALL[method])
    retain, forget = unlearn.make_loaders(data, split, cfg, CPU, 0)
    seen = []

    def hook(module, args, output):
        if isinstance(module, torch.nn.Conv2d) and torch.is_grad_enabled():
            seen.append((module, output.dtype))
    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        torch.manual_seed(0)
        model, _ = unlearn.run_method(fn, build_model("resnet20", 7), retain, forget, cfg, CPU, torch.bfloat16)
    finally:
        handle.remove()
    own = set(model.modules())
    assert {dtype for module, dtype in seen if module in own} == {torch.bfloat16}, method


def test_ssd_importances_are_ieee_fp32_under_bf16(conv_dtypes, monkeypatch):
    from data import make_split
    data = tiny_data(n=42)
    split = make_split(data, forget_class=0)
    cfg = methods.SSDConfig()
    retain, forget = unlearn.make_loaders(data, split, cfg, CPU, 0)
    flags = []
    original = methods.importance_batch

    def spy(model, loader):
        flags.append(tensor_float_32_allowed())
        return original(model, loader)
    monkeypatch.setitem(methods.IMPORTANCE, "batch", spy)
    before = tensor_float_32_allowed()
    unlearn.run_method(methods.unlearn_ssd, build_model("resnet20", 7), retain, forget, cfg, CPU, torch.bfloat16)
    assert set(conv_dtypes) == {torch.float32}
    assert flags == [False, False] and tensor_float_32_allowed() == before  # IEEE inside, restored after


def tensor_float_32_allowed():
    """Whether cuDNN convolutions or CUDA matmuls may use TF32, by whichever API this torch has."""
    if hasattr(torch.backends.cudnn, "conv") and hasattr(torch.backends.cudnn.conv, "fp32_precision"):
        return (torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision) != ("ieee",
                                                                                                          "ieee")
    return torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32


def test_fp32_on_cuda_means_ieee_and_bf16_keeps_tf32(fake_cuda):
    device, amp = cli.pick_device("cuda", "fp32")
    assert device.type == "cuda" and amp is None and not tensor_float_32_allowed() and torch.backends.cudnn.benchmark
    device, amp = cli.pick_device("cuda", "auto")
    assert amp == torch.bfloat16 and tensor_float_32_allowed()


def tf32_getters():
    """Every TF32 getter of both of PyTorch's APIs (the legacy ones raise on a mix of the two)."""
    b = torch.backends
    return {"cudnn.allow_tf32": b.cudnn.allow_tf32, "matmul.allow_tf32": b.cuda.matmul.allow_tf32,
            "matmul_precision": torch.get_float32_matmul_precision(),
            "conv": b.cudnn.conv.fp32_precision, "rnn": b.cudnn.rnn.fp32_precision,
            "matmul": b.cuda.matmul.fp32_precision}


NEW_API = pytest.mark.skipif(not methods.new_fp32_api(), reason="torch < 2.9: legacy flags only")


@NEW_API
@pytest.mark.parametrize("ieee", [True, False], ids=["fp32", "bf16"])
def test_the_legacy_tf32_getters_stay_readable_and_agree_after_set_ieee_fp32(ieee):
    # pick_device sets IEEE under fp32 and TF32 under bf16; the new API set alone made the legacy
    # getters raise (matmul.allow_tf32 and the matmul precision under bf16, cudnn's under fp32)
    before = tf32_getters()
    previous = methods.set_ieee_fp32(ieee)
    try:
        after = tf32_getters()
    finally:
        methods.restore_fp32(previous)
    mode = "ieee" if ieee else "tf32"
    assert after == {"cudnn.allow_tf32": not ieee, "matmul.allow_tf32": not ieee,
                     "matmul_precision": "highest" if ieee else "high",
                     "conv": mode, "rnn": mode, "matmul": mode}
    assert tf32_getters() == before  # restored as it was


@NEW_API
def test_ieee_fp32_holds_over_a_users_all_setting_and_restores_it():
    # a user's torch.backends.cudnn.fp32_precision = "tf32" ("all") must not make the IEEE
    # island's convolutions TF32, and is there again after
    b = torch.backends
    previous_all = b.cudnn.fp32_precision
    b.cudnn.fp32_precision = "tf32"
    try:
        with methods.ieee_fp32():
            inside = (b.cudnn.conv.fp32_precision, b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32)
        assert inside == ("ieee", False, False) and b.cudnn.fp32_precision == "tf32"
    finally:
        b.cudnn.fp32_precision = previous_all


def test_fp32_prediction_is_ieee_and_restores_the_flags(fake_cuda):
    seen = []
    model = build_model("resnet20", 7)
    model.conv1.register_forward_hook(lambda *a: seen.append(tensor_float_32_allowed()))
    evaluate.predict(model, Loader(tiny_data(), np.arange(8), train_set=True, batch_size=4))
    assert seen == [False, False] and tensor_float_32_allowed()  # IEEE inside; TF32 (set by the fixture) after


def test_unlearn_records_the_precision_that_ran(tmp_path, conv_dtypes):
    write_folder(tmp_path / "toy", {"train": 6, "test": 2})
    model = tmp_path / "m.pth"
    save_model(str(model), build_model("resnet20", 3), {"arch": "resnet20"})
    common = ["--dataset", tmp_path / "toy", "--data-dir", tmp_path / "cache", "--model", model,
              "--forget-class", "0", "--device", "cpu", "--no-eval"]
    r = call("unlearn.py", "--method", "finetune", "--epochs", "1", "--precision", "bf16", *common,
             "--out", tmp_path / "ft.pth")
    assert r.returncode == 0, r.stderr
    assert json.load(open(tmp_path / "ft.pth.json"))["precision"] == "bf16"
    assert set(conv_dtypes) == {torch.bfloat16}
    r = call("unlearn.py", "--method", "ssd", "--precision", "bf16", *common, "--out", tmp_path / "ssd.pth")
    assert r.returncode == 0, r.stderr
    meta = json.load(open(tmp_path / "ssd.pth.json"))
    assert meta["precision"] == "fp32" and meta["changed_weights"] >= 0 and "SSD dampened" in r.stdout
    conv_dtypes.clear()  # lfssd runs SSD's passes, IEEE fp32 under bf16 too: its label says so
    r = call("unlearn.py", "--method", "lfssd", "--precision", "bf16", *common,
             "--out", tmp_path / "lf.pth")
    assert r.returncode == 0, r.stderr
    assert json.load(open(tmp_path / "lf.pth.json"))["precision"] == "fp32"
    assert set(conv_dtypes) == {torch.float32}


def test_out_of_gpu_memory_names_the_need_and_jobs_never_the_batch(tmp_path, monkeypatch):
    write_folder(tmp_path / "toy", {"train": 6, "test": 2})
    model = tmp_path / "m.pth"
    save_model(str(model), build_model("resnet18", 3), {"arch": "resnet18"})

    def oom(*args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setitem(unlearn.METHODS, "advneggrad", (oom, methods.AdvNegGradConfig, "AdvNegGrad"))
    r = call("unlearn.py", "--method", "advneggrad", "--dataset", tmp_path / "toy", "--data-dir", tmp_path / "cache",
             "--model", model, "--forget-class", "0", "--device", "cpu", "--precision", "bf16", "--out",
             tmp_path / "u.pth")
    assert_clean_error(r, "needs about")
    line = r.stderr.strip().splitlines()[-1]
    assert "batch 2500" in line and "JOBS" in line and "would change the published method" in line
    assert not (tmp_path / "u.pth").exists()


def test_the_memory_need_of_advneggrad_is_what_was_measured_independently():
    # The GPU-readiness review measured, by hand on a CPU, 3.5 MB per image saved for backward under bf16 and
    # 4.7 MB in fp32 (ResNet18, 32x32): 17 and 24 GB for AdvNegGrad's 2 x 2500 images a step
    model = build_model("resnet18", 10)
    bf16 = unlearn.memory_need(model, methods.AdvNegGradConfig(), torch.bfloat16) / 2 ** 30
    fp32 = unlearn.memory_need(model, methods.AdvNegGradConfig(), None) / 2 ** 30
    assert 8 < bf16 < 20 and 18 < fp32 < 28 and bf16 < fp32
    small = unlearn.memory_need(model, methods.SSDConfig(), torch.bfloat16) / 2 ** 30
    assert small < 1  # batch 64, fp32
