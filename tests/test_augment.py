"""The batched augmentation has torchvision's distribution and output, and the Loader's batches are seeded."""
import numpy as np
import torch
import torchvision.transforms.functional as TF

from data import Dataset, Loader, random_crop_flip
from models import build_model
from train import TrainConfig, train_epoch

N = 18000


def coordinate_image():
    """Channel 0 = row + 1, channel 1 = column + 1, channel 2 = 255: every pixel says where it came from; 0 = padding."""
    rows, cols = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    return torch.stack([rows + 1, cols + 1, torch.full_like(rows, 255)]).to(torch.uint8)


def recover(out):
    """(dy, dx, flip) of every augmented copy, read off its middle row and column (never padding)."""
    v_row = out[:, 0, 0, 16].long()  # source row of output row 0, + 1, or 0 when padding
    dy = torch.where(v_row > 0, v_row + 3, out[:, 0, 31, 16].long() - 28)
    flip = out[:, 1, 16, 17].long() < out[:, 1, 16, 16].long()  # columns count down in a flipped copy
    v_col = out[:, 1, 16, 16].long()
    dx = torch.where(flip, v_col - 12, v_col - 13)
    return dy, dx, flip


def chi_square(counts):
    expected = counts.sum() / len(counts)
    return float(((counts - expected) ** 2 / expected).sum())


def test_offsets_and_flips_have_torchvisions_distribution():
    g = torch.Generator().manual_seed(0)
    out = random_crop_flip(coordinate_image().expand(N, 3, 32, 32), g)
    dy, dx, flip = recover(out)
    # RandomCrop(32, padding=4): offsets uniform on 0..8; RandomHorizontalFlip: p = 0.5, independent of the crop.
    assert dy.min() == 0 and dy.max() == 8 and dx.min() == 0 and dx.max() == 8
    assert chi_square(torch.bincount(dy, minlength=9).double()) < 26.1  # 8 dof, p = 0.001
    assert chi_square(torch.bincount(dx, minlength=9).double()) < 26.1
    assert chi_square(torch.bincount(dy * 9 + dx, minlength=81).double()) < 124.8  # 80 dof: dy, dx independent
    assert abs(flip.double().mean().item() - 0.5) < 0.015
    assert abs(flip[dx < 4].double().mean().item() - flip[dx >= 4].double().mean().item()) < 0.03


def test_every_copy_equals_torchvisions_crop_and_flip_with_zero_padding():
    g = torch.Generator().manual_seed(1)
    image = coordinate_image()
    out = random_crop_flip(image.expand(500, 3, 32, 32), g)
    for o, y, x, f in zip(out, *recover(out)):
        expected = TF.crop(TF.pad(image, [4], fill=0), int(y), int(x), 32, 32)
        assert torch.equal(o, TF.hflip(expected) if f else expected)


def toy_dataset(n=10):
    images = np.full((n, 32, 32, 3), 255, np.uint8)
    return Dataset("toy", ("a", "b"), images, np.arange(n) % 2, images, np.arange(n) % 2, (0.5, 0.4, 0.3), (0.2, 0.2, 0.2))


def test_padding_is_zero_before_normalisation():
    d = toy_dataset(200)
    x, _ = next(iter(Loader(d, np.arange(200), train_set=True, batch_size=200, augment="crop-flip")))
    mean, std = torch.tensor(d.mean).view(3, 1), torch.tensor(d.std).view(3, 1)
    values = x.transpose(0, 1).reshape(3, -1)
    white, pad = (1 - mean) / std, (0 - mean) / std
    assert torch.all(torch.isclose(values, white, atol=1e-5) | torch.isclose(values, pad, atol=1e-5))
    assert torch.isclose(values, pad, atol=1e-5).any()


def test_loader_batches_are_seeded_complete_and_keep_the_last_partial_batch():
    d = toy_dataset(10)
    d = Dataset(d.name, d.classes, np.random.default_rng(0).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8),
                d.train_y, d.test_x, d.test_y, d.mean, d.std)

    def epoch(seed):
        loader = Loader(d, np.arange(10), train_set=True, batch_size=4, shuffle=True, augment="crop-flip", seed=seed)
        return [x for x, _ in loader], loader

    a, loader = epoch(0)
    assert [len(x) for x in a] == [4, 4, 2] and len(loader) == 3
    assert all(torch.equal(x, y) for x, y in zip(a, epoch(0)[0]))
    assert not all(torch.equal(x, y) for x, y in zip(a, epoch(1)[0]))
    plain = Loader(d, np.arange(10), train_set=True, batch_size=3, shuffle=True, seed=0)
    sums = sorted(float(x.sum()) for batch, _ in plain for x in batch)
    whole, _ = next(iter(Loader(d, np.arange(10), train_set=True, batch_size=10)))
    assert np.allclose(sums, sorted(float(x.sum()) for x in whole))  # every image exactly once per pass


def test_channels_last_batches_and_model_give_the_same_training_step():
    d = toy_dataset(16)
    d = Dataset(d.name, d.classes, np.random.default_rng(1).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8),
                d.train_y, d.test_x, d.test_y, d.mean, d.std)
    results = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        model = build_model("resnet20", 2)
        model = model.to(memory_format=torch.channels_last) if channels_last else model
        optimizer, _ = TrainConfig(lr=0.01).optimizer(model)
        loader = Loader(d, np.arange(16), train_set=True, batch_size=8, shuffle=True, augment="crop-flip",
                        channels_last=channels_last)
        batches = list(loader)
        assert all(x.is_contiguous(memory_format=torch.channels_last) == channels_last for x, _ in batches)
        train_epoch(model, batches, optimizer)
        results.append((batches, model.state_dict()))
    (a, wa), (b, wb) = results
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b))  # the same values, another memory order
    # Other summation orders in the convolutions; BatchNorm over 8 noise images amplifies them (measured: 6e-5).
    assert all(torch.allclose(wa[k].float(), wb[k].float(), atol=1e-3) for k in wa)


def test_rotate_jitter_is_torchvisions_per_image_ops_with_the_drawn_parameters():
    """The batched ensemble augmentation against torchvision's functional ops applied image by image with the very
    parameters it drew. Rotation: equal (the same grid and grid_sample). Jitter: within 2e-6, float rounding of our
    HSV formulas (fewer passes than torchvision's) and of the blends' 1 - f, computed in float32 here."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF
    from data import color_jitter, draw_rotate_jitter, rotate
    x = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    x[:, :, :4] = 0.5  # gray rows: no hue
    x[:, 1, 4:8] = x[:, 0, 4:8]  # ties between channels
    angles, order, factors = draw_rotate_jitter(64, torch.Generator().manual_seed(1), "cpu")
    rotated = rotate(x, angles)
    expected = torch.stack([TF.rotate(image, float(a), InterpolationMode.NEAREST, fill=0) for image, a in zip(x, angles)])
    assert torch.equal(rotated, expected)
    adjust = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    jittered = []
    for image, steps, f in zip(expected, order.tolist(), factors.tolist()):
        for k in steps:  # torchvision's ColorJitter: the four adjustments in the drawn order
            image = adjust[k](image, f[k])
        jittered.append(image)
    assert (color_jitter(rotated, order, factors) - torch.stack(jittered)).abs().max() < 2e-6


def test_rotate_jitter_parameters_have_torchvisions_distribution():
    from data import draw_rotate_jitter
    angles, order, factors = draw_rotate_jitter(24000, torch.Generator().manual_seed(0), "cpu")
    # RandomRotation(10): uniform on [-10, 10]; ColorJitter(0.2, 0.2, 0.2, 0.1): factors uniform on [0.8, 1.2],
    # hue on [-0.1, 0.1], the order a uniformly random permutation (torch.randperm(4))
    assert -10 <= angles.min() < -9.99 and 9.99 < angles.max() <= 10
    assert chi_square(torch.histc(angles, 20, -10, 10).double()) < 43.8  # 19 dof, p = 0.001
    for k, (low, high) in enumerate([(0.8, 1.2)] * 3 + [(-0.1, 0.1)]):
        assert low <= factors[:, k].min() < low + 1e-3 and high - 1e-3 < factors[:, k].max() <= high
        assert chi_square(torch.histc(factors[:, k], 20, low, high).double()) < 43.8
    codes = (order * torch.tensor([64, 16, 4, 1])).sum(1)
    assert sorted(order.sort(1).values.unique(dim=0).flatten().tolist()) == [0, 1, 2, 3]
    assert len(codes.unique()) == 24 and chi_square(torch.bincount(codes)[codes.unique()].double()) < 49.7  # 23 dof
