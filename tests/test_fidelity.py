"""Every unlearning method against a computation written step by step the way its official code does it: its order
of passes, signs, optimizer, train/eval mode and batching, sharing none of our code. The same model and the same
batches go in; the weights come out equal. Each reference names the official file it follows; each test was seen to
fail with the deviation it guards against put back (see the README's method table)."""
import copy
import dataclasses
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import methods
import unlearn
from data import make_split
from methods import (GAConfig, NegGradPlusConfig, RLConfig, SalUnConfig, SCRUBConfig, SSDConfig, FinetuneConfig,
                     unlearn_finetune, unlearn_ga, unlearn_neggrad_plus, unlearn_rl, unlearn_salun, unlearn_scrub,
                     unlearn_ssd)
from unlearn import make_loaders

CPU = torch.device("cpu")
FORGET_CLASS = 3


@pytest.fixture(scope="module")
def interleaved(cifar_jpeg):
    """The train set with its classes interleaved, as in the real CIFAR files (the image folder is class-sorted, in
    which order an SSD pipeline that ignored the official class grouping would still agree)."""
    perm = np.random.default_rng(0).permutation(len(cifar_jpeg.train_y))
    return dataclasses.replace(cifar_jpeg, train_x=cifar_jpeg.train_x[perm], train_y=cifar_jpeg.train_y[perm])


def images(data, indices):
    """ToTensor() + Normalize(mean, std) of the train images at `indices`, in that order, written out."""
    x = torch.tensor(data.train_x[np.asarray(indices)]).permute(0, 3, 1, 2).contiguous().float() / 255
    mean, std = torch.tensor(data.mean).view(1, 3, 1, 1), torch.tensor(data.std).view(1, 3, 1, 1)
    return (x - mean) / std, torch.tensor(data.train_y[np.asarray(indices)])


# ----------------------------------------------------------------------------- SSD (if-loops/selective-synaptic-dampening)

def official_ssd(model, retain, forget, forget_batch, lam, alpha, full_set, full_batch=64):
    """src/ssd.py ParameterPerturber: calc_importance (eval mode; per unshuffled batch of the DataLoader,
    .grad ** 2 of the batch-mean CE; / number of batches) on the forget set, then on
    ConcatDataset((retain, forget)) at the script's -b (full_batch); modify_weight."""
    model = copy.deepcopy(model).eval()

    def calc_importance(x, y, batch_size):
        importances = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
        starts = range(0, len(y), batch_size)
        for start in starts:
            model.zero_grad()
            F.cross_entropy(model(x[start:start + batch_size]), y[start:start + batch_size]).backward()
            for n, p in model.named_parameters():
                importances[n] += p.grad.clone().pow(2)
        return {n: imp / len(starts) for n, imp in importances.items()}
    sample_importances = calc_importance(*forget, forget_batch)
    full = [torch.cat(t) for t in zip(retain, forget)] if full_set == "retain+forget" else retain
    original_importances = calc_importance(*full, full_batch)
    dampened = {}
    with torch.no_grad():
        for n, p in model.named_parameters():
            oimp, fimp = original_importances[n], sample_importances[n]
            locations = torch.where(fimp > oimp.mul(alpha))
            update = oimp.mul(lam).div(fimp)[locations]
            update[update > 1] = 1
            p[locations] = p[locations].mul(update)
            dampened[n] = fimp > oimp.mul(alpha)
    return model, dampened


def check_ssd(ours, expected, dampened, before):
    assert sum(int(m.sum()) for m in dampened.values()) > 0  # the comparison is not about an untouched model
    after, want, start = ours.state_dict(), expected.state_dict(), before.state_dict()
    for name, m in dampened.items():
        assert torch.allclose(after[name], want[name], atol=1e-6, rtol=0), name
        assert torch.equal(after[name][~m], start[name][~m])  # untouched: bitwise
        assert (after[name].abs() <= start[name].abs()).all() and (after[name] * start[name] >= 0).all()
    assert all(torch.equal(after[k], start[k]) for k in start if k not in dampened)  # BN statistics untouched


@pytest.mark.parametrize("full_set, lam, alpha", [("retain+forget", 1.0, 10.0), ("retain", 1.0, 10.0),
                                                  ("retain+forget", 0.5, 2.0)])
def test_ssd_class_wise_equals_forget_full_class_main(interleaved, trained, full_set, lam, alpha):
    split = make_split(interleaved, forget_class=FORGET_CLASS, subset=40)
    # get_classwise_ds + build_retain_forget_sets: each class's images in dataset order; the retain set is every
    # other class, one class after another; the forget set the forgotten class
    by_class = {c: [i for i in split.train if interleaved.train_y[i] == c] for c in range(10)}
    retain = [i for c in range(10) if c != FORGET_CLASS for i in by_class[c]]
    expected, dampened = official_ssd(trained[1], images(interleaved, retain), images(interleaved, by_class[FORGET_CLASS]),
                                      64, lam, alpha, full_set)
    cfg = SSDConfig(lam=lam, alpha=alpha, full_set=full_set)
    ours = unlearn_ssd(copy.deepcopy(trained[1]), *make_loaders(interleaved, split, cfg, CPU, 0), cfg, CPU)
    check_ssd(ours, expected, dampened, trained[1])


def test_ssd_random_forgetting_equals_forget_random_main(interleaved, trained):
    split = make_split(interleaved, forget_fraction=0.2, forget_seed=1, subset=40)
    # random_split(trainset, [0.2, 0.8]): one permutation of the train set, the forget set its first part, both
    # sets in the permutation's order; the forget pass at batch 128, the full pass at -b, whose
    # default in forget_random_main.py is 128 (cifar10_random_exps.sh passes no -b)
    perm = np.random.default_rng(1).permutation(len(split.train))
    k = round(0.2 * len(split.train))
    forget, retain = split.train[perm[:k]], split.train[perm[k:]]
    assert np.array_equal(np.sort(forget), split.forget)
    expected, dampened = official_ssd(trained[1], images(interleaved, retain),
                                      images(interleaved, forget), 128, 1.0, 1.0, "retain+forget",
                                      full_batch=128)
    cfg = SSDConfig(alpha=1.0, **SSDConfig.scenario_defaults(False))  # as unlearn.py sets them
    ours = unlearn_ssd(copy.deepcopy(trained[1]), *make_loaders(interleaved, split, cfg, CPU, 0), cfg, CPU)
    check_ssd(ours, expected, dampened, trained[1])


def test_ssd_batches_follow_the_official_script_of_the_scenario():
    args = ["--method", "ssd", "--model", "m.pth"]
    for scenario, batch in [(["--forget-class", "cat"], 64), (["--forget-fraction", "0.1"], 128),
                            (["--forget-indices", "f.npy"], 128)]:
        parsed = unlearn.parse_args(args + scenario)
        assert (parsed.batch_size, parsed.forget_batch_size) == (batch, batch), scenario
    assert unlearn.parse_args(args + ["--forget-fraction", "0.1", "--forget-batch-size", "32"]).forget_batch_size == 32


def test_ssd_lambda_and_alpha_are_respected(interleaved, trained):
    split = make_split(interleaved, forget_class=FORGET_CLASS, subset=10)
    model = trained[1]
    cfg = SSDConfig(alpha=1e12)
    nothing = unlearn_ssd(copy.deepcopy(model), *make_loaders(interleaved, split, cfg, CPU, 0), cfg, CPU)
    assert all(torch.equal(a, b) for a, b in zip(nothing.parameters(), model.parameters()))
    cfg = SSDConfig(lam=0.0, alpha=1.0)
    zeroed = unlearn_ssd(copy.deepcopy(model), *make_loaders(interleaved, split, cfg, CPU, 0), cfg, CPU)
    changed = [(p != p0) for p, p0 in zip(zeroed.parameters(), model.parameters())]
    assert sum(int(c.sum()) for c in changed) > 0
    assert all((p[c] == 0).all() for p, c in zip(zeroed.parameters(), changed))  # lambda 0: selected weights -> 0


# ----------------------------------------------------------------------------- gradient methods

class Batches:
    """A loader stand-in holding float64 images: every pass a fresh shuffle from its own seeded generator, as a
    DataLoader with shuffle=True, and no augmentation. Two with the same seed give the same passes, so our run and
    the reference see the same batches if and only if they take the same passes in the same order."""

    def __init__(self, x, y, batch_size, seed):
        self.x, self.y, self.batch_size = x.double(), y, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self):
        order = torch.randperm(len(self.y), generator=self.generator)
        for start in range(0, len(self.y), self.batch_size):
            yield self.x[order[start:start + self.batch_size]], self.y[order[start:start + self.batch_size]]


@pytest.fixture(scope="module")
def sets(interleaved):
    """(retain, forget) images: 48 retain (6 batches of 8), 12 forget (batches of 8 and 4), forgetting class 3."""
    split = make_split(interleaved, forget_class=FORGET_CLASS, subset=12)
    return images(interleaved, split.retain[:48]), images(interleaved, split.forget)


def loaders(sets, retain_batch=8, forget_batch=8):
    return Batches(*sets[0], retain_batch, 1), Batches(*sets[1], forget_batch, 2)


@pytest.fixture(scope="module")
def model64(trained):
    return copy.deepcopy(trained[1]).double()


def assert_same_weights(ours, reference, atol=1e-10):
    for (name, a), b in zip(ours.state_dict().items(), reference.state_dict().values()):
        assert torch.allclose(a, b, atol=atol, rtol=0), (name, (a - b).abs().max())


def test_neggrad_plus_equals_the_notebooks_negative_grad(model64, sets):
    """small_scale_unlearning.ipynb: negative_grad builds SGD(lr, weight_decay=0) and model_init = the original;
    run_neggrad_epoch, every epoch: model.eval(); for batch_retain, batch_forget in zip(data_loader,
    cycle(forget_loader)): loss = alpha * (CE_r + l2_penalty(model, model_init, args.weight_decay))
    - (1 - alpha) * CE_f, l2_penalty = weight_decay / 2 * sum ||p - p_init||^2; zero_grad, backward, step."""
    cfg = NegGradPlusConfig(epochs=2, batch_size=8, forget_batch_size=8)
    ours = unlearn_neggrad_plus(copy.deepcopy(model64), *loaders(sets), cfg, CPU)
    model, model_init = copy.deepcopy(model64), copy.deepcopy(model64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, weight_decay=0.0)
    retain_loader, forget_loader = loaders(sets)
    for _ in range(2):
        model.eval()
        for (input_r, target_r), (input_f, target_f) in zip(retain_loader, itertools.cycle(forget_loader)):
            output_r, output_f = model(input_r), model(input_f)
            l2_loss = 0
            for p, p_init in zip(model.parameters(), model_init.parameters()):
                l2_loss += (p - p_init).pow(2).sum()
            l2_loss *= 0.1 / 2.
            loss = 0.95 * (F.cross_entropy(output_r, target_r) + l2_loss) - (1 - 0.95) * F.cross_entropy(output_f, target_f)
            model.zero_grad()
            loss.backward()
            optimizer.step()
    assert_same_weights(ours, model)


def test_scrub_equals_the_notebooks_run(model64, sets):
    """large_scale_unlearning.ipynb + thirdparty/repdistiller/helper/loops.py train_distill: one SGD(lr, momentum,
    weight_decay) for both phases; every epoch (1-based): if epoch <= msteps, a pass over the forget loader on
    loss = -DistillKL(T)(student, teacher) ("maximize"), then a pass over the retain loader on
    gamma * CE + alpha * DistillKL ("minimize"); student in train mode, teacher (the original) in eval mode.
    DistillKL = kl_div(log_softmax(s / T), softmax(t / T), sum) * T^2 / batch. lr 0.01 here (published 5e-4): the
    same steps, larger, so that the max phase moves the weights far beyond the tolerance."""
    cfg = SCRUBConfig(lr=0.01, epochs=2, max_epochs=1, batch_size=8, forget_batch_size=8)
    ours = unlearn_scrub(copy.deepcopy(model64), *loaders(sets), cfg, CPU)
    model_s, model_t = copy.deepcopy(model64), copy.deepcopy(model64)
    optimizer = torch.optim.SGD(model_s.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def distill_kl(y_s, y_t, T=4.0):
        return F.kl_div(F.log_softmax(y_s / T, dim=1), F.softmax(y_t / T, dim=1), reduction="sum") * T ** 2 / y_s.shape[0]

    def train_distill(loader, split):
        model_s.train()
        model_t.eval()
        for input, target in loader:
            logit_s = model_s(input)
            with torch.no_grad():
                logit_t = model_t(input)
            if split == "minimize":
                loss = 0.99 * F.cross_entropy(logit_s, target) + 0.001 * distill_kl(logit_s, logit_t)
            else:
                loss = -distill_kl(logit_s, logit_t)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    retain_loader, forget_loader = loaders(sets)
    for epoch in range(1, 3):
        if epoch <= 1:
            train_distill(forget_loader, "maximize")
        train_distill(retain_loader, "minimize")
    assert_same_weights(ours, model_s)
    without_max = unlearn_scrub(copy.deepcopy(model64), *loaders(sets), dataclasses.replace(cfg, max_epochs=0), CPU)
    assert max((a - b).abs().max() for a, b in zip(without_max.parameters(), model_s.parameters())) > 1e-4


def official_rl_epoch(model, optimizer, forget_loader, retain_loader, mask=None, theta0=None):
    """Classification/unlearn/RL.py, the cifar10 / svhn branch: model.train(); for the forget loader, target =
    torch.randint(0, num_classes, target.shape), a step; then for the retain loader, a step. With a mask (SalUn):
    grad *= mask before the step; after it, masked-out weights put back to theta0 and their momentum zeroed."""
    model.train()
    for loader, relabel in ((forget_loader, True), (retain_loader, False)):
        for image, target in loader:
            if relabel:
                target = torch.randint(0, 10, target.shape)
            loss = F.cross_entropy(model(image), target)
            optimizer.zero_grad()
            loss.backward()
            if mask:
                for name, param in model.named_parameters():
                    param.grad *= mask[name]
            optimizer.step()
            if mask:
                with torch.no_grad():
                    for name, param in model.named_parameters():
                        param.data.mul_(mask[name]).add_(theta0[name] * (1 - mask[name]))
                        optimizer.state[param]["momentum_buffer"].mul_(mask[name])


def test_rl_equals_rl_py_cifar10_branch(model64, sets):
    cfg = RLConfig(epochs=2, batch_size=8)
    torch.manual_seed(5)
    ours = unlearn_rl(copy.deepcopy(model64), *loaders(sets), cfg, CPU)
    model = copy.deepcopy(model64)
    optimizer = torch.optim.SGD(model.parameters(), 0.013, momentum=0.9, weight_decay=5e-4)
    retain_loader, forget_loader = loaders(sets)
    torch.manual_seed(5)
    for _ in range(2):
        official_rl_epoch(model, optimizer, forget_loader, retain_loader)
    assert_same_weights(ours, model)


def test_salun_equals_generate_mask_then_masked_rl(model64, sets):
    """generate_mask.py save_gradient_ratio: model.eval(); gradients summed over the forget loader's batches of
    loss = -CE; |.|; one ranking over all parameters; the top `ratio` of them get 1. Then RL.py with that mask.
    The mask uses the forget loader's first pass; the unlearning epochs take the passes after it."""
    cfg = SalUnConfig(epochs=2, batch_size=8, lr=0.05)
    torch.manual_seed(6)
    ours = unlearn_salun(copy.deepcopy(model64), *loaders(sets), cfg, CPU)
    model = copy.deepcopy(model64)
    retain_loader, forget_loader = loaders(sets)
    model.eval()
    gradients = {name: 0 for name, _ in model.named_parameters()}
    for image, target in forget_loader:
        loss = -F.cross_entropy(model(image), target)
        model.zero_grad()
        loss.backward()
        for name, param in model.named_parameters():
            gradients[name] += param.grad.data
    all_elements = -torch.cat([g.abs().flatten() for g in gradients.values()])
    ranks = torch.argsort(torch.argsort(all_elements))
    hard = (ranks < int(len(all_elements) * 0.5)).double()
    mask, start = {}, 0
    for name, g in gradients.items():
        mask[name], start = hard[start:start + g.numel()].view_as(g), start + g.numel()
    theta0 = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), 0.05, momentum=0.9, weight_decay=5e-4)
    torch.manual_seed(6)
    for _ in range(2):
        official_rl_epoch(model, optimizer, forget_loader, retain_loader, mask, theta0)
    assert_same_weights(ours, model)


def test_ga_equals_ga_py(model64, sets):
    """Classification/unlearn/GA.py: model.train(); for each forget batch, loss = -CE, zero_grad, backward, step;
    SGD(unlearn_lr, momentum 0.9, weight_decay 5e-4) built once (impl.py iterative_unlearn). lr 0.01 here."""
    cfg = GAConfig(lr=0.01, epochs=2, batch_size=8)
    ours = unlearn_ga(copy.deepcopy(model64), *loaders(sets), cfg, CPU)
    model = copy.deepcopy(model64)
    optimizer = torch.optim.SGD(model.parameters(), 0.01, momentum=0.9, weight_decay=5e-4)
    _, forget_loader = loaders(sets)
    for _ in range(2):
        model.train()
        for image, target in forget_loader:
            loss = -F.cross_entropy(model(image), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    assert_same_weights(ours, model)


def test_finetune_equals_the_kits_fine_tuning_loop(trained, sets):
    """The NeurIPS 2023 starting kit's unlearning() baseline: SGD(lr 0.1, momentum 0.9, weight_decay 5e-4),
    CosineAnnealingLR(T_max=epochs) stepped per epoch, train mode, a step per retain batch (float32: fit computes
    the loss in float32)."""
    cfg = FinetuneConfig(epochs=2, batch_size=8)
    retain = [(x.float(), y) for x, y in Batches(*sets[0], 8, 1)]  # one fixed pass, seen every epoch
    ours = unlearn_finetune(copy.deepcopy(trained[1]), retain, None, cfg, CPU)
    net = copy.deepcopy(trained[1])
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=2)
    net.train()
    for _ in range(2):
        for inputs, targets in retain:
            optimizer.zero_grad()
            loss = F.cross_entropy(net(inputs), targets)
            loss.backward()
            optimizer.step()
        scheduler.step()
    assert_same_weights(ours, net, atol=1e-5)


# ----------------------------------------------------------------------------- the loaders each official script builds

# method: (retain batch, forget batch, shuffled, augmented), read off the official files named in the README
OFFICIAL_LOADERS = {
    "ssd": (64, 64, False, False),  # forget_full_class_main.py: DataLoader(forget_train, 64); transform_unlearning
    "neggrad+": (128, 64, True, False),  # small_scale_unlearning.ipynb: batch_size 128 / forget_bs 64, augment=False
    "scrub": (256, 512, True, False),  # large_scale_unlearning.ipynb: retain 256, forget 512, augment=False
    "ga": (256, 256, True, True),  # Unlearn-Saliency arg_parser.py --batch_size 256; RandomCrop + flip
    "rl": (256, 256, True, True),
    "salun": (256, 256, True, True),
}


@pytest.mark.parametrize("method", list(OFFICIAL_LOADERS))
def test_each_method_gets_the_loaders_of_its_official_script(cifar_jpeg, method):
    split = make_split(cifar_jpeg, forget_class=FORGET_CLASS, subset=2)
    retain_loader, forget_loader = make_loaders(cifar_jpeg, split, methods.METHODS[method][1](), CPU, 0)
    for loader, batch_size in zip((retain_loader, forget_loader), OFFICIAL_LOADERS[method][:2]):
        assert (loader.batch_size, loader.shuffle, loader.augment is not None) == (batch_size, *OFFICIAL_LOADERS[method][2:])
