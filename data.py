"""Datasets, the recipe's transforms, class names and forget/retain splits.

    python data.py --dataset cifar10                 # download CIFAR-10 into ./data, list classes
    python data.py --dataset ../shared/data/cifar10-jpeg.tar.gz
                                                     # decode an image-folder archive once, cache it
    python data.py --dataset cifar100 --forget-fraction 0.2
                                                     # print the sizes of a random 20% split

A dataset is held as uint8 arrays (N, H, W, 3); `Loader` turns index arrays into
batches on any device, with the recipe's RandomCrop(32, padding=4) +
RandomHorizontalFlip done in batched tensor ops.
"""
import argparse
import dataclasses
import hashlib
import io
import math
import os
import pickle
import re
import sys
import tarfile
import tempfile
import unicodedata
import zlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cli import atomic_write, float_in, non_negative_int, positive_int, run, seed_int

# Per-channel mean and std used by the recipe's Normalize
# (the CIFAR-10 values are the model card's).
STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
# name -> (torchvision class that downloads it, extracted folder, train files, test files, label
# key, meta file, names key); the class by name: torchvision is imported only for a download, as
# it doubles a script's start-up (2 s of 4 on 2 cores)
CIFAR = {
    "cifar10": ("CIFAR10", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)],
                ["test_batch"], "labels", "batches.meta", "label_names"),
    "cifar100": ("CIFAR100", "cifar-100-python", ["train"], ["test"],
                 "fine_labels", "meta", "fine_label_names"),
}


def downloader(name):
    """torchvision's dataset class that downloads CIFAR `name`."""
    import torchvision  # here, not at the top: see CIFAR
    return getattr(torchvision.datasets, CIFAR[name][0])
PAD = 4  # RandomCrop(size, padding=4): offsets uniform in 0..2*PAD
ROTATION = 10.0  # the ensemble report's RandomRotation(10): degrees either way
JITTER = (0.2, 0.2, 0.2, 0.1)  # its ColorJitter(brightness, contrast, saturation, hue)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp")
SPLITS = ("train", "test")  # an image folder: <split>/<class>/<image>
# The largest image decoded: CIFAR-like data is 32x32, ImageNet-like photos a few
# thousand pixels a side; more is a decompression bomb (a few KB of PNG can declare
# gigapixels) or no classifier's input.
MAX_SIDE = 4096
MAX_PIXELS = MAX_SIDE * MAX_SIDE
# The modes read: 8 bits a sample, which convert("RGB") keeps as they are. 16-bit grayscale (I;16,
# I;16B), I and F would be clipped at 255. A 16-bit RGB(A) PNG opens as RGB(A) with each sample's
# high byte: scaled, not clipped, so it is read.
EIGHT_BIT_MODES = ("1", "L", "P", "RGB", "RGBA", "LA", "CMYK", "YCbCr")
# The largest image file read: such an image stored uncompressed at 4 bytes a pixel (a 32-bit BMP)
# and 1 MiB for its header and metadata: 65 MiB.
MAX_FILE_BYTES = 4 * MAX_PIXELS + 2 ** 20


@dataclass(frozen=True)
class Dataset:
    name: str
    classes: tuple
    train_x: np.ndarray  # uint8 (N, H, W, 3)
    train_y: np.ndarray  # int64 (N,)
    test_x: np.ndarray
    test_y: np.ndarray
    mean: tuple
    std: tuple


@dataclass(frozen=True)
class Split:
    """Index arrays into the train and test sets.
    `train` = forget + retain (after --subset, and --keep-half)."""
    forget_class: int | None
    forget_fraction: float | None
    forget_seed: int
    train: np.ndarray
    forget: np.ndarray
    retain: np.ndarray
    test: np.ndarray
    test_forget: np.ndarray  # the forgotten class's test images (empty for random forgetting)
    test_retain: np.ndarray
    val: np.ndarray  # held out of the retain set for model selection (empty unless val_fraction)
    # train is the seeded random half number keep_half of the train set in use
    keep_half: int | None = None
    # (a, b): the forget set is positions a..b-1 of sisa_order(train, seed)
    forget_positions: tuple | None = None


# ----------------------------------------------------------------------------- loading

class CifarUnpickler(pickle.Unpickler):
    """torchvision's CIFAR batches are pickled dicts of lists, strings and numpy arrays: only the
    globals those need may load, so a file planted in --data-dir cannot run code (pickle.load runs
    whatever a file names)."""
    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a "
                                         "CIFAR batch never holds")
        return super().find_class(module, name)


def unpickle(path, *keys):
    """A CIFAR batch (or meta) file as a dict holding `keys`, read with CifarUnpickler."""
    try:
        with open(path, "rb") as f:
            batch = CifarUnpickler(f, encoding="latin1").load()
        missing = [k for k in keys if not isinstance(batch, dict) or k not in batch]
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"{path}: not a CIFAR batch file ({e}); delete its folder to "
                         "download the dataset again") from None
    if missing:
        raise ValueError(f"{path}: not a CIFAR batch file (no {', '.join(missing)}); delete its "
                         "folder to download the dataset again")
    return batch


def read_cifar(folder, files, label_key):
    """Read torchvision's pickled CIFAR batches into uint8
    (N, 32, 32, 3) images and int64 labels."""
    xs, ys = [], []
    for name in files:
        batch = unpickle(os.path.join(folder, name), "data", label_key)
        x, y = (np.asarray(batch["data"], dtype=np.uint8),
                np.asarray(batch[label_key], dtype=np.int64))
        if x.size != len(y) * 3072:
            raise ValueError(f"{os.path.join(folder, name)}: {x.size} pixel values for {len(y)} "
                             "labels; delete its folder to download the dataset again")
        xs.append(x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(y)
    return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys)


def load_cifar(name, data_dir):
    _, folder, train_files, test_files, label_key, meta_file, names_key = CIFAR[name]
    folder = os.path.join(data_dir, folder)
    if not os.path.isdir(folder):
        try:
            downloader(name)(data_dir, train=True, download=True)
        except Exception as e:  # torchvision raises URLError, RuntimeError, ... when offline
            raise FileNotFoundError(f"{name} is not in {data_dir} and could not be downloaded "
                                    f"({e}); put the official archive there or pass --dataset "
                                    "PATH") from None
    classes = tuple(unpickle(os.path.join(folder, meta_file), names_key)[names_key])
    train_x, train_y = read_cifar(folder, train_files, label_key)
    test_x, test_y = read_cifar(folder, test_files, label_key)
    return Dataset(name, classes, train_x, train_y, test_x, test_y, *STATS[name])


def walk(path):
    """(folder, its file names) for every folder under `path`, linked folders followed (os.walk
    alone skips them: a linked class folder vanished). Refused, naming it: a folder reached
    twice by its real path (a link loop, or two links to one folder), a folder that cannot be
    read, a link to nothing."""
    def unreadable(e):  # os.walk's default is to skip such a folder, and its images with it
        raise ValueError(f"{path}: cannot read the folder {os.path.relpath(e.filename, path)} "
                         f"({e.strerror}); make it readable or remove it")
    seen = {}  # real path -> the folder first reached there
    for root, _, files in os.walk(path, onerror=unreadable, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a loop would be walked for ever
            raise ValueError(f"{path}: {os.path.relpath(root, path)} is the folder "
                             f"{os.path.relpath(seen[real], path)} again ({real}): a symbolic link "
                             "loop, or two links to one folder; remove the extra link")
        seen[real] = root
        for full in (os.path.join(root, f) for f in files):
            # maybe a class folder: it would vanish
            if os.path.islink(full) and not os.path.exists(full):
                raise FileNotFoundError(f"{path}: {os.path.relpath(full, path)} is a symbolic "
                                        f"link to {os.readlink(full)}, which does not exist; "
                                        "fix or remove the link")
        yield root, files


def list_files(path, wanted):
    """Yield (path parts, bytes) for the files of a folder or of a .tar/.tar.gz archive
    whose path parts `wanted` accepts: the others are never read (a 1.5 GB file beside the
    images was read whole)."""
    if os.path.isdir(path):
        for root, files in walk(path):
            for full in (os.path.join(root, f) for f in files):
                parts = os.path.relpath(full, path).split(os.sep)
                if wanted(parts):  # by its name: nothing of it read yet
                    size = os.path.getsize(full)
                    yield parts, read_at_most(path, "/".join(parts), size, lambda: open(full, "rb"))
        return
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                parts = member.name.split("/")
                refuse_folder_link(path, member, parts)
                if (member.isfile() or member.issym() or member.islnk()) and wanted(parts):
                    # a link is read as the archive's file it leads to
                    # (KeyError: the archive lacks it)
                    yield parts, read_at_most(path, member.name, member.size,
                                              lambda: tar.extractfile(member))
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: not a readable .tar / .tar.gz archive ({type(e).__name__}); "
                         "download or copy it again") from None
    except KeyError:
        raise ValueError(f"{path}: {member.name} is a link to {member.linkname}, which the archive "
                         "does not hold; make the archive with tar --dereference (-h)") from None


def refuse_folder_link(path, member, parts):
    """A symbolic link where a split or class folder belongs: tar stores the link, not the files it
    leads to, and the class (or split) vanished from the archive."""
    if member.issym() and (parts[-1] in SPLITS or (len(parts) >= 2 and parts[-2] in SPLITS)):
        raise ValueError(f"{path}: {member.name} is a symbolic link to {member.linkname} inside "
                         "the archive, which does not hold the files it leads to; make the archive "
                         "with tar --dereference (-h)")


def read_at_most(path, name, size, open_file):
    """The bytes of one image file, refused before it is read when its stated size is
    over MAX_FILE_BYTES, and read no further than that in any case (a link in an
    archive states size 0)."""
    if size <= MAX_FILE_BYTES:
        with open_file() as f:
            # the size and a byte more: a buffer of the limit per file costs seconds
            data = f.read(size + 1)
            # a link (size 0) or a file that grew since: read on, as far as the limit
            if len(data) > size:
                data += f.read(MAX_FILE_BYTES + 1 - len(data))
        if len(data) <= MAX_FILE_BYTES:
            return data
    raise ValueError(f"{path}: {name} is over {MAX_FILE_BYTES} bytes, more than an image of at "
                     f"most {MAX_SIDE}x{MAX_SIDE} pixels needs; shrink or remove it")


def split_at(parts):
    """Where a file's path parts name its split: the last train or test folder with a class folder
    and a file under it (the last: an archive of a folder itself named test), or None. Under the
    class folder, subfolders may nest the images, as torchvision's ImageFolder reads them
    (Tiny-ImageNet's train/<class>/images/), unless one is itself named train or test."""
    return max((k for k, part in enumerate(parts[:-2]) if part in SPLITS), default=None)


def image_name(path, parts, skipped):
    """Whether a file is an image of the dataset: <split>/<class>/[<folders>/]<image> (under any
    prefix), an image by its suffix. Other files in a class folder go to `skipped` (a .tif or .gif
    image would vanish unsaid). A name that is not UTF-8 (a latin-1 folder) cannot be a class name
    in text: one line naming it."""
    if split_at(parts) is None:
        return False
    try:
        "/".join(parts).encode("utf-8")  # the OS gave bytes that are not UTF-8 as surrogates
    except UnicodeEncodeError:
        shown = [p.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for p in parts]
        bad = next(name for name, part in zip(shown, parts) if name != part)
        raise ValueError(f"{path}: the name {bad!r} ({'/'.join(shown)}) is not UTF-8 text, as "
                         f"class and file names must be; rename it in UTF-8") from None
    if not parts[-1].lower().endswith(IMAGE_SUFFIXES):
        skipped.append("/".join(parts))
        return False
    return True


def decode_image(path, name, data):
    """One image file's bytes as a uint8 (H, W, 3) array. Refused, naming it: a damaged file, one
    over MAX_PIXELS by its header (before decoding it), one whose mode is not of EIGHT_BIT_MODES."""
    from PIL import Image  # torchvision's own dependency
    # lazy: the header only
    image = with_pil_errors(path, name, lambda: Image.open(io.BytesIO(data)))
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ValueError(f"{path}: {name} is {width}x{height} pixels, over the "
                         f"{MAX_SIDE}x{MAX_SIDE} this project decodes (a decompression bomb, or "
                         "far larger than a classifier's input); shrink or remove it")
    if image.mode not in EIGHT_BIT_MODES:
        raise ValueError(f"{path}: {name} has mode {image.mode}: only 8-bit images (modes "
                         f"{', '.join(EIGHT_BIT_MODES)}) are read as they are, more bits would be "
                         "clipped at 255; convert it to 8-bit RGB, scaling its values into 0-255")
    return np.asarray(with_pil_errors(path, name, lambda: image.convert("RGB")))


def with_pil_errors(path, name, action):
    """action(), PIL's errors for a damaged or hostile file turned into one line naming it."""
    import warnings
    from PIL import Image
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # PIL's, from 89M pixels
            return action()
    except (Image.DecompressionBombError,
            Image.DecompressionBombWarning) as e:  # not OSErrors: a traceback
        raise ValueError(f"{path}: {name} is over the {MAX_SIDE}x{MAX_SIDE} pixels this project "
                         f"decodes (PIL: {e}); shrink or remove it") from None
    except (OSError, SyntaxError, ValueError) as e:
        # PIL: UnidentifiedImageError, truncated files, bad headers
        raise ValueError(f"{path}: {name} is not a readable image ({e}); "
                         "remove or replace it") from None


def decode_image_folder(path):
    """Decode train/<class>/* and test/<class>/* into uint8 arrays; class order = sorted folder
    names. Images in subfolders of a class folder are the class's, in ImageFolder's order (by
    folder, then name)."""
    found, skipped = {split: [] for split in SPLITS}, []
    for parts, data in list_files(path, lambda parts: image_name(path, parts, skipped)):
        k = split_at(parts)
        found[parts[k]].append((parts[k + 1], "/".join(parts[k + 2:-1]), parts[-1], data))
    if skipped:
        print(f"{path}: skipped {len(skipped)} file(s) in class folders that are not images by "
              f"name ({' '.join(IMAGE_SUFFIXES)}), e.g. {skipped[0]}", file=sys.stderr)
    classes = check_classes(path, *({item[0] for item in found[split]} for split in SPLITS))
    # first: (name, shape) of the first train image, the size of every image
    arrays, first = [], None
    for split in SPLITS:
        items = sorted(found[split])
        images = []
        for c, folder, f, d in items:
            name = "/".join([split, c, *folder.split("/"), f] if folder else [split, c, f])
            image = decode_image(path, name, d)
            first = first or (name, image.shape)
            # across both splits: a model is tested at the size it learnt
            if image.shape != first[1]:
                raise ValueError(f"{path}: {name} is {size_of(image.shape)}, the first image "
                                 f"{size_of(first[1])} ({first[0]}); every image of both "
                                 "splits must have one size")
            images.append(image)
        labels = [classes.index(item[0]) for item in items]
        arrays += [np.stack(images), np.array(labels, dtype=np.int64)]
    return classes, arrays


def check_classes(path, train, test):
    """The sorted classes of an image folder whose splits hold images of the classes `train` and
    `test`: the same classes, at least two. A class with images in one split only is named (one
    without test images had no forget-class test accuracy: a traceback after the evaluation)."""
    if not train or not test:
        raise FileNotFoundError(f"{path}: expected train/<class>/<image> and test/<class>/<image> "
                                f"with the same classes")
    for split, only in (("train", sorted(train - test)), ("test", sorted(test - train))):
        if only:
            other = "test" if split == "train" else "train"
            these = (f"the classes {', '.join(only)} have" if len(only) > 1 else
                     f"the class {only[0]} has")
            raise ValueError(f"{path}: {these} images in {split}/ but none in {other}/; add them "
                             f"there or remove the class from {split}/")
    if len(train) < 2:
        raise ValueError(f"{path}: one class ({min(train)}) only; a classifier needs at least two")
    return tuple(sorted(train))


def size_of(shape):
    """An image's (H, W, 3) shape as its size is said: WxH."""
    return f"{shape[1]}x{shape[0]}"


def folder_fingerprint(path):
    """A hash that changes when the folder's files (names, sizes, times; linked folders followed, as
    decoding follows them) or the archive change."""
    h = hashlib.sha1(os.fsencode(os.path.abspath(path)))  # fsencode: any name (a latin-1 one)
    if os.path.isdir(path):
        for root, files in sorted(walk(path)):
            for f in sorted(files):
                st = os.stat(os.path.join(root, f))
                h.update(os.fsencode(f"{root}/{f}:{st.st_size}:{st.st_mtime_ns}"))
    else:
        st = os.stat(path)
        h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def load_image_folder(path, data_dir):
    """Decode once, then load the uint8 arrays from a cache in data_dir (seconds instead of a
    minute). A damaged cache is decoded again. A train set without variation in a channel is
    refused (its caches too)."""
    return varied(path, read_or_decode(path, data_dir))


def varied(path, dataset):
    """The dataset, refused when a channel of its train images has no variation: its std
    (to 4 decimals) is 0, which normalisation divides by, and training failed later
    asking for a lower --lr."""
    flat = [channel for channel, std in zip(("red", "green", "blue"), dataset.std) if std == 0]
    if flat:
        channels = f"{' and '.join(flat)} channel{'s' * (len(flat) > 1)}"
        raise ValueError(f"{path}: the train images have no variation in the {channels} (std 0), "
                         "which normalisation divides by; use images whose every channel varies")
    return dataset


def read_or_decode(path, data_dir):
    if not os.path.exists(path):
        raise FileNotFoundError(f"dataset {path!r} not found: use cifar10, "
                                "cifar100 or an image folder")
    name, cache = cache_file(path, data_dir)
    if os.path.exists(cache):
        try:
            return read_cache(cache, name)
        except Exception as e:
            # any failure to read it back (truncated zip, wrong arrays) means: decode again
            print(f"{cache} is damaged ({type(e).__name__}); decoding {path} again",
                  file=sys.stderr)
    check_cache_folder(data_dir)
    print(f"decoding {path} once; cache: {cache}", file=sys.stderr)
    classes, (train_x, train_y, test_x, test_y) = decode_image_folder(path)
    mean, std = channel_stats(train_x)  # the folder's own
    atomic_write(cache, lambda f: np.savez(f, classes=np.array(classes), train_x=train_x,
                                           train_y=train_y, test_x=test_x, test_y=test_y,
                                           mean=mean.round(4), std=std.round(4)))
    return read_cache(cache, name)


def channel_stats(images):
    """The per-channel mean and std of uint8 images as pixels in [0, 1], from each channel's
    256-value count: CIFAR-10's in 0.4 s where a float copy took 7 s and 1.2 GB."""
    counts = np.stack([np.bincount(images[..., c].ravel(), minlength=256) for c in range(3)])
    values, n = np.arange(256) / 255.0, counts.sum(1)
    mean = counts @ values / n
    return mean, np.sqrt((counts * (values - mean[:, None]) ** 2).sum(1) / n)


def check_cache_folder(data_dir):
    """Before decoding (seconds to minutes of work): --data-dir takes files, or one line naming it
    (a read-only disk was found when the cache was written, naming a temp file)."""
    try:
        os.makedirs(data_dir, exist_ok=True)
        tempfile.TemporaryFile(dir=data_dir).close()
    except OSError as e:
        raise ValueError(f"--data-dir {data_dir}: cannot write the decoded dataset's cache there "
                         f"({e.strerror}); give a --data-dir that takes files") from None


def cache_file(path, data_dir):
    """(the dataset's name, its decoded cache in data_dir): the name changes when the files do."""
    name = os.path.basename(os.path.normpath(path)).split(".")[0]
    return name, os.path.join(data_dir, f"{name}-{folder_fingerprint(path)}.npz")


def read_cache(cache, name):
    """The Dataset a cache holds, checked whole (no pickled objects: np.load refuses them): every
    array and field used, of its shape, type and range (a label out of range was an IndexError in
    the first training step). ValueError: damaged, to be decoded again."""
    with np.load(cache) as z:
        arrays = [z[k] for k in ("train_x", "train_y", "test_x", "test_y")]
        classes, mean, std = z["classes"], z["mean"], z["std"]
    (train_x, train_y, test_x, test_y) = arrays
    if not (train_x.ndim == test_x.ndim == 4 and train_x.dtype == test_x.dtype == np.uint8 and
            train_x.shape[-1] == 3 and len(train_x) == len(train_y) and
            len(test_x) == len(test_y)):
        raise ValueError("arrays of the wrong shape")
    if train_x.shape[1:] != test_x.shape[1:]:  # an earlier version's: decoding names the image
        raise ValueError("train and test images of different sizes")
    if not (classes.ndim == 1 and classes.dtype.kind == "U" and len(set(classes.tolist())) ==
            len(classes) >= 2):
        raise ValueError("class names that are not distinct strings")
    for y in (train_y, test_y):
        if not (y.ndim == 1 and y.dtype == np.int64 and ((0 <= y) & (y < len(classes))).all()):
            raise ValueError(f"labels out of 0..{len(classes) - 1}")
    for stat in (mean, std):
        if not (stat.shape == (3,) and stat.dtype.kind == "f" and (0 <= stat).all() and
                (stat <= 1).all()):
            raise ValueError("channel statistics that are not 3 numbers in [0, 1]")
    return Dataset(name, tuple(classes.tolist()), *arrays, tuple(mean.tolist()),
                   tuple(std.tolist()))


def with_normalization(data, stats, source):
    """The dataset normalised as a model was trained (stats: its (mean, std),
    models.normalization_of), not with the dataset's own statistics: a model fed other statistics
    loses accuracy without a word."""
    if stats is None or (tuple(stats[0]), tuple(stats[1])) == (tuple(data.mean), tuple(data.std)):
        return data
    print(f"normalising as {source} was trained: mean {tuple(stats[0])}, std {tuple(stats[1])} "
          f"(the dataset's own: {tuple(data.mean)}, {tuple(data.std)})", file=sys.stderr)
    return dataclasses.replace(data, mean=tuple(stats[0]), std=tuple(stats[1]))


def common_normalization(named):
    """The one (mean, std) of several models, {name: stats or None} (None: not recorded); models
    trained with different ones cannot share one evaluation: one line naming two of them."""
    known = [(name, (tuple(stats[0]), tuple(stats[1])))
             for name, stats in named.items() if stats is not None]
    for name, stats in known[1:]:
        if stats != known[0][1]:
            raise ValueError(f"{known[0][0]} was trained with mean, std {known[0][1]}, {name} with "
                             f"{stats}: evaluate them in separate runs")
    return known[0][1] if known else None


def load_dataset(dataset, data_dir="./data"):
    """`dataset` is cifar10, cifar100, or the path of an image folder (or a .tar/.tar.gz of one).
    Loaded once per process while its files are unchanged: several runs in one process
    (reproduce_cards.py, the tests) share it."""
    if dataset in CIFAR:
        folder = os.path.join(data_dir, CIFAR[dataset][1])
        key = (dataset, os.path.abspath(folder),
               os.path.isdir(folder) and folder_fingerprint(folder))
        return remembered(key, lambda: load_cifar(dataset, data_dir))
    if not os.path.exists(dataset):
        raise FileNotFoundError(f"dataset {dataset!r} not found: use cifar10, "
                                "cifar100 or an image folder")
    cache = cache_file(dataset, data_dir)[1]
    key = (os.path.abspath(dataset), folder_fingerprint(dataset),
           os.path.exists(cache) and folder_fingerprint(cache))
    return remembered(key, lambda: load_image_folder(dataset, data_dir))


# the datasets this process has loaded, by their files' fingerprint (the last one only: memory)
LOADED = {}


def remembered(key, load):
    if key not in LOADED:
        LOADED.clear()
        LOADED[key] = load()
    return LOADED[key]


# ----------------------------------------------------------------------------- classes and splits

def resolve_class(classes, name):
    """'cat' or '3' -> 3; an unknown name raises ValueError listing the valid ones."""
    if name in classes:
        return classes.index(name)
    if str(name).isascii() and str(name).isdigit() and int(name) < len(classes):  # not '²'
        return int(name)
    raise ValueError(f"unknown class {name!r}; valid: {', '.join(classes)} (or "
                     f"0-{len(classes) - 1})")


def subset_indices(labels, per_class=None):
    """The first `per_class` indices of every class, in dataset order (all when None)."""
    if per_class is None:
        return np.arange(len(labels))
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class]
                                   for c in np.unique(labels)]))


def random_half(train, keep_half):
    """The seeded random half number `keep_half` of the train indices (sorted): a U-LiRA
    shadow model's data (Hayes et al., arXiv 2403.01218, after LiRA's random halves).
    The stream is (keep_half, 2), apart from the random forget set's (forget_seed) and
    SISA's shards' (seed, 1)."""
    perm = np.random.default_rng([keep_half, 2]).permutation(len(train))
    return np.sort(train[perm[:len(train) // 2]])


def sisa_order(train, seed):
    """The seeded order of the train indices that SISA cuts into shards and slices
    (train.shard_slices) and that --forget-positions counts in (the CIFAR-100 report's design: one
    random order; the forget set and the shards are runs of positions in it). The stream is (seed,
    1), not seed: a random forget set (--forget-fraction) draws from default_rng(forget_seed), and
    with the same stream a random 20% would be exactly the start of shard 0."""
    return np.random.default_rng([seed, 1]).permutation(train)


def make_split(data, forget_class=None, forget_fraction=None, forget_seed=0, subset=None,
               test_subset=None, forget_indices=None, val_fraction=None, val_seed=0, keep_half=None,
               forget_positions=None):
    """Class-wise (every train image of forget_class), random (a seeded fraction of the train set)
    or given (forget_indices) forgetting; val_fraction holds a seeded part of the retain set out
    for model selection; keep_half restricts the train set to a seeded random half of it, the
    forget set drawn inside it."""
    if sum(x is not None
           for x in (forget_class, forget_fraction, forget_indices, forget_positions)) > 1:
        raise ValueError("give one of --forget-class, --forget-fraction, "
                         "--forget-indices, --forget-positions")
    for name, f in (("--forget-fraction", forget_fraction), ("--val-fraction", val_fraction)):
        if f is not None and not 0 < f < 1:
            raise ValueError(f"{name} must be in (0, 1), got {f}")
    train = subset_indices(data.train_y, subset)
    if keep_half is not None:
        train = random_half(train, keep_half)
    test = subset_indices(data.test_y, test_subset)
    forget, test_forget = train[:0], test[:0]
    if forget_class is not None:
        forget = train[data.train_y[train] == forget_class]
        test_forget = test[data.test_y[test] == forget_class]
    elif forget_fraction is not None:
        # inside a half, the stream also names the half:
        # one seed draws unrelated sets from different halves
        rng = np.random.default_rng(forget_seed if keep_half is None
                                    else [forget_seed, 3, keep_half])
        forget = np.sort(train[rng.permutation(len(train))[:round(forget_fraction * len(train))]])
        if len(forget) == 0:  # a "retrain" that forgot nothing would be saved as one
            raise ValueError(f"--forget-fraction {forget_fraction:g} of {len(train)} train images "
                             f"forgets none; give at least {1 / len(train):.2g}")
    elif forget_positions is not None:
        # positions a..b-1 of the order SISA's shards use with seed forget_seed
        a, b = forget_positions
        if not 0 <= a < b <= len(train):
            raise ValueError(f"--forget-positions {a}:{b}: give A:B with 0 <= A < B <= "
                             f"{len(train)}, the train images in use")
        forget = np.sort(sisa_order(train, forget_seed)[a:b])
    elif forget_indices is not None:
        forget = indices_in(forget_indices, len(data.train_y))
        if not np.isin(forget, train).all():
            raise ValueError(f"--forget-indices: {np.setdiff1d(forget, train)[:5].tolist()} ... "
                             "are not train indices in use")
    retain = np.setdiff1d(train, forget)
    if len(retain) == 0:
        raise ValueError("nothing is left to train on: the forget set is the whole train set")
    val = retain[:0]
    if val_fraction is not None:
        val = np.sort(
            np.random.default_rng(val_seed).permutation(retain)[:round(val_fraction * len(retain))])
        retain = np.setdiff1d(retain, val)
        if len(val) == 0 or len(retain) == 0:
            raise ValueError(f"--val-fraction {val_fraction:g} of {len(val) + len(retain)} images "
                             f"leaves {len(val)} for validation and {len(retain)} to train on; "
                             "both need at least one")
    test_retain = np.setdiff1d(test, test_forget)
    return Split(forget_class, forget_fraction, forget_seed, train, forget, retain, test,
                 test_forget, test_retain, val, keep_half, forget_positions)


NPY_MAGIC, ZIP_MAGIC = b"\x93NUMPY", b"PK\x03\x04"  # how a .npy file and a .npz (a zip) begin


def read_indices(path):
    """Train indices (or a boolean mask over the train set) from a .npy file or a text file of
    whitespace-separated integers (UTF-8, a byte-order mark allowed): an array of integers,
    integral floats or booleans, checked when the split is made (indices_in). Which of the two,
    its first bytes say, not its name (.NPY; a .npz named .npy is one line)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"--forget-indices file {path} not found")
    if os.path.isdir(path):
        raise ValueError(f"--forget-indices {path} is a folder; give a .npy file or a text file "
                         f"of integers")
    try:
        with open(path, "rb") as f:
            start = f.read(len(NPY_MAGIC))
        if start.startswith(ZIP_MAGIC):
            raise ValueError("a zip archive, such as a .npz: save one array with numpy.save")
        if start == NPY_MAGIC:
            indices = np.load(path, allow_pickle=False)
        else:
            with open(path, encoding="utf-8-sig") as f:  # -sig: the byte-order mark Notepad writes
                indices = np.array([int(token) for token in f.read().split()], dtype=np.int64)
    except OSError as e:
        raise OSError(f"--forget-indices {path}: cannot read it ({e.strerror})") from None
    except OverflowError:
        raise ValueError(
            f"--forget-indices {path} holds a number too large to be a train index") from None
    except (ValueError, UnicodeDecodeError, EOFError) as e:
        raise ValueError(f"--forget-indices {path}: not a list of integers ({e})") from None
    if indices.dtype.kind not in "biuf" or (indices.dtype.kind == "f" and not (
            np.isfinite(indices).all() and np.array_equal(indices, np.round(indices)))):
        raise ValueError(f"--forget-indices {path} holds non-integer values ({indices.dtype}); "
                         "give train indices, or a boolean mask over the train set")
    if indices.size == 0 or (indices.dtype.kind == "b" and not indices.any()):
        raise ValueError(f"--forget-indices {path} holds no index; give at least one "
                         "train index to forget")
    return indices.ravel()


def indices_in(values, n):
    """Forget indices into a train set of n images: integers in 0..n-1 (sorted, duplicates dropped),
    or a boolean mask of exactly n values (its True positions)."""
    values = np.asarray(values)
    if values.dtype.kind == "b":
        if len(values) != n:
            raise ValueError(f"--forget-indices: a boolean mask of {len(values)} values, "
                             f"for a train set of {n} images; give one value per train "
                             "image, or the indices")
        return np.flatnonzero(values)
    bad = values[(values < 0) | (values >= n)]
    if len(bad):
        raise ValueError(f"--forget-indices: {bad[:5].tolist()} ... are not train "
                         f"indices (0 to {n - 1})")
    return np.unique(values.astype(np.int64))


def forget_name(split, classes, subset=None, *, unlearned=False):
    """The forget part of every output's name: what tells one forget set from another."""
    if split.forget_class is not None:  # the published names: resnet18_cifar10_no_cat.pth for
        name = (str(split.forget_class) if unlearned  # the retrain, cifar10_resnet18_SSD_3.pth
                else f"no_{classes[split.forget_class]}")  # for a method unlearning class 3
    elif split.forget_fraction is not None:
        name = f"forget{split.forget_fraction:g}_seed{split.forget_seed}"
    elif split.forget_positions is not None:
        name = "forget{}-{}_seed{}".format(*split.forget_positions, split.forget_seed)
    else:  # given indices: their count; none: the whole train set
        name = f"forget{len(split.forget)}" if len(split.forget) else "full"
    name += f"_subset{subset}" if subset else ""
    return name + (f"_half{split.keep_half}" if split.keep_half is not None else "")


def describe_split(split, classes):
    """The split as saved with every run:
    its arguments, sizes, a hash of the indices, the forget indices."""
    digest = hashlib.sha256(np.concatenate([split.forget, [-1], split.retain, [-1], split.val])
                            .astype(np.int64).tobytes())
    return {
        "forget_class": None if split.forget_class is None else classes[split.forget_class],
        "forget_class_index": split.forget_class, "forget_fraction": split.forget_fraction,
        "forget_seed": split.forget_seed, "keep_half": split.keep_half, "n_train": len(split.train),
        "forget_positions": list(split.forget_positions) if split.forget_positions else None,
        "n_forget": len(split.forget), "n_retain": len(split.retain), "n_val": len(split.val),
        "n_test": len(split.test), "sha256": digest.hexdigest(),
        "forget_indices": split.forget.tolist() if split.forget_class is None else None,
    }


# ----------------------------------------------------------------------------- batches

def random_crop_flip(x, generator, pad=PAD, size=None):
    """torchvision's RandomCrop(size, padding=pad) + RandomHorizontalFlip(0.5), per image, batched:
    zero padding (before normalisation), offsets uniform in 0..(h + 2 pad - size), independent
    flips. size: h when None."""
    n, c, h, w = x.shape
    size = size or h
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, h + 2 * pad - size + 1, (n, 1), generator=generator, device=x.device)
    dx = torch.randint(0, w + 2 * pad - size + 1, (n, 1), generator=generator, device=x.device)
    flip = torch.rand(n, 1, generator=generator, device=x.device) < 0.5
    steps = torch.arange(size, device=x.device)
    rows, cols = dy + steps, dx + torch.where(flip, steps.flip(0), steps)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows[:, None, :, None], cols[:, None, None, :]]


def resize(x, size):
    """Nearest-neighbour upsampling to size x size
    (the transfer report's choice); None leaves x as it is."""
    return (x if size is None or size == x.shape[-1]
            else F.interpolate(x, size=(size, size), mode="nearest"))


def crop_flip(x, generator, size):
    """The 200-epoch recipe: crop + flip at the native resolution,
    then (transfer models) upsampling."""
    return resize(random_crop_flip(x, generator), size)


def draw_rotate_jitter(n, generator, device):
    """Per image, the parameters torchvision's RandomRotation(10) and ColorJitter(0.2, 0.2, 0.2,
    0.1) draw: an angle uniform in [-10, 10] degrees, a uniformly random order of the four
    adjustments, brightness, contrast and saturation factors uniform in [0.8, 1.2] and a hue shift
    uniform in [-0.1, 0.1]. On the device, from the loader's generator: no host read."""
    angles = (torch.rand(n, generator=generator, device=device) * 2 - 1) * ROTATION
    order = torch.rand(n, 4, generator=generator, device=device).argsort(1)
    spread = torch.tensor(JITTER, device=device)
    u = torch.rand(n, 4, generator=generator, device=device) * 2 - 1
    factors = torch.cat([1 + u[:, :3] * spread[:3], u[:, 3:] * spread[3:]], 1)
    return angles, order, factors


def rotate(x, angles):
    """torchvision's rotate(image, angle, NEAREST, fill=0) of every image by its own angle:
    the same inverse matrix (built in float64, used in float32), the same pixel-centre grid
    and grid_sample, batched."""
    n, _, h, w = x.shape
    rad = torch.deg2rad(-(angles.double() % 360))
    cos, sin, zero = rad.cos(), rad.sin(), torch.zeros_like(rad)
    theta = torch.stack([cos, sin, zero, -sin, cos, zero], 1).to(x.dtype).view(n, 2, 3)
    xs = torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, w, device=x.device)
    ys = torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, h, device=x.device)
    base = torch.stack([xs.expand(h, w), ys[:, None].expand(h, w),
                        torch.ones(h, w, device=x.device)], -1)
    scale = torch.tensor([0.5 * w, 0.5 * h], device=x.device)
    grid = (base.view(1, h * w, 3).expand(n, -1, -1).bmm(theta.transpose(1, 2) / scale)
            .view(n, h, w, 2))
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def grayscale(x):
    """ITU-R 601 luma, torchvision's weights: (n, 1, h, w)."""
    r, g, b = x.unbind(1)
    return (r * 0.2989 + g * 0.587 + b * 0.114).unsqueeze(1)


def shift_hue(x, shift):
    """Every image's hue moved by its own shift
    (in turns), through HSV as torchvision's adjust_hue."""
    maxc, minc = x.amax(1), x.amin(1)
    r, g, b = x.unbind(1)
    span = maxc - minc
    flat = span == 0  # gray pixels: no hue, saturation 0
    s = span / torch.where(flat, 1.0, maxc)
    span = torch.where(flat, 1.0, span)
    h = torch.where(maxc == r, (g - b) / span,
                    torch.where(maxc == g, 2 + (b - r) / span, 4 + (r - g) / span))
    h6 = torch.remainder(torch.fmod(h * (1.0 / 6.0) + 1.0, 1.0) + shift.view(-1, 1, 1), 1.0) * 6
    # back to RGB: channel n (5, 3, 1 for r, g, b) = v - v s clamp(min(k, 4 - k), 0, 1)
    vs = maxc * s
    return torch.stack([maxc - vs * torch.minimum(k, 4 - k).clamp(0, 1)
                        for k in (torch.remainder(h6 + n, 6) for n in (5.0, 3.0, 1.0))], 1)


def blend_step(x, op, factors, active):
    """One of brightness (0), contrast (1), saturation (2) per image, where `active`:
    torchvision's blends clamp(x f + t (1 - f)), t = 0, the mean luma, the luma; f = 1 leaves an
    inactive image exactly as it is."""
    f = torch.where(active & (op < 3), factors.gather(1, op.clamp(max=2)[:, None])[:, 0],
                    1.0).view(-1, 1, 1, 1)
    gray = grayscale(x)
    target = (gray * (op == 2).view(-1, 1, 1, 1)
              + gray.mean((1, 2, 3), keepdim=True) * (op == 1).view(-1, 1, 1, 1))
    return (x * f + target * (1 - f)).clamp(0, 1)


def color_jitter(x, order, factors):
    """ColorJitter's four adjustments in each image's own order, batched: the blends
    before the hue shift, the hue shift once (at whatever step it comes for each image),
    then the blends after it."""
    hue_step = (order == 3).int().argmax(1)
    for step in range(3):  # before the hue shift
        x = blend_step(x, order[:, step], factors, step < hue_step)
    x = shift_hue(x, factors[:, 3])
    for step in range(1, 4):  # after it
        x = blend_step(x, order[:, step], factors, step > hue_step)
    return x


def rotate_jitter_crop_flip(x, generator, size):
    """The ensemble report's recipe: torchvision's RandomRotation(10) + ColorJitter(0.2, 0.2, 0.2,
    0.1) per image (batched, with the same distribution), then Resize(size * 8/7) (256 for 224) +
    RandomCrop(size) + RandomHorizontalFlip."""
    angles, order, factors = draw_rotate_jitter(len(x), generator, x.device)
    x = color_jitter(rotate(x, angles), order, factors)
    size = size or x.shape[-1]
    return random_crop_flip(resize(x, size * 8 // 7), generator, pad=0, size=size)


AUGMENT = {"crop-flip": crop_flip, "rotate-jitter": rotate_jitter_crop_flip}


class Loader:
    """Normalised (images, labels) batches of the train (train_set=True) or test images at
    `indices`, on `device`, batch_size at a time. shuffle: a fresh permutation every pass;
    augment: None or a key of AUGMENT; size: upsample to size x size (224 for ImageNet models);
    shard: (rank, world size) under DistributedDataParallel; channels_last: batches in NHWC memory
    order, which cuDNN's fastest convolutions want (default: on CUDA). The last partial batch is
    kept, as in a DataLoader."""

    def __init__(self, data, indices, *, train_set, batch_size, device="cpu", shuffle=False,
                 augment=None, seed=0, size=None, shard=None, channels_last=None):
        x, y = (data.train_x, data.train_y) if train_set else (data.test_x, data.test_y)
        self.images = torch.from_numpy(x[indices]).permute(0, 3, 1, 2).contiguous().to(device)
        self.labels = torch.from_numpy(y[indices]).to(device)
        self.mean = torch.tensor(data.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(data.std, device=device).view(1, 3, 1, 1)
        self.batch_size, self.shuffle, self.augment, self.size = batch_size, shuffle, augment, size
        self.rank, self.world = shard or (0, 1)
        cuda = torch.device(device).type == "cuda"
        self.memory_format = (torch.channels_last
                              if (cuda if channels_last is None else channels_last)
                              else torch.contiguous_format)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    def __len__(self):
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self):
        n = len(self.labels)
        order = (torch.randperm(n, generator=self.generator, device=self.labels.device)
                 if self.shuffle else None)
        for start in range(0, n, self.batch_size):
            idx = (order[start:start + self.batch_size] if self.shuffle
                   else slice(start, start + self.batch_size))
            x = self.images[idx].float() / 255  # [0, 1], as ToTensor() gives
            x = (AUGMENT[self.augment](x, self.generator, self.size) if self.augment
                 else resize(x, self.size))
            # shard=(rank, world): every rank draws the same
            # global batch and keeps every world-th image of it
            x = ((x - self.mean) / self.std)[self.rank::self.world].contiguous(
                memory_format=self.memory_format)
            yield x, self.labels[idx][self.rank::self.world]


# ----------------------------------------------------------------------------- command line

def add_data_args(parser):
    """The data flags, spelled the same in every script."""
    g = parser.add_argument_group("data")
    g.add_argument("--dataset", default="cifar10", help="cifar10, cifar100, or an image folder "
                   "(train/<class>/*, test/<class>/*) or a .tar.gz of one (default: cifar10)")
    g.add_argument("--data-dir", default="./data",
                   help="where datasets are downloaded and cached (default: ./data)")
    g.add_argument("--forget-class", default=None,
                   help="class to forget, by name or index (default: none)")
    g.add_argument("--forget-fraction", type=float_in("(0, 1)"), default=None,
                   help="forget a random fraction of the train set instead, "
                        "e.g. 0.2 (default: none)")
    g.add_argument("--forget-seed", type=seed_int, default=0,
                   help="seed of the random forget set (default: 0)")
    g.add_argument("--forget-indices", default=None,
                   help="forget these train indices instead: a .npy file or a text file of "
                        "integers (default: none)")
    g.add_argument("--forget-positions", type=positions, default=None,
                   help="forget positions A:B (A included, B not) of the seeded order of the train "
                        "set that SISA's shards take with --seed = --forget-seed, e.g. "
                        "20000:30000, the CIFAR-100 report's forget set (default: none)")
    g.add_argument("--keep-half", type=non_negative_int, default=None,
                   help="train on the seeded random half K of the train set, the forget set drawn "
                        "inside it: a U-LiRA shadow model (default: the whole set)")
    g.add_argument("--subset", type=positive_int, default=None,
                   help="use the first N train images of each class, for quick runs (default: all)")
    g.add_argument("--test-subset", type=positive_int, default=None,
                   help="use the first N test images of each class (default: all)")
    return parser


def split_from_args(args, data, val_fraction=None):
    forget_class = (None if args.forget_class is None
                    else resolve_class(data.classes, args.forget_class))
    forget_indices = None if args.forget_indices is None else read_indices(args.forget_indices)
    return make_split(data, forget_class, args.forget_fraction, args.forget_seed, args.subset,
                      args.test_subset, forget_indices, val_fraction, keep_half=args.keep_half,
                      forget_positions=getattr(args, "forget_positions", None))


def input_files(args):
    """Every file and folder of the data that a run with these flags reads, for cli.check_out's
    inputs (no output replaces one or lands inside one): the --dataset folder or archive and its
    decoded cache in --data-dir (CIFAR: its folder and downloaded archive there), the
    --forget-indices file."""
    if args.dataset in CIFAR:
        folder, archive = CIFAR[args.dataset][1], downloader(args.dataset).filename
        files = [os.path.join(args.data_dir, name) for name in (folder, archive)]
    elif os.path.exists(args.dataset):
        files = [args.dataset, cache_file(args.dataset, args.data_dir)[1]]
    else:  # refused where it is loaded
        files = []
    return files + [args.forget_indices] * bool(args.forget_indices)


def positions(text):
    """--forget-positions A:B -> (A, B)."""
    a, colon, b = text.partition(":")
    if not (colon and a.isdigit() and b.isdigit() and int(a) < int(b)):
        raise argparse.ArgumentTypeError(
            f"give A:B with A < B (the positions A..B-1), got {text!r}")
    return int(a), int(b)


def parse_args(argv=None):
    parser = add_data_args(argparse.ArgumentParser(allow_abbrev=False,
                                                   description=__doc__.split("\n")[0]))
    parser.add_argument("--for-make", action="store_true",
                        help="refuse class names that the Makefile cannot pass safely to a shell: "
                        "what `make retrain-all` and `make reproduce` read (default: off)")
    return parser.parse_args(argv)


SAFE_CHAR = re.compile(r"[\w.+-]")  # a letter (any script), digit, _ . + -: no shell character


def check_names_for_make(classes, dataset):
    """Class names become make targets and shell words in the Makefile's recipes: one that holds a
    space, a quote or a shell character (a;id>x) would split or run as a command, and one that
    starts with - would read as a flag, so it is refused with one line saying which."""
    for index, name in enumerate(classes):
        why = make_unsafe(name)
        if why:
            raise ValueError(f"{dataset}: the class name {name!r} cannot be passed through "
                             f"make safely ({why}); rename the folder, or run the scripts "
                             f"directly with --forget-class {index}")


def make_unsafe(name):
    """Why make cannot carry a class name, or None. Checked in NFC: an accent written as a letter
    and a combining mark (NFD, as macOS names folders) is a letter, as its precomposed form is;
    the name itself is kept as it is."""
    if name.startswith("-"):
        return "it starts with -, which a script would read as a flag"
    bad = [c for c in unicodedata.normalize("NFC", name) if not SAFE_CHAR.fullmatch(c)]
    if bad:
        return f"it holds {ascii(bad[0])}, which is not a letter, a digit or one of . _ + -"
    return None


def main(argv=None):
    args = parse_args(argv)
    data = load_dataset(args.dataset, args.data_dir)
    if args.for_make:
        check_names_for_make(data.classes, args.dataset)
    split = split_from_args(args, data)
    print(f"{data.name}: {len(data.train_y)} train, {len(data.test_y)} test images of "
          f"{data.train_x.shape[1:]}")
    print(f"classes: {' '.join(data.classes)}")
    print(f"split: {len(split.forget)} forget, {len(split.retain)} retain, "
          f"{len(split.test_forget)} test forget, {len(split.test_retain)} test retain")


if __name__ == "__main__":
    run(main)
