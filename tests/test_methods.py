"""methods.py is a file a user can copy alone: every method runs from a lone copy, on a torchvision ResNet18, with
plain DataLoaders on the CPU; report.py, which reads JSON, starts without torch."""
import os
import shutil
import subprocess
import sys
import textwrap

import report
import unlearn
from conftest import ROOT

LONE = textwrap.dedent("""
    import dataclasses, sys
    import torch, torchvision
    from torch.utils.data import DataLoader, TensorDataset
    import methods

    project = {"cli", "data", "models", "train", "unlearn", "evaluate", "report", "published", "privacy"}
    assert not project & set(sys.modules), project & set(sys.modules)
    torch.manual_seed(0)
    x, y = torch.randn(60, 3, 32, 32), torch.arange(60) % 10  # no last batch of one image (BatchNorm would refuse)
    forget = y == 3
    small = {"batch_size": 16, "epochs": 1, "noise_steps": 2, "noise_copies": 4}
    for name, (fn, config, _) in methods.METHODS.items():
        fields = {f.name for f in dataclasses.fields(config)}
        cfg = config(**{k: v for k, v in small.items() if k in fields}, **({"forget_batch_size": 8}
                     if "forget_batch_size" in fields else {}))
        spec = cfg.loaders()  # the loaders the official code builds, as the config declares them
        retain_loader = DataLoader(TensorDataset(x[~forget], y[~forget]), spec.retain_batch, shuffle=spec.shuffle)
        forget_loader = DataLoader(TensorDataset(x[forget], y[forget]), spec.forget_batch, shuffle=spec.shuffle)
        model = torchvision.models.resnet18(num_classes=10)
        before = [p.detach().clone() for p in model.parameters()]
        model = fn(model, retain_loader, forget_loader, cfg, torch.device("cpu"))
        changed = sum(int((p != b).sum()) for p, b in zip(model.parameters(), before))
        assert all(torch.isfinite(p).all() for p in model.parameters()), name
        print(name, changed)
""")


def test_every_method_runs_from_a_lone_copy_of_methods_py(tmp_path):
    shutil.copy(os.path.join(ROOT, "methods.py"), tmp_path)
    (tmp_path / "run.py").write_text(LONE)
    r = subprocess.run([sys.executable, "run.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "2"})
    assert r.returncode == 0, r.stderr[-3000:]
    changed = dict(line.split() for line in r.stdout.splitlines())
    assert set(changed) == set(unlearn.METHODS) - {"retrain"}  # retrain needs the training recipe: unlearn.py's
    assert all(int(n) > 0 for name, n in changed.items() if name != "ssd"), changed  # each method trained


def test_report_reads_json_without_torch_and_knows_every_method():
    r = subprocess.run([sys.executable, "-c", "import report, sys; print('torch' in sys.modules)"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "False", r.stderr
    assert list(report.METHOD_ORDER) == list(unlearn.METHODS)
