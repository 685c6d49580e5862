"""The methods added after the first nine, each against its reference code written out step by step (CT, MSG:
xcadet/deepunlearn; Bad Teacher: vikram2000b/bad-teaching-unlearning and the SSD repository's copy; UNSIR, amnesiac,
LFSSD: the SSD repository; l1-sparse: OPTML-Group/Unlearn-Sparse; Boundary Shrink / Expand: OPTML-Group/Unlearn-
Saliency). The same model and batches go in, the weights come out equal. Where the reference draws from Python's
`random` or a DataLoader's own sampler, ours draws from torch's global generator (said in docs/METHODS.md): the
references below draw as ours do, and are the official code in every other step."""
import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import methods
import unlearn
from data import make_split
from models import build_model
from methods import (AmnesiacConfig, BadTeacherConfig, BoundaryExpandConfig, BoundaryShrinkConfig, CTConfig,
                     L1SparseConfig, LFSSDConfig, MSGConfig, UNSIRConfig)
from test_fidelity import (FORGET_CLASS, Batches, assert_same_weights, images, interleaved, loaders,  # noqa: F401
                           model64, sets)

CPU = torch.device("cpu")


class Untouchable:
    """A loader the method must never read."""

    def __iter__(self):
        raise AssertionError("this loader must not be read")


def test_ct_equals_kgltop5(model64, sets):
    """kgltop5.py KGLTop5.unlearn: for every nn.Conv2d, module.weight = nn.Parameter(module.weight.swapaxes(2, 3));
    SGD(lr, momentum 0.9, weight_decay 5e-4), CosineAnnealingLR(T_max=epochs) stepped per epoch; net.train(); a step
    per retain batch. lr 0.05 here (1e-3 published), so that the steps move the weights."""
    cfg = CTConfig(lr=0.05, epochs=2, batch_size=8)
    ours = methods.unlearn_ct(copy.deepcopy(model64), loaders(sets)[0], Untouchable(), cfg, CPU)
    net = copy.deepcopy(model64)
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            module.weight = nn.Parameter(module.weight.swapaxes(2, 3))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=2)
    net.train()
    retain_loader, _ = loaders(sets)
    for _ in range(2):
        for x, y in retain_loader:
            optimizer.zero_grad()
            F.cross_entropy(net(x), y).backward()
            optimizer.step()
        scheduler.step()
    assert_same_weights(ours, net)


class Masker(torch.autograd.Function):
    """kgltop2.py's Masker: the identity forward; backward, the gradient times the mask."""

    @staticmethod
    def forward(ctx, x, mask):
        ctx.save_for_backward(mask)
        return x

    @staticmethod
    def backward(ctx, grad):
        mask, = ctx.saved_tensors
        return grad * mask, None


class MaskConv2d(nn.Conv2d):
    def __init__(self, mask, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.mask = mask

    def forward(self, x):
        return self._conv_forward(x, Masker.apply(self.weight, self.mask), self.bias)


def linear_annealing(optimizer, epochs):
    """LinearAnnealingLR(num_annealing_steps=(E + 1) // 2, num_total_steps=E + 1), per epoch, from step 1."""
    a, t = (epochs + 1) // 2, epochs + 1
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: (e + 1) / a if e + 1 <= a else (t - e - 1) / (t - a))


def test_msg_equals_kgltop2(model64, sets):
    """kgltop2.py KGLTop2.unlearn, the model in train mode as the pipeline hands it over: get_grads_for_snip
    (zero_grad once; CE on each batch of a retain sample as large as the forget set, then -CE on each forget batch;
    backward each); re_init_model_snip_ver2_little_grad (per Conv2d in module order: k = round(0.3 n), the k
    smallest |grad| -> mask; a MaskConv2d built (its default init drawn), kaiming_normal_(fan_out, relu), the other
    weights copied; gradient mask 1 there, 0.1 elsewhere); SGD(lr, 0.9, 5e-4), LinearAnnealingLR per epoch, a step per
    retain batch. The retain sample: the first 12 images of a pass over the retain loader (ours, for randperm)."""
    cfg = MSGConfig(lr=0.05, epochs=3, batch_size=8)
    torch.manual_seed(11)
    ours = methods.unlearn_msg(copy.deepcopy(model64), *loaders(sets), cfg, CPU)
    net = copy.deepcopy(model64).train()
    retain_loader, forget_loader = loaders(sets)
    sample, left = [], 12
    for x, y in retain_loader:  # the retain loader's first pass: the sample
        if left > 0:
            sample.append((x[:left], y[:left]))
            left -= len(y)
    net.zero_grad()
    for x, y in sample:
        F.cross_entropy(net(x), y).backward()
    for x, y in forget_loader:
        (-F.cross_entropy(net(x), y)).backward()
    torch.manual_seed(11)
    with torch.no_grad():
        for name, m in list(net.named_modules()):
            if isinstance(m, nn.Conv2d):
                k = round(0.3 * m.weight.numel())
                mask = torch.zeros(m.weight.numel(), dtype=torch.bool)
                mask[torch.topk(-m.weight.grad.abs().view(-1), k).indices] = True
                mask = mask.view_as(m.weight)
                grad_mask = mask.clone().float()  # float32, whatever the model's dtype
                grad_mask[grad_mask == 0] += 0.1
                new = MaskConv2d(grad_mask, m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                                 bias=False, dtype=torch.float64)
                nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
                new.weight.data[~mask] = m.weight[~mask]
                parent, _, attr = name.rpartition(".")
                setattr(net.get_submodule(parent) if parent else net, attr, new)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    scheduler = linear_annealing(optimizer, 3)
    net.train()
    for _ in range(3):
        for x, y in retain_loader:
            optimizer.zero_grad()
            F.cross_entropy(net(x), y).backward()
            optimizer.step()
        scheduler.step()
    assert_same_weights(ours, net, atol=0)  # bitwise: the mask's 0.1 is float32's on both sides


def test_msgs_schedule_rises_and_falls_as_linear_annealing():
    assert [methods.linear_warmup_decay(e, 5) for e in range(5)] == pytest.approx([1 / 3, 2 / 3, 1, 2 / 3, 1 / 3])
    assert [methods.linear_warmup_decay(e, 4) for e in range(4)] == pytest.approx([0.5, 1, 2 / 3, 1 / 3])


def test_bad_teacher_equals_blindspot_unlearner(model64, sets, monkeypatch):
    """blindspot (the SSD repository) + blindspot_unlearner / unlearning_step / UnlearnerLoss: the student (the model,
    train mode), the full teacher (the original) and the incompetent teacher (untrained) in eval mode; the forget
    set (label 1) and 30% of the retain set (label 0), concatenated, shuffled, batch 256; KL(teacher || student),
    F.kl_div's default 'mean'; Adam. The incompetent teacher is given to both (its default init is tested apart).
    lr 0.01 here (1e-4 published)."""
    teacher = methods.fresh_copy(model64)
    monkeypatch.setattr(methods, "fresh_copy", lambda model: copy.deepcopy(teacher))
    cfg = BadTeacherConfig(lr=0.01, epochs=2, batch_size=8)
    torch.manual_seed(12)
    ours = methods.unlearn_bad_teacher(copy.deepcopy(model64), *loaders(sets), cfg, CPU)
    torch.manual_seed(12)
    student, full_teacher, unlearning_teacher = copy.deepcopy(model64), copy.deepcopy(model64), copy.deepcopy(teacher)
    retain_loader, forget_loader = loaders(sets)
    retain = [(x, y) for xs, ys in retain_loader for x, y in zip(xs, ys)]  # the loaders' first passes, in order
    forget = [(x, y) for xs, ys in forget_loader for x, y in zip(xs, ys)]
    subset = [retain[i] for i in torch.randperm(len(retain))[:int(0.3 * len(retain))]]  # ours, for random.sample
    data = [(x, 1) for x, _ in forget] + [(x, 0) for x, _ in subset]  # UnLearningData: forget first, then retain
    optimizer = torch.optim.Adam(student.parameters(), lr=0.01)
    student.train()  # the pipeline's net is never put in eval mode: the student is a copy in train mode
    unlearning_teacher.eval()
    full_teacher.eval()
    for _ in range(2):
        order = torch.randperm(len(data))  # ours, for the DataLoader's sampler
        for start in range(0, len(data), 8):
            x = torch.stack([data[i][0] for i in order[start:start + 8]])
            labels = torch.tensor([data[i][1] for i in order[start:start + 8]])
            with torch.no_grad():
                full_teacher_logits, unlearn_teacher_logits = full_teacher(x), unlearning_teacher(x)
            output = student(x)
            optimizer.zero_grad()
            labels = torch.unsqueeze(labels, dim=1)
            f_teacher_out = F.softmax(full_teacher_logits / 1, dim=1)
            u_teacher_out = F.softmax(unlearn_teacher_logits / 1, dim=1)
            overall_teacher_out = labels * u_teacher_out + (1 - labels) * f_teacher_out
            loss = F.kl_div(F.log_softmax(output / 1, dim=1), overall_teacher_out)
            loss.backward()
            optimizer.step()
    assert_same_weights(ours, student)


def test_the_incompetent_teacher_is_an_untrained_network_of_the_same_architecture(model64):
    teacher = methods.fresh_copy(model64)
    assert teacher.state_dict().keys() == model64.state_dict().keys()
    for m, t in zip(model64.modules(), teacher.modules()):
        if isinstance(t, nn.Conv2d):  # PyTorch's default: kaiming_uniform_(a=sqrt(5)), bound 1 / sqrt(fan_in)
            bound = 1 / math.sqrt(t.weight[0].numel())
            assert t.weight.abs().max() <= bound and t.weight.abs().max() > 0.9 * bound
            assert not torch.equal(t.weight, m.weight)
        if isinstance(t, nn.BatchNorm2d):
            assert (t.weight == 1).all() and (t.bias == 0).all() and (t.running_var == 1).all()


@pytest.mark.parametrize("noise_label", ["forget", "zero"])
def test_unsir_equals_the_ssd_repositorys_unsir(model64, sets, noise_label):
    """forget_full_class_strategies.py UNSIR + unlearn.py UNSIR_noise_train / UNSIR_create_noisy_loader /
    fit_one_unlearning_cycle: the first N per retained class of ConcatDataset(retain, forget); noise
    torch.randn(32, 3, 32, 32), Adam 0.1, the model in train mode: loss = -CE(model(noise), forget class) +
    0.1 mean(sum(noise^2)), the noise's zero_grad only; 80 copies of noise images 0-2 labelled the forget class,
    then the retain sample, shuffled, batch 32; impair: Adam 1e-4, train mode, backward, step, zero_grad (the
    noise steps' model gradients join the first step); repair: the sample, batch 128, a new Adam. Smaller numbers
    here (4 noise steps, 3 copies, N = 4), and lr 0.01 for the model (1e-4 published). noise_label "zero": the
    notebook's copies labelled class_num = 0 (cell 26), the noise still learnt against the forget class (cell 24)."""
    cfg = UNSIRConfig(noise_label=noise_label, noise_steps=4, noise_copies=3, retain_per_class=4, impair_lr=0.01, repair_lr=0.01,
                      impair_batch=8, repair_batch=16)
    torch.manual_seed(13)
    ours = methods.unlearn_unsir(copy.deepcopy(model64), *loaders(sets), cfg, CPU)
    torch.manual_seed(13)
    model = copy.deepcopy(model64)
    retain_loader, forget_loader = loaders(sets)
    everything = [(x, y) for loader in (retain_loader, forget_loader) for xs, ys in loader for x, y in zip(xs, ys)]
    classwise = {}
    for x, y in everything:
        classwise.setdefault(int(y), []).append((x, y))
    retain_samples = [s for c in sorted(classwise) if c != FORGET_CLASS for s in classwise[c][:4]]
    noise = nn.Parameter(torch.randn(32, 3, 32, 32, dtype=torch.float64), requires_grad=True)
    opt = torch.optim.Adam([noise], lr=0.1)
    model.train()
    for _ in range(4):
        inputs = noise
        labels = torch.zeros(32) + FORGET_CLASS
        loss = -F.cross_entropy(model(inputs), labels.long()) + 0.1 * torch.mean(torch.sum(inputs ** 2, [1, 2, 3]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    noisy = []
    for _ in range(3):
        batch = noise.detach()
        for i in range(batch[0].size(0)):  # range(3): the channels of image 0
            noisy.append((batch[i], torch.tensor(FORGET_CLASS if noise_label == "forget" else 0)))
    noisy += retain_samples

    def cycle(data, batch_size, lr):
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        model.train()
        order = torch.randperm(len(data))  # ours, for the DataLoader's sampler
        for start in range(0, len(data), batch_size):
            x = torch.stack([data[i][0] for i in order[start:start + batch_size]])
            y = torch.stack([torch.as_tensor(data[i][1]) for i in order[start:start + batch_size]])
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    cycle(noisy, 8, 0.01)
    cycle(retain_samples, 16, 0.01)
    assert_same_weights(ours, model, atol=1e-8)  # fused Adam's rounding: 2e-10 measured on a running_var of 17


def test_amnesiac_equals_the_ssd_repositorys_amnesiac(model64, sets):
    """forget_full_class_strategies.py amnesiac: each forget image relabelled once to a random other class, then
    every retain image, one DataLoader(128, shuffle=True); fit_one_unlearning_cycle(3, lr 1e-4): Adam, train mode.
    The draw: ours (torch.randint over the 9 others) for random.choice; lr 0.01 here (1e-4 published)."""
    cfg = AmnesiacConfig(lr=0.01, epochs=2, batch_size=8)
    torch.manual_seed(14)
    ours = methods.unlearn_amnesiac(copy.deepcopy(model64), *loaders(sets), cfg, CPU)
    torch.manual_seed(14)
    model = copy.deepcopy(model64)
    retain_loader, forget_loader = loaders(sets)
    retain = [(x, y) for xs, ys in retain_loader for x, y in zip(xs, ys)]
    forget = [(x, y) for xs, ys in forget_loader for x, y in zip(xs, ys)]
    draws = torch.randint(0, 9, (len(forget),))
    unlearning_labels = [c for c in range(10) if c != FORGET_CLASS]
    data = [(x, torch.tensor(unlearning_labels[int(d)])) for (x, _), d in zip(forget, draws)] + retain
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(2):
        model.train()
        order = torch.randperm(len(data))
        for start in range(0, len(data), 8):
            x = torch.stack([data[i][0] for i in order[start:start + 8]])
            y = torch.stack([data[i][1] for i in order[start:start + 8]])
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    assert_same_weights(ours, model)
    assert all(int(y) != FORGET_CLASS for _, y in data[:len(forget)])  # never the true class


def test_l1_sparse_equals_ft_l1(model64, sets):
    """Unlearn-Sparse unlearn/FT.py FT_l1 under impl.py iterative_unlearn: SGD(unlearn_lr, 0.9, 5e-4),
    MultiStepLR([91, 136]) per epoch; per epoch model.train(), current_alpha = alpha (1 - epoch / unlearn_epochs);
    loss = CE + current_alpha * linalg.norm(cat(every parameter), ord=1). alpha 0.01 here, so that it matters."""
    cfg = L1SparseConfig(alpha=0.01, epochs=2, batch_size=8, lr=0.05)
    ours = methods.unlearn_l1_sparse(copy.deepcopy(model64), loaders(sets)[0], Untouchable(), cfg, CPU)
    model = copy.deepcopy(model64)
    optimizer = torch.optim.SGD(model.parameters(), 0.05, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[91, 136], gamma=0.1)
    retain_loader, _ = loaders(sets)
    for epoch in range(2):
        model.train()
        current_alpha = 0.01 * (1 - epoch / 2)
        for image, target in retain_loader:
            loss = F.cross_entropy(model(image), target)
            loss += current_alpha * torch.linalg.norm(torch.cat([p.view(-1) for p in model.parameters()]), ord=1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
    assert_same_weights(ours, model)


def test_boundary_shrink_equals_boundary_sh(model64, sets, interleaved):
    """boundary_sh.py (SalUn): test_model = deepcopy(model); per epoch model.train(); per forget batch:
    test_model.eval(), FGSM_perturb (zero_grad; CE on the true labels; x + 0.1 sign(grad); clamp [0, 1]; round to
    1/255) on [0, 1] pixels (the model normalises inside), adv_label = argmax test_model(x_adv); CE(model(x),
    adv_label), a step. SGD(lr, 0.9, 5e-4). lr 0.05 here."""
    mean = torch.tensor(interleaved.mean, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(interleaved.std, dtype=torch.float64).view(1, 3, 1, 1)
    cfg = BoundaryShrinkConfig(lr=0.05, epochs=2, batch_size=8, mean=interleaved.mean,
                               std=interleaved.std)  # the images' normalisation, given
    ours = methods.unlearn_boundary_shrink(copy.deepcopy(model64), Untouchable(), loaders(sets)[1],
                                           cfg, CPU)
    model, normalized = copy.deepcopy(model64), lambda net: (lambda pixels: net((pixels - mean) / std))
    test_model = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), 0.05, momentum=0.9, weight_decay=5e-4)
    _, forget_loader = loaders(sets)
    for _ in range(2):
        model.train()
        for x, y in forget_loader:
            image = x * std + mean  # the [0, 1] pixels the official loader gives
            test_model.eval()
            test_model.zero_grad()
            x_adv = image.detach().clone().requires_grad_(True)
            F.cross_entropy(normalized(test_model)(x_adv), y).backward()
            x_adv = image + 0.1 * x_adv.grad.sign()
            x_adv = torch.round(torch.clamp(x_adv, 0, 1) * 255) / 255
            adv_label = normalized(test_model)(x_adv).argmax(dim=1)
            loss = F.cross_entropy(normalized(model)(image), adv_label)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    assert_same_weights(ours, model, atol=1e-8)


def test_fgsm_points_are_boundary_shs_pixel_for_pixel(interleaved):
    """FGSM_perturb on the [0, 1] pixels ToTensor gives (k / 255), where +-0.1 lands on ties between two 8-bit
    levels: ours, from the normalised images, gives the same adversarial pixels in fp32 (it rounds them back to the
    grid first; without, 7-9% of them fell one level apart in the one-off run against the official code)."""
    torch.manual_seed(0)
    model = build_model("resnet20", 10).eval()
    raw = torch.tensor(interleaved.train_x[:64]).permute(0, 3, 1, 2).float() / 255
    y = torch.tensor(interleaved.train_y[:64]).long()
    mean = torch.tensor(interleaved.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(interleaved.std, dtype=torch.float32).view(1, 3, 1, 1)
    ours = methods.fgsm(model, (raw - mean) / std, y, 0.1, mean, std)
    model.zero_grad()
    x_adv = raw.clone().requires_grad_(True)
    F.cross_entropy(model((x_adv - mean) / std), y).backward()
    theirs = torch.round(torch.clamp(raw + 0.1 * x_adv.grad.sign(), 0, 1) * 255) / 255
    assert torch.equal(torch.round((ours * std + mean) * 255), torch.round(theirs * 255))


def test_boundary_expand_equals_boundary_ex_then_the_shadow_unit_removed(model64, sets):
    """boundary_ex.py (SalUn) expand_model: the last nn.Linear replaced by nn.Linear(in, C + 1) (default init), rows
    0..C-1 copied from the old one; SGD over every parameter after it; per forget batch, CE against C (the shadow
    class), train mode. Then, as the original authors' code, a fresh nn.Linear(in, C) with rows 0..C-1 copied."""
    cfg = BoundaryExpandConfig(lr=0.05, epochs=2, batch_size=8)
    torch.manual_seed(15)
    ours = methods.unlearn_boundary_expand(copy.deepcopy(model64), Untouchable(), loaders(sets)[1], cfg, CPU)
    torch.manual_seed(15)
    model = copy.deepcopy(model64)
    old = model.fc
    widen = nn.Linear(old.in_features, 11, dtype=torch.float64)
    with torch.no_grad():
        widen.weight[:10] = old.weight
        widen.bias[:10] = old.bias
    model.fc = widen
    optimizer = torch.optim.SGD(model.parameters(), 0.05, momentum=0.9, weight_decay=5e-4)
    _, forget_loader = loaders(sets)
    for _ in range(2):
        model.train()
        for image, target in forget_loader:
            loss = F.cross_entropy(model(image), torch.full_like(target, 10))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    pruned = nn.Linear(old.in_features, 10, dtype=torch.float64)
    with torch.no_grad():
        pruned.weight.copy_(widen.weight[:10])
        pruned.bias.copy_(widen.bias[:10])
    model.fc = pruned
    assert ours.fc.out_features == 10
    assert_same_weights(ours, model)


def test_lfssd_equals_the_readmes_label_free_importance(model64, sets):
    """The SSD README's LFSSD diff in src/ssd.py calc_importance: loss = torch.norm(out, p="fro", dim=1).pow(2).mean(),
    imp += p.grad.abs(), / len(dataloader); eval mode; the forget set, then D = retain + forget at batch 64 (8 here,
    both unshuffled); modify_weight as SSD's: where I_f > alpha I_D, p *= min(lambda I_D / I_f, 1)."""
    retain = [(x, y) for x, y in Batches(*sets[0], 8, 1)]
    forget = [(x, y) for x, y in Batches(*sets[1], 8, 2)]
    cfg = LFSSDConfig(alpha=1.0, batch_size=8, forget_batch_size=8)
    ours = methods.unlearn_ssd(copy.deepcopy(model64), retain, forget, cfg, CPU)
    model = copy.deepcopy(model64).eval()

    def calc_importance(batches):
        importances = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
        for x, _ in batches:
            model.zero_grad()
            torch.norm(model(x), p="fro", dim=1).pow(2).mean().backward()
            for n, p in model.named_parameters():
                importances[n] += p.grad.data.clone().abs()
        return {n: imp / len(batches) for n, imp in importances.items()}
    sample_importances = calc_importance(forget)
    x, y = torch.cat([b[0] for b in retain + forget]), torch.cat([b[1] for b in retain + forget])
    original_importances = calc_importance([(x[s:s + 8], y[s:s + 8]) for s in range(0, len(y), 8)])
    changed = 0
    with torch.no_grad():
        for n, p in model.named_parameters():
            oimp, fimp = original_importances[n], sample_importances[n]
            locations = torch.where(fimp > oimp.mul(1.0))
            update = oimp.mul(1.0).div(fimp)[locations]
            update[update > 1] = 1
            p[locations] = p[locations].mul(update)
            changed += len(locations[0])
    assert changed > 0
    assert_same_weights(ours, model, atol=1e-12)


# method: (retain batch, forget batch, shuffled, augmented), read off the reference files named in the docs
REFERENCE_LOADERS = {
    "lfssd": (64, 64, False, False),  # SSD's full-class main, as SSD
    "ct": (64, 64, True, False),  # deepunlearn default_loaders(): state "test", shuffled, batch 64
    "msg": (64, 64, True, False),
    "l1-sparse": (256, 256, True, True),  # Unlearn-Sparse arg_parser --batch_size 256, RandomCrop + flip
    "boundary-shrink": (256, 256, True, True),  # Unlearn-Saliency, the same
    "boundary-expand": (256, 256, True, True),
    "bad-teacher": (256, 256, False, False),  # read once, in order; the method mixes and shuffles (b_s 256)
    "amnesiac": (128, 128, False, False),  # read once; DataLoader(128, shuffle=True) inside
    "unsir": (256, 256, False, False),  # read once, in dataset order (the first 500 of each class)
}


@pytest.mark.parametrize("method", list(REFERENCE_LOADERS))
def test_each_new_method_gets_the_loaders_of_its_reference(cifar_jpeg, method):
    split = make_split(cifar_jpeg, forget_class=FORGET_CLASS, subset=2)
    retain_loader, forget_loader = unlearn.make_loaders(cifar_jpeg, split, methods.METHODS[method][1](), CPU, 0)
    for loader, batch_size in zip((retain_loader, forget_loader), REFERENCE_LOADERS[method][:2]):
        assert (loader.batch_size, loader.shuffle, loader.augment is not None) == (batch_size,
                                                                                  *REFERENCE_LOADERS[method][2:])


# ------------------------------------------- layers our ResNets lack: a user's model (issue 32)

class Shuffling:
    """A loader of float32 batches, a new order each pass from its own seeded generator."""

    def __init__(self, x, y, batch_size, seed):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self):
        order = torch.randperm(len(self.y), generator=self.generator)
        for start in range(0, len(self.y), self.batch_size):
            batch = order[start:start + self.batch_size]
            yield self.x[batch], self.y[batch]


def biased_convnet():
    """Two convolutions with a bias (our ResNets have none), trained biases stood in by 0.5."""
    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                        nn.Conv2d(6, 6, 3, padding=1, groups=2), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 10))
    with torch.no_grad():
        net[0].bias.fill_(0.5)
        net[3].bias.fill_(0.5)
    x, y = torch.randn(36, 3, 8, 8), torch.arange(36) % 10
    forget = y == 3
    return net, (x[~forget], y[~forget]), (x[forget].repeat(3, 1, 1, 1), y[forget].repeat(3))


def test_msg_redraws_a_biased_convolutions_bias_as_kgltop2(monkeypatch):
    """kgltop2.py re_init_model_snip_ver2_little_grad on convolutions with a bias: MaskConv2d(...,
    m.bias != None, ...) is built (its default init: the weight's Kaiming uniform, then the bias's
    uniform draw), the weight drawn again (Kaiming normal), the kept weights copied back, the bias
    left as built; then the fine-tuning trains that fresh bias, unmasked. Float32, the reference's
    MaskConv2d dtype."""
    model, retain, forget = biased_convnet()
    cfg = MSGConfig(lr=0.05, epochs=2, batch_size=8)

    def loaders():
        return Shuffling(*retain, 8, 1), Shuffling(*forget, 4, 2)
    torch.manual_seed(11)
    ours = methods.unlearn_msg(copy.deepcopy(model), *loaders(), cfg, CPU)
    net = copy.deepcopy(model).train()
    retain_loader, forget_loader = loaders()
    sample, left = [], len(forget[1])
    for x, y in retain_loader:  # the retain loader's first pass: the sample
        if left > 0:
            sample.append((x[:left], y[:left]))
            left -= len(y)
    net.zero_grad()
    for x, y in sample:
        F.cross_entropy(net(x), y).backward()
    for x, y in forget_loader:
        (-F.cross_entropy(net(x), y)).backward()
    torch.manual_seed(11)
    with torch.no_grad():
        for name, m in list(net.named_modules()):
            if isinstance(m, nn.Conv2d):
                mask = torch.zeros_like(m.weight).bool()
                k = round(0.3 * mask.numel())
                mask.view(-1)[torch.topk(-m.weight.grad.abs().view(-1), k).indices] = True
                grad_mask = mask.clone().float()
                grad_mask[grad_mask == 0] += 0.1
                new = MaskConv2d(grad_mask, m.in_channels, m.out_channels, m.kernel_size, m.stride,
                                 m.padding, m.dilation, m.groups, m.bias is not None,
                                 m.padding_mode)
                nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
                new.weight.data[~mask] = m.weight[~mask]
                setattr(net, name, new)
    assert all(not torch.equal(net.get_submodule(i).bias, model[int(i)].bias) for i in ("0", "3"))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    scheduler = linear_annealing(optimizer, 2)
    net.train()
    for _ in range(2):
        for x, y in retain_loader:
            optimizer.zero_grad()
            F.cross_entropy(net(x), y).backward()
            optimizer.step()
        scheduler.step()
    assert_same_weights(ours, net, atol=0)


class BareParameters(nn.Module):
    """Layers with a reset (a biased conv, BatchNorm, attention, a classifier), then what has none:
    a position embedding and a learnt scale (bare parameters, drawn as ViTs draw their position
    embeddings) and a constant index buffer."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
        self.attention, self.fc = nn.MultiheadAttention(4, 2), nn.Linear(4, 10)
        self.position = nn.Parameter(torch.empty(1, 4, 1, 1).normal_(std=0.02))
        self.scale = nn.Parameter(torch.empty(1).normal_(std=0.02))
        self.register_buffer("index", torch.arange(4))


def test_the_incompetent_teacher_is_a_fresh_build_bare_parameters_included():
    """SSD's forget_full_class_main.py builds the unlearning teacher afresh (getattr(models,
    net)(...)): no trained value survives, and for a model whose constructor draws in module order,
    then its bare parameters, fresh_copy equals that build bitwise, and leaves torch's generator
    where it does."""
    torch.manual_seed(1)
    trained = BareParameters()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)  # stands in for training
        trained.bn.running_mean.fill_(0.3)
        trained.bn.num_batches_tracked.fill_(7)
    torch.manual_seed(5)
    teacher, after = methods.fresh_copy(trained), torch.rand(4)
    torch.manual_seed(5)
    built, after_built = BareParameters(), torch.rand(4)
    assert teacher.state_dict().keys() == built.state_dict().keys()
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, built.state_dict()[name]), name
    assert torch.equal(after, after_built)
    assert all(not torch.equal(p, q) for p, q in zip(teacher.parameters(), trained.parameters()))
