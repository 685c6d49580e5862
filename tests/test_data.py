"""Data: the real on-disk formats (torchvision's CIFAR pickles, image folders and their archives), the real
CIFAR-10 images, class names, splits and --subset."""
import errno
import os
import struct
import tarfile
import zlib

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

import data
from conftest import ARCHIVE, assert_clean_error, call, planes_to_rows, write_folder, write_pickle
from data import Dataset, load_dataset, make_split, resolve_class, subset_indices

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar(root, name, n=7):
    """A synthetic CIFAR-10 or CIFAR-100 in torchvision's extracted format; returns the images and labels written."""
    rng = np.random.default_rng(1)
    k = 10 if name == "cifar10" else 100
    if name == "cifar10":
        folder, files, label_key = root / "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], "labels"
    else:
        folder, files, label_key = root / "cifar-100-python", ["train", "test"], "fine_labels"
    folder.mkdir()
    written = {}
    for f in files:
        x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        y = rng.integers(0, k, n).tolist()
        write_pickle(folder / f, {"data": planes_to_rows(x), label_key: y, "coarse_labels": [0] * n,
                                  "filenames": [f"{i}.png" for i in range(n)]})
        written[f] = (x, np.array(y))
    if name == "cifar10":
        write_pickle(folder / "batches.meta", {"label_names": CIFAR10_NAMES, "num_vis": 3072})
    else:
        write_pickle(folder / "meta", {"fine_label_names": [f"c{i:02d}" for i in range(100)], "coarse_label_names": ["x"]})
    train = [written[f] for f in files[:-1]]
    return np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), *written[files[-1]]


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_pickles_load_with_the_right_pixel_layout(tmp_path, name):
    train_x, train_y, test_x, test_y = write_cifar(tmp_path, name)
    d = load_dataset(name, str(tmp_path))
    assert np.array_equal(d.train_x, train_x) and np.array_equal(d.train_y, train_y)
    assert np.array_equal(d.test_x, test_x) and np.array_equal(d.test_y, test_y)
    assert len(d.classes) == (10 if name == "cifar10" else 100)
    assert d.mean == data.STATS[name][0] and d.std == data.STATS[name][1]


def test_missing_cifar_offline_is_a_clear_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("no network")
    monkeypatch.setattr(data, "downloader", lambda name: offline)
    with pytest.raises(FileNotFoundError, match="could not be downloaded \\(no network\\)"):
        load_dataset("cifar10", str(tmp_path))


def test_image_folder_and_its_archive_decode_exactly_and_are_cached(tmp_path, monkeypatch):
    folder = tmp_path / "toy"
    expected = write_folder(folder, {"train": 4, "test": 2})
    d = load_dataset(str(folder), str(tmp_path / "cache"))
    assert d.classes == ("alpha", "beta", "gamma")
    assert np.array_equal(d.train_x, expected["train"][0]) and np.array_equal(d.train_y, expected["train"][1])
    assert np.array_equal(d.test_x, expected["test"][0]) and np.array_equal(d.test_y, expected["test"][1])
    pixels = expected["train"][0].reshape(-1, 3) / 255.0  # the statistics, the plain float way
    assert d.mean == tuple(pixels.mean(0).round(4)) and d.std == tuple(pixels.std(0).round(4))
    archive = tmp_path / "toy.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder / "train", "train")
        tar.add(folder / "test", "test")
    from_archive = load_dataset(str(archive), str(tmp_path / "cache"))
    assert np.array_equal(from_archive.train_x, d.train_x) and from_archive.classes == d.classes

    def no_decoding(path):
        raise AssertionError("decoded again although cached")
    monkeypatch.setattr(data, "decode_image_folder", no_decoding)
    assert np.array_equal(load_dataset(str(folder), str(tmp_path / "cache")).train_x, d.train_x)
    Image.fromarray(expected["train"][0][0]).save(folder / "train" / "alpha" / "new.png")
    with pytest.raises(AssertionError, match="decoded again"):  # a changed folder is not served from the stale cache
        load_dataset(str(folder), str(tmp_path / "cache"))


def test_missing_or_malformed_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_dataset(str(tmp_path / "nowhere"), str(tmp_path))
    (tmp_path / "flat").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(FileNotFoundError, match="expected train/<class>"):
        load_dataset(str(tmp_path / "flat"), str(tmp_path))


def test_linked_folders_and_files_are_followed_and_a_loop_or_a_dangling_link_refused(tmp_path):
    folder, elsewhere, cache = tmp_path / "toy", tmp_path / "elsewhere" / "betas", str(tmp_path / "cache")
    expected = write_folder(folder, {"train": 2, "test": 1})
    (folder / "test" / "alpha" / "000.png").unlink()  # a linked file: in a folder and in an archive
    (folder / "test" / "alpha" / "000.png").symlink_to("../../train/alpha/001.png")
    expected["test"][0][0] = expected["train"][0][1]
    elsewhere.parent.mkdir()
    (folder / "train" / "beta").rename(elsewhere)  # train/beta -> /elsewhere/betas: a class linked in
    (folder / "train" / "beta").symlink_to(elsewhere, target_is_directory=True)
    d = load_dataset(str(folder), cache)
    assert d.classes == ("alpha", "beta", "gamma") and np.array_equal(d.train_y, expected["train"][1])
    assert np.array_equal(d.train_x, expected["train"][0])  # beta's images are there, in their place
    assert np.array_equal(d.test_x, expected["test"][0])
    archive = tmp_path / "toy.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:  # tar stores the links, not beta's images
        tar.add(folder, "toy")
    with pytest.raises(ValueError, match="toy/train/beta is a symbolic link to .* make the archive with tar "
                                         r"--dereference \(-h\)"):
        load_dataset(str(archive), cache)
    (folder / "train" / "beta").unlink()
    elsewhere.rename(folder / "train" / "beta")
    with tarfile.open(archive, "w:gz") as tar:  # the linked file's member is read as the file it leads to
        tar.add(folder, "toy")
    assert np.array_equal(load_dataset(str(archive), cache).test_x, expected["test"][0])
    (folder / "train" / "beta" / "loop").symlink_to(folder / "train", target_is_directory=True)
    with pytest.raises(ValueError, match="toy: train/beta/loop is the folder train again .*link loop"):
        load_dataset(str(folder), cache)
    (folder / "train" / "beta" / "loop").unlink()
    (folder / "test" / "gamma").rename(tmp_path / "gone")
    (folder / "test" / "gamma").symlink_to(tmp_path / "gone", target_is_directory=True)
    (tmp_path / "gone").rename(tmp_path / "moved")  # test/gamma leads nowhere: the class would vanish
    with pytest.raises(FileNotFoundError, match="toy: test/gamma is a symbolic link to .*gone, which does"):
        load_dataset(str(folder), cache)


@pytest.mark.parametrize("packed", [False, True])
def test_only_image_files_are_read_and_none_over_the_byte_limit(tmp_path, monkeypatch, capsys, packed):
    folder = tmp_path / "toy"
    expected = write_folder(folder, {"train": 2, "test": 1})
    (folder / "dump.bin").write_bytes(bytes(1000))  # stands for a 1.5 GB file beside the images
    (folder / "train" / "alpha" / "notes.txt").write_text("not an image")
    text = PngInfo()
    text.add_text("comment", "x" * 20000)
    Image.fromarray(expected["train"][0][5]).save(folder / "train" / "gamma" / "001.png", pnginfo=text)
    dataset = folder
    if packed:
        dataset = tmp_path / "toy.tar.gz"
        with tarfile.open(dataset, "w:gz") as tar:
            tar.add(folder, "toy")
    read, extract = [], tarfile.TarFile.extractfile  # the files whose bytes are read

    def extractfile(tar, member):
        read.append(member.name)
        return extract(tar, member)
    if packed:
        monkeypatch.setattr(tarfile.TarFile, "extractfile", extractfile)
    else:
        monkeypatch.setattr(data, "open", lambda f, mode: read.append(f) or open(f, mode), raising=False)
    size = (folder / "train" / "gamma" / "001.png").stat().st_size  # the largest: 20 KB of text in it
    monkeypatch.setattr(data, "MAX_FILE_BYTES", size - 1)  # stands for 65 MiB
    name = f"{dataset.name}: {'toy/' if packed else ''}train/gamma/001.png"
    with pytest.raises(ValueError, match=f"{name} is over {size - 1} bytes"):
        load_dataset(str(dataset), str(tmp_path / "cache"))
    assert not any(name.endswith("train/gamma/001.png") for name in read)  # refused before it was read
    monkeypatch.setattr(data, "MAX_FILE_BYTES", size)
    read.clear()
    d = load_dataset(str(dataset), str(tmp_path / "cache"))
    assert np.array_equal(d.train_x, expected["train"][0]) and np.array_equal(d.test_x, expected["test"][0])
    assert len(read) == 9 and all(name.endswith(".png") for name in read), read  # no dump.bin, no notes.txt
    assert "skipped 1 file(s) in class folders that are not images by name" in capsys.readouterr().err


def png(width, height, depth, color_type, rows):
    """A PNG file's bytes, written by hand: PIL writes neither 16-bit RGB nor a small file of many pixels.
    rows: the image's rows, each with its filter byte."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def test_an_image_of_more_than_8_bits_a_sample_is_refused_not_clipped(tmp_path):
    folder = tmp_path / "toy"
    expected = write_folder(folder, {"train": 2, "test": 1})
    deep = np.random.default_rng(0).integers(0, 65536, (32, 32), dtype=np.uint16)
    Image.fromarray(deep).save(folder / "test" / "beta" / "000.png")  # 16-bit gray: clipped at 255 by PIL
    r = call("data.py", "--dataset", folder, "--data-dir", tmp_path / "cache")
    assert_clean_error(r, f"{folder}: test/beta/000.png has mode I")  # I;16 (I in older Pillows)
    assert "only 8-bit images (modes 1, L, P, RGB" in r.stderr and "convert it to 8-bit RGB" in r.stderr
    rgb48 = expected["test"][0][1].astype(">u2") * 257  # 16-bit RGB: PIL keeps each sample's high byte
    rows = b"".join(b"\0" + row.tobytes() for row in rgb48)  # each with filter byte 0
    (folder / "test" / "beta" / "000.png").write_bytes(png(32, 32, 16, 2, rows))
    assert np.array_equal(load_dataset(str(folder), str(tmp_path / "cache")).test_x, expected["test"][0])


def test_train_and_test_images_of_different_sizes_are_refused(tmp_path):
    folder = tmp_path / "toy"
    write_folder(folder, {"train": 2})
    write_folder(folder, {"test": 1}, shape=(24, 28))  # each split of one size, but not the other's
    with pytest.raises(ValueError, match=r"toy: test/alpha/000.png is 28x24, the first image 32x32 "
                                         r"\(train/alpha/000.png\); every image of both splits"):
        load_dataset(str(folder), str(tmp_path / "cache"))


def test_a_channel_without_variation_is_refused_when_loaded(tmp_path):
    folder = tmp_path / "toy"
    write_folder(folder, {"train": 2, "test": 1})
    for file in (folder / "train").glob("*/*.png"):
        x = np.array(Image.open(file))
        x[:, :, 2] = 7  # no blue: its std 0 divided by, training failed later asking for a lower --lr
        Image.fromarray(x).save(file)
    for _ in range(2):  # decoded, then from the cache
        assert_clean_error(call("data.py", "--dataset", folder, "--data-dir", tmp_path / "cache"),
                           f"{folder}: the train images have no variation in the blue channel (std 0)")


@pytest.mark.parametrize("side", [5000, 10000, 20000])  # past our limit, PIL's warning, PIL's error
def test_a_decompression_bomb_is_refused_before_it_is_decoded(tmp_path, side):
    folder = tmp_path / "toy"
    write_folder(folder, {"train": 2, "test": 1})
    bomb = png(side, side, 1, 0, bytes((side // 8 + 1) * side))  # black, 1 bit a pixel: a few KB
    (folder / "train" / "alpha" / "000.png").write_bytes(bomb)
    said = f"{side}x{side} pixels, over the" if side == 5000 else r"over the 4096x4096 pixels .*\(PIL:"
    with pytest.raises(ValueError, match=f"toy: train/alpha/000.png is {said}.*; shrink or remove it"):
        load_dataset(str(folder), str(tmp_path / "cache"))


def test_real_cifar10_images(cifar_jpeg):
    assert list(cifar_jpeg.classes) == CIFAR10_NAMES
    assert cifar_jpeg.train_x.shape == (50000, 32, 32, 3) and cifar_jpeg.test_x.shape == (10000, 32, 32, 3)
    assert np.array_equal(np.bincount(cifar_jpeg.train_y), [5000] * 10)
    assert np.array_equal(np.bincount(cifar_jpeg.test_y), [1000] * 10)
    assert np.allclose(cifar_jpeg.mean, data.STATS["cifar10"][0], atol=0.01)  # it is CIFAR-10, re-encoded


def toy(n_per_class=50, k=10, seed=0):
    labels = np.random.default_rng(seed).permutation(np.repeat(np.arange(k), n_per_class))
    images = np.zeros((len(labels), 32, 32, 3), np.uint8)
    return Dataset("toy", tuple(f"c{i}" for i in range(k)), images, labels, images[:k * 5], labels[:k * 5],
                   (0.5,) * 3, (0.25,) * 3)


def test_class_names_resolve_both_ways():
    assert resolve_class(tuple(CIFAR10_NAMES), "cat") == 3
    assert resolve_class(tuple(CIFAR10_NAMES), "3") == 3
    with pytest.raises(ValueError, match="unknown class 'kitten'; valid: airplane, automobile"):
        resolve_class(tuple(CIFAR10_NAMES), "kitten")
    with pytest.raises(ValueError):
        resolve_class(tuple(CIFAR10_NAMES), "10")


def test_classwise_split_is_disjoint_complete_and_removes_the_class():
    d = toy()
    s = make_split(d, forget_class=3)
    assert np.array_equal(np.sort(np.concatenate([s.forget, s.retain])), np.arange(500))
    assert set(d.train_y[s.forget]) == {3} and 3 not in set(d.train_y[s.retain]) and len(s.forget) == 50
    assert set(d.test_y[s.test_forget]) == {3} and 3 not in set(d.test_y[s.test_retain])
    assert len(s.test_forget) + len(s.test_retain) == len(d.test_y)


def test_random_split_is_seeded_and_of_the_asked_size():
    d = toy()
    a, b, c = (make_split(d, forget_fraction=0.2, forget_seed=s) for s in (0, 0, 1))
    assert len(a.forget) == 100 and np.array_equal(a.forget, b.forget) and not np.array_equal(a.forget, c.forget)
    assert len(np.intersect1d(a.forget, a.retain)) == 0 and len(a.forget) + len(a.retain) == 500
    assert len(a.test_forget) == 0 and len(a.test_retain) == len(d.test_y)
    with pytest.raises(ValueError):
        make_split(d, forget_fraction=1.5)
    with pytest.raises(ValueError):
        make_split(d, forget_class=1, forget_fraction=0.2)


def test_a_half_is_seeded_half_the_set_and_holds_the_forget_set():
    d = toy()
    a, b, c = (make_split(d, forget_fraction=0.2, forget_seed=0, subset=40, keep_half=k) for k in (0, 0, 1))
    every = subset_indices(d.train_y, 40)
    assert len(a.train) == 200 and np.isin(a.train, every).all() and np.array_equal(a.train, b.train)
    assert not np.array_equal(a.train, c.train)
    assert len(a.forget) == 40 and np.isin(a.forget, a.train).all() and np.array_equal(a.forget, b.forget)
    assert np.array_equal(np.sort(np.concatenate([a.forget, a.retain])), a.train)
    assert len(a.test) == len(d.test_y)  # the test set is not halved
    # one forget seed in two halves: unrelated draws (the same positions would share the examples both halves hold)
    both = np.intersect1d(a.train, c.train)
    positions = [np.flatnonzero(np.isin(s.train, s.forget)) for s in (a, c)]
    assert not np.array_equal(*positions)
    assert len(np.intersect1d(a.forget, c.forget)) < 0.2 * 0.2 * len(both) * 2
    # over 200 halves every example is in about half of them, spread as binomial draws would be (sd 0.5 / sqrt(200))
    seen = np.mean([np.isin(every, make_split(d, subset=40, keep_half=k).train) for k in range(200)], axis=0)
    sd = 0.5 / np.sqrt(200)
    assert abs(seen.std() - sd) < 0.2 * sd and np.all(np.abs(seen - 0.5) < 5 * sd)


def test_subset_takes_the_first_n_of_each_class_deterministically():
    d = toy()
    idx = subset_indices(d.train_y, 7)
    assert np.array_equal(np.bincount(d.train_y[idx]), [7] * 10)
    assert all(idx[d.train_y[idx] == c].max() < np.flatnonzero(d.train_y == c)[7] for c in range(10))
    s = make_split(d, forget_class=2, subset=7)
    assert len(s.forget) == 7 and len(s.retain) == 63 and np.isin(s.forget, idx).all()


def test_cli_lists_classes_and_split(cifar_jpeg, data_dir):
    r = call("data.py", "--dataset", ARCHIVE, "--data-dir", data_dir, "--forget-class", "cat")
    assert r.returncode == 0, r.stderr
    assert "classes: " + " ".join(CIFAR10_NAMES) in r.stdout and "5000 forget, 45000 retain" in r.stdout


# --------------------------------------------------------------- files a user hands us (issue 32)

def test_a_cache_holding_a_label_out_of_range_is_decoded_again(tmp_path):
    """TB09: a cache in --data-dir with a label 99 of 3 classes was served, then IndexError in the
    first training step; the docs say a damaged cache is decoded again."""
    write_folder(tmp_path / "toy", {"train": 2, "test": 1})
    flags = ["--dataset", tmp_path / "toy", "--data-dir", tmp_path / "cache"]
    assert call("data.py", *flags).returncode == 0
    cache, = (tmp_path / "cache").glob("*.npz")
    arrays = dict(np.load(cache))
    arrays["train_y"][0] = 99
    np.savez(cache, **arrays)
    r = call("data.py", *flags)
    assert r.returncode == 0 and "is damaged" in r.stderr, r.stderr
    assert np.load(cache)["train_y"].max() == 2
    assert load_dataset(str(tmp_path / "toy"), str(tmp_path / "cache")).train_y.max() == 2


@pytest.mark.parametrize("case", ["npz named npy", "folder", "upper-case NPY", "byte-order mark"])
def test_forget_indices_are_read_by_their_content(tmp_path, case):
    """FA01-FA04: the kind of an index file is in its first bytes, not its name."""
    write_folder(tmp_path / "toy", {"train": 2, "test": 1})
    path = tmp_path / {"npz named npy": "i.npy", "folder": "i.npy", "upper-case NPY": "I.NPY",
                       "byte-order mark": "i.txt"}[case]
    if case == "npz named npy":
        np.savez(tmp_path / "i.npz", indices=np.array([0, 3]))
        (tmp_path / "i.npz").rename(path)
    elif case == "folder":
        path.mkdir()
    elif case == "upper-case NPY":
        with open(path, "wb") as f:
            np.save(f, np.array([0, 3]))
    else:
        path.write_bytes(b"\xef\xbb\xbf0 3\n")  # what Notepad saves as "UTF-8"
    r = call("data.py", "--dataset", tmp_path / "toy", "--data-dir", tmp_path / "cache",
             "--forget-indices", path)
    if case in ("npz named npy", "folder"):
        assert_clean_error(r, f"--forget-indices {path}")
        assert ("zip archive" if case == "npz named npy" else "is a folder") in r.stderr
    else:
        assert r.returncode == 0, r.stderr
        assert "split: 2 forget, 4 retain" in r.stdout


@pytest.mark.parametrize("only", ["train", "test"])
def test_a_class_in_one_split_only_is_named_when_loaded(tmp_path, only):
    """IA01/IA02: a class with train images and no test folder was accepted, and evaluate.py
    crashed after the evaluation; one only in test/ was refused without its name."""
    write_folder(tmp_path / "toy", {"train": 2, "test": 1})
    bird = tmp_path / "toy" / only / "bird"
    bird.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(bird / "0.png")
    r = call("data.py", "--dataset", tmp_path / "toy", "--data-dir", tmp_path / "cache")
    other = {"train": "test", "test": "train"}[only]
    assert_clean_error(r, f"the class bird has images in {only}/ but none in {other}/")


def test_a_folder_name_that_is_not_utf8_is_named(tmp_path):
    """IA04: a class folder named in latin-1 bytes: "'utf-8' codec can't encode ... '\\udce9'"."""
    write_folder(tmp_path / "toy", {"train": 2, "test": 1})
    for split in ("train", "test"):
        folder = os.path.join(os.fsencode(tmp_path / "toy" / split), "caf\xe9".encode("latin-1"))
        os.rename(os.fsencode(tmp_path / "toy" / split / "gamma"), folder)
    r = call("data.py", "--dataset", tmp_path / "toy", "--data-dir", tmp_path / "cache")
    assert_clean_error(r, "the name 'caf\ufffd'")
    assert "is not UTF-8" in r.stderr


def test_images_in_subfolders_of_a_class_are_read_as_image_folder_reads_them(tmp_path):
    """IA05: train/<class>/more/*.png were dropped unsaid; torchvision's ImageFolder reads them
    (it walks each class folder), in its order: the same images and labels, in the same order."""
    torchvision = pytest.importorskip("torchvision")
    write_folder(tmp_path / "toy", {"train": 2, "test": 1})
    rng = np.random.default_rng(3)
    for sub in ("alpha/more", "alpha/more/deeper", "alpha/a-z", "gamma/images"):
        (tmp_path / "toy" / "train" / sub).mkdir()
        for i in range(2):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "toy" / "train" / sub / f"{i:03d}.png")
    d = load_dataset(str(tmp_path / "toy"), str(tmp_path / "cache"))
    reference = torchvision.datasets.ImageFolder(str(tmp_path / "toy" / "train"))
    assert len(d.train_y) == len(reference) == 14
    assert d.train_y.tolist() == reference.targets
    assert all(np.array_equal(x, np.asarray(reference[k][0])) for k, x in enumerate(d.train_x))


def test_a_read_only_data_dir_is_refused_before_decoding(tmp_path, monkeypatch):
    """RO02: the archive was decoded first, then "[Errno 30] Read-only file system: .tmp-...". The
    disk is made read-only for files made in the cache folder (the tests run as root: chmod is no
    protection)."""
    write_folder(tmp_path / "toy", {"train": 2, "test": 1})
    cache, real_open = str(tmp_path / "cache"), os.open

    def read_only(path, flags, *args, **kwargs):
        if os.fspath(path).startswith(cache) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return real_open(path, flags, *args, **kwargs)
    monkeypatch.setattr(os, "open", read_only)
    decoded = []
    monkeypatch.setattr(data, "decode_image", lambda *a: decoded.append(a) or np.ones((32, 32, 3)))
    r = call("data.py", "--dataset", tmp_path / "toy", "--data-dir", cache)
    assert_clean_error(r, f"--data-dir {cache}: cannot write")
    assert "Read-only file system" in r.stderr and not decoded
