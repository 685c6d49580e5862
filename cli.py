"""Every script's edges in one place: the error boundary, files written whole, outputs checked,
JSON read with its name, locks, flags (their types and a config's flags), the device and
precision, progress on a terminal.

    python -c "import cli; cli.run(lambda: open('missing.pth'))"
    # error: [Errno 2] ... 'missing.pth'

Expected failures are bad input (ValueError, argparse's own exit), missing or unreadable files and
full or read-only disks (OSError), running out of GPU memory, and Ctrl-C: each is one line on stderr
naming the file or flag and what to do, with a non-zero exit (1; 130 for Ctrl-C). Anything else is a
bug in this project: its traceback is shown, followed by a line asking to report it. torch is
imported only where a device is chosen, so that report.py, which reads JSON, starts without it.
"""
import argparse
import contextlib
import dataclasses
import fcntl
import glob
import hashlib
import json
import os
import sys
import tempfile
import time
import traceback

import numpy as np

# atomic_write's temp files, <TEMP><pid>-<random>: a prefix no user's file has (remove_stale_temps)
TEMP = ".unlearning-recipes-tmp-"
# Checkpoint endings: an older sidecar x.json may belong to any x.<ending> beside it (owns_legacy).
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin", ".ckpt")


class OutOfGPUMemory(Exception):
    """Out of GPU memory, with a message saying what the run needs and what to do."""


def run(main, interrupted="interrupted; nothing was written"):
    """Call main() and turn an expected failure into one line and an exit code. interrupted: the
    line for Ctrl-C (say what was kept and how to continue)."""
    try:
        main()
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        sys.exit(130)
    except (ValueError, OSError, OutOfGPUMemory) as e:
        sys.exit(f"error: {e}")
    except Exception as e:
        if (type(e).__name__ == "OutOfMemoryError"  # torch, not imported
                and type(e).__module__.startswith("torch")):
            sys.exit("error: out of GPU memory; run fewer jobs at once on this GPU "
                     "(make's JOBS) or use another --device (a smaller batch size would "
                     "change the published recipe)")
        traceback.print_exc()
        sys.exit("error: this is a bug in this project, not in your input: please report it with "
                 "the command and the traceback above")


def atomic_write(path, write):
    """Call write(file) on a temp file beside `path`,
    then rename it into place: no half-written files."""
    atomic_writes([(path, write)])


def atomic_writes(files):
    """Each (path, write) written to a temp file beside its path, and only when every one is
    written, renamed into place in the order given: a full disk or an error leaves every
    target as it was. A failure while writing (even inside torch.save) is an OSError naming
    the file; the temp files are removed either way, and those that killed runs left in the
    folders are removed first."""
    temps = []
    try:
        for path, write in files:
            folder = os.path.dirname(os.path.abspath(path))
            os.makedirs(folder, exist_ok=True)
            remove_stale_temps(folder)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f"{TEMP}{os.getpid()}-")
            temps.append(tmp)
            try:
                with os.fdopen(fd, "wb") as f:
                    write(f)
            except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
                raise OSError(f"could not write {path}: "
                              f"{getattr(e, 'strerror', None) or str(e).splitlines()[0]} (is the "
                              "disk full or read-only?)") from None
            os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        for (path, _), tmp in zip(files, temps):
            os.replace(tmp, path)
    except BaseException:
        for tmp in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)
        raise


def remove_stale_temps(folder):
    """Delete the temp files of atomic_write whose process is gone (a run killed while writing):
    only names that start with TEMP, this project's own, then a pid and a dash; no other file."""
    for name in os.listdir(folder):
        pid, dash, _ = name[len(TEMP):].partition("-")
        if not (name.startswith(TEMP) and pid.isdigit() and dash):
            continue
        try:
            os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            os.unlink(os.path.join(folder, name))
        except PermissionError:  # alive, another user's
            pass


def check_writable(path, flag="--out"):
    """Before any work: `path` names a file
    (not a folder) in a folder where files can be made (made if needed)."""
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path} is a folder; give a file path, such as "
                         f"{os.path.join(path, 'out')}")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        raise ValueError(f"{flag} {path}: cannot write in {folder} "
                         f"({e.strerror}); give another path") from None


def check_out(path, flag="--out", inputs=(), mine=None, overwrite=False):
    """The one check of an output file, before any work: `path` names a file (not a folder) in a
    folder that takes files; it is none of `inputs` (check_inputs), and a file already there is
    this output's own kind (mine(path) is True: a rerun replaces it) unless `overwrite`. Raises
    ValueError naming the flag."""
    check_inputs(path, flag, inputs)  # first: check_writable makes the folder, maybe in the data
    check_writable(path, flag)
    if os.path.exists(path) and not overwrite and not (mine and mine(path)):
        raise ValueError(f"{flag} {path} exists and is not an output of this kind (another run's "
                         "file?): pass --overwrite to replace it, or give another path")


def check_inputs(path, flag, inputs, writes=None):
    """Whatever --overwrite says, none of the files the output `path` writes (`writes`: default
    path alone; a checkpoint and its sidecar) is one of `inputs` (the files and folders the run
    reads: a folder stands for every file under it) or goes with one (companions). Raises
    ValueError naming the flag and the file that would be lost."""
    for written in writes or [path]:
        target = os.path.realpath(written)
        for source in filter(None, inputs):
            if not os.path.exists(source):
                continue
            real = os.path.realpath(source)
            if os.path.isdir(real) and target.startswith(real + os.sep):
                raise ValueError(f"{flag} {path} is inside {source}, whose files this run "
                                 f"reads; write it elsewhere")
            lost = [f for f in companions(source) if os.path.realpath(f) == target]
            whose = "" if written == path else f": its sidecar {written}"
            if lost:
                raise ValueError(f"{flag} {path}{whose} would replace the input {source}"
                                 f"{role(source, lost[0])}; give another path")


def companions(source):
    """An input file and the files that go with it: a checkpoint's sidecar (also under the older
    name for the CHECKPOINT_SUFFIXES), a sidecar's checkpoint (x.pth.json, the older x.json ->
    x.pth). A folder (a dataset) has none: the whole folder is the input."""
    if os.path.isdir(source):
        return [source]
    if source.endswith(".json"):
        return [source, source[:-len(".json")], os.path.splitext(source)[0] + ".pth"]
    older = [legacy_sidecar(source)] * (os.path.splitext(source)[1] in CHECKPOINT_SUFFIXES)
    return [source, sidecar_name(source), sidecar_path(source), *older]


def role(source, companion):
    """How a refusal names a companion of the input `source`: "'s sidecar x.pth.json"."""
    if companion == source:
        return ""
    return f"'s {'checkpoint' if source.endswith('.json') else 'sidecar'} {companion}"


# ----------------------------------------------------------------------------- checkpoint sidecars

def sidecar_name(path):
    """Where a checkpoint's JSON sidecar is written: its whole name + .json (x.pth -> x.pth.json),
    so x.pt and x.pth beside each other have one each (docs/CHOICES.md)."""
    return path + ".json"


def legacy_sidecar(path):
    """The sidecar's name until December 2026, the ending replaced (x.pth -> x.json): one name
    for x.pt and x.pth."""
    return os.path.splitext(path)[0] + ".json"


def sidecar_path(path):
    """The sidecar to read for the checkpoint `path`: sidecar_name(path) when it is there, else an
    older x.json that is this file's (owns_legacy), else sidecar_name(path) (absent). Every
    reader of a sidecar goes through here."""
    new, old = sidecar_name(path), legacy_sidecar(path)
    if os.path.isfile(new) or old == new or not os.path.isfile(old):
        return new
    return old if owns_legacy(path, old) else new


def owns_legacy(path, old):
    """Whether the older sidecar `old` (x.json) is the checkpoint `path`'s. When another file it
    could describe (x.<ending>, or x, whose sidecar_name it is) is beside it, only if it names
    path's sha256 (of an older-style x.pt and x.pth, the one it describes). Else when `path` is
    there, whatever it holds (reading it names any damage); when `path` is not (a run kept
    without its weights), only if it is a sidecar of this project (argv or sha256), so that a
    user's own x.json is nobody's."""
    stem = old[:-len(".json")]
    candidates = [stem] + [stem + ending for ending in CHECKPOINT_SUFFIXES]
    others = [f for f in candidates if f != path and os.path.isfile(f)]
    if not others and os.path.isfile(path):
        return True
    try:
        meta = read_json(old)
    except (ValueError, OSError):
        return False
    if not isinstance(meta, dict):
        return False
    if not others:
        return bool({"argv", "sha256"} & meta.keys())
    recorded = meta.get("sha256")
    return isinstance(recorded, str) and os.path.isfile(path) and sha256_file(path) == recorded


def sidecars_of(pattern):
    """The sidecars of the checkpoints the glob `pattern` names (run/no_*.pth), each once, under
    the name sidecar_path reads; also those whose checkpoint is gone (a run kept without its
    weights), found by their own names."""
    stem, ending = os.path.splitext(pattern)
    owners = set(glob.glob(pattern)) | {s[:-len(".json")] for s in glob.glob(pattern + ".json")}
    older = [s[:-len(".json")] for s in glob.glob(stem + ".json")]  # also matches x.pth.json
    owners |= {s + ending for s in older if os.path.splitext(s)[1] not in CHECKPOINT_SUFFIXES}
    return sorted(s for s in {sidecar_path(o) for o in owners} if os.path.isfile(s))


def checkpoint_of(sidecar):
    """The checkpoint a sidecar describes, by its name: x.pth.json, an older x.json -> x.pth."""
    base = sidecar[:-len(".json")] if sidecar.endswith(".json") else sidecar
    return base if os.path.splitext(base)[1] in CHECKPOINT_SUFFIXES else base + ".pth"


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def json_of_kind(kind):
    """mine= for check_out: a JSON file whose "kind" is `kind`
    (what write_json(..., kind=) writes)."""
    def mine(path):
        try:
            obj = read_json(path)
        except (ValueError, OSError):
            return False
        return isinstance(obj, dict) and obj.get("kind") == kind
    return mine


def text_of_kind(prefix):
    """mine= for check_out: a text file that starts with `prefix`, what the script writes first (it
    may span lines: a card's front matter and the marker only our cards carry)."""
    def mine(path):
        try:
            with open(path, encoding="utf-8", newline="") as f:
                return f.read(len(prefix)) == prefix
        except (OSError, UnicodeDecodeError):
            return False
    return mine


def write_json(path, obj):
    atomic_write(path, lambda f: f.write(json_bytes(obj)))


def json_bytes(obj):
    return json.dumps(obj, indent=1, default=to_json).encode()


def read_json(path):
    """A JSON file's content; a damaged or missing file is an error naming it."""
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); "
                         "was it written by this project's scripts?") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a JSON (text) file") from None


# -------------------------------------------------------------------- run files read back, checked

@dataclasses.dataclass(frozen=True)
class Kind:
    """A leaf of a JSON file's layout (see checked): what a value must be, and the test of it."""
    what: str
    test: object  # value -> bool


@dataclasses.dataclass(frozen=True)
class Maybe:
    """A field that may be absent or null (checked sets an absent one to null), else as `spec`."""
    spec: object


@dataclasses.dataclass(frozen=True)
class ListOf:
    """A JSON list of at least `least` values, each as `spec` says."""
    spec: object
    least: int = 0


@dataclasses.dataclass(frozen=True)
class Each:
    """A JSON object of any keys (paths, group names), at least `least` values, each as `spec`."""
    spec: object
    least: int = 1


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)  # true is no number


def number(lo=-float("inf"), hi=float("inf"), nan=False):
    """A Kind: a finite number in [lo, hi] (within a float's range: a larger int cannot be
    formatted); NaN too with `nan`."""
    bounds = f" in [{lo:g}, {hi:g}]" if hi < float("inf") else f" >= {lo:g}" if lo > -hi else ""
    return Kind(f"a finite number{bounds}" + " (or NaN)" * nan, lambda v: is_number(v) and (
        (lo <= v <= hi and abs(v) <= sys.float_info.max) or (nan and v != v)))


TEXT = Kind("a string", lambda v: isinstance(v, str))
COUNT = Kind("a whole number >= 0",
             lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2 ** 63)
OBJECT = Kind("a JSON object", lambda v: isinstance(v, dict))
ANY = Kind("present", lambda v: True)
# a name that becomes part of a file name (a class's plots, a pool's): no folder in it
FILE_PART = Kind("a name without / or \\ (it names a file)", lambda v: isinstance(v, str)
                 and v not in ("", ".", "..") and not any(c in v for c in "/\\\0"))
MISSING = object()  # a field the file lacks
REMAKE = "make the file again with this project's scripts"


def checked(value, spec, source, field=""):
    """`value`, read from the JSON file `source`, held against `spec`: a dict {key: spec} (an
    object holding those keys; others are not read), Maybe, ListOf, Each or a Kind. Run files are
    read back by code that formats and plots every field: one of another type or out of range was
    a traceback far from the file (a string where a number goes: "Unknown format code 'f'").
    Returns `value` (an absent Maybe field set to None); else one line naming the file and the
    field, such as metrics.test_acc or models["a.pth"].mia."""
    if isinstance(spec, Maybe):
        return None if value in (None, MISSING) else checked(value, spec.spec, source, field)
    if value is MISSING:
        raise ValueError(f"{source}: lacks the field {field}; {REMAKE}")
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            bad(source, field, value, "a JSON object")
        for key, sub in spec.items():
            name = f"{field}.{key}" if field else key
            value[key] = checked(value.get(key, MISSING), sub, source, name)
    elif isinstance(spec, (ListOf, Each)):
        kind = list if isinstance(spec, ListOf) else dict
        if not isinstance(value, kind) or len(value) < spec.least:
            plural = "s" * (spec.least > 1)
            at_least = f" of at least {spec.least} value{plural}" if spec.least else ""
            bad(source, field, value, f"a JSON {'list' if kind is list else 'object'}{at_least}")
        for key, item in enumerate(value) if kind is list else value.items():
            checked(item, spec.spec, source, f"{field}[{json.dumps(key)}]")
    elif not spec.test(value):
        bad(source, field, value, spec.what)
    return value


def bad(source, field, value, what):
    shown = json.dumps(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    raise ValueError(f"{source}: {field or 'the file'} is {shown}, not {what}; {REMAKE}")


def to_json(obj):
    """JSON for numpy scalars/arrays and tensors met in configs and metrics."""
    if (isinstance(obj, (np.ndarray, np.generic))
            or type(obj).__module__.startswith("torch")):  # a tensor
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@contextlib.contextmanager
def lock(path, wait=False):
    """Hold an exclusive lock on `path`'s run (a hidden .lock file beside it) for the block; a
    second run on the same output stops at once instead of racing for its files, or with `wait`
    waits for the first to end (make's jobs: the caller then finds the output made). Yields whether
    it waited. The OS releases it when a process dies."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    lock_path = os.path.join(folder, f".{os.path.basename(path)}.lock")
    waited = False
    while True:
        f = open(lock_path, "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            waited = True
            if not wait:
                f.close()
                raise ValueError(f"another run is writing {path} now; wait for it to finish "
                                 "or give another --out") from None
            print(f"waiting for another run writing {path}", file=sys.stderr, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        # the run that held it may have removed the file
        # between our open and flock: then lock the new one
        if os.path.exists(lock_path) and os.path.samestat(os.fstat(f.fileno()), os.stat(lock_path)):
            break
        f.close()
    try:
        yield waited
    finally:
        os.unlink(lock_path)
        f.close()


# ----------------------------------------------------------------------------- flags

# The values a float flag may take, by field name (a learning rate is positive in every recipe and
# method); other floats are finite and non-negative unless their field says otherwise. NaN and inf
# are refused everywhere.
INTERVALS = {"lr": "(0, inf)", "lr_fc": "(0, inf)", "momentum": "[0, 1)", "beta1": "[0, 1)",
             "beta2": "[0, 1)", "val_fraction": "[0, 1)", "temperature": "(0, inf)"}
INTERVAL_SUFFIXES = {"_lr": "(0, inf)"}  # learning rates too: UNSIR's noise, impair, repair lr

COUNT_LIMIT = 2 ** 31  # counts (epochs, batches, images) below it: torch takes them as sizes
SEED_LIMIT = 2 ** 53  # float64-exact in JSON; SISA's seed x 1000 + shard fits torch's 64-bit seeds


def interval_of(name):
    """The interval of a float field's flag: by its exact name, else its suffix, else [0, inf)."""
    if name in INTERVALS:
        return INTERVALS[name]
    return next((v for end, v in INTERVAL_SUFFIXES.items() if name.endswith(end)), "[0, inf)")


def bounded_int(text, low, limit, kind):
    """An int of ASCII digits in [low, limit): a Unicode digit ('²') or a huge value is one line,
    not torch's overflow later."""
    digits = text[1:] if text.startswith("-") else text
    if not (digits.isascii() and digits.isdigit()) or not low <= int(text) < limit:
        power = limit.bit_length() - 1
        raise argparse.ArgumentTypeError(f"must be {kind} below {limit:,} (2**{power}), got "
                                         f"{text!r}")
    return int(text)


def glue_values(argv, options):
    """argv with each of `options` and the word after it written as one, OPTION=VALUE: the options
    whose value is other flags ('--unlearn-flags --no-augment'), which argparse would otherwise
    take for a flag of its own and stop with "expected one argument"."""
    glued, rest = [], list(argv)
    while rest:
        word = rest.pop(0)
        glued.append(f"{word}={rest.pop(0)}" if word in options and rest else word)
    return glued


def positive_int(text):
    return bounded_int(text, 1, COUNT_LIMIT, "a positive integer")


def non_negative_int(text):
    return bounded_int(text, 0, COUNT_LIMIT, "a non-negative integer")


def seed_int(text):
    return bounded_int(text, 0, SEED_LIMIT, "a non-negative integer seed")


def positive_ints(text):
    """'8,7,6,5,4' -> (8, 7, 6, 5, 4)."""
    return tuple(positive_int(t) for t in text.split(","))


def float_in(interval):
    """An argparse type: a finite float inside `interval`, written "[0, 1)" (a bracket
    includes the end). Finite means representable in float32, the weights' type (torch cannot
    step with an lr of 1e39)."""
    lo, hi = (float(end) for end in interval[1:-1].split(","))

    def parse(text):
        try:
            x = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not (abs(x) <= float(np.finfo(np.float32).max)
                and (lo < x or (interval[0] == "[" and x == lo))
                and (x < hi or (interval[-1] == "]" and x == hi))):
            raise argparse.ArgumentTypeError(f"must be a finite number in {interval}, got {text}")
        return x
    return parse


def device_name(text):
    """--device: auto, cpu, cuda or cuda:N
    (whether that CUDA device exists is checked where it is used)."""
    kind, _, index = text.partition(":")
    if text == "auto" or (kind in ("cpu", "cuda")
                          and (not index or (index.isdigit() and kind == "cuda"))):
        return text
    raise argparse.ArgumentTypeError(f"use auto, cpu, cuda or cuda:N, got {text!r}")


def add_runtime_args(parser, precision="auto",
                     seed="seed of batch order, augmentation, random draws"):
    """--device, --precision and --seed, spelled and checked the same in every script. precision:
    the default (auto: bf16 autocast on CUDA, fp32 on a CPU; fp32 where the published numbers are
    fp32), or None where the script's numbers must be fp32 (verify_published.py); seed: its help, or
    None where the seed is a recipe's field (train.py) or there is none."""
    g = parser.add_argument_group("runtime")
    g.add_argument("--device", type=device_name, default="auto",
                   help="auto, cpu, cuda or cuda:N (default: auto)")
    if precision:
        g.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=precision,
                       help="bf16: autocast with fp32 weights and optimizer state; fp32: IEEE fp32 "
                       "(on CUDA too, not TF32); auto: bf16 on CUDA, fp32 on a CPU (default: "
                       f"{precision})")
    if seed:
        g.add_argument("--seed", type=seed_int, default=0, help=f"{seed} (default: 0)")
    return parser


def field_type(f):
    """The argparse type of a config field: what its flag accepts (positive ints, floats in the
    field's interval, comma-separated positive ints for a tuple, the string itself)."""
    if isinstance(f.default, tuple):
        return positive_ints
    if isinstance(f.default, int) and (f.name == "seed" or f.name.endswith("_seed")):
        return seed_int
    if isinstance(f.default, int):
        return {1: positive_int, 0: non_negative_int}[f.metadata.get("minimum", 1)]
    if isinstance(f.default, float):
        return float_in(f.metadata.get("interval", interval_of(f.name)))
    return type(f.default)


def add_config_args(parser, config_class, defaults=None):
    """One flag per field of a config dataclass, its help naming the paper's symbol and
    the published default. defaults: {field: value} where the official code sets another
    value for the case at hand."""
    group = parser.add_argument_group(f"{config_class.__name__}: "
                                      f"{config_class.__doc__.split(chr(10))[0].rstrip('.')}")
    for f in flag_fields(config_class):
        meta, default = f.metadata, (defaults or {}).get(f.name, f.default)
        kwargs = {"dest": f.name, "default": default,
                  "help": f"{meta['help']} (default: {default})"}
        flag = meta.get("flag", "--" + f.name.replace("_", "-"))
        if isinstance(f.default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            group.add_argument(flag, type=field_type(f), choices=meta.get("choices"), **kwargs)


def flag_fields(config_class):
    """The fields a user sets by flag: all but those marked flag=None (the script fills them)."""
    return [f for f in dataclasses.fields(config_class) if f.metadata.get("flag", "") is not None]


def config_from_args(config_class, args, **code):
    """The config of the flags' values; code: the fields without a flag, from the script."""
    flags = {f.name: getattr(args, f.name) for f in flag_fields(config_class)}
    return config_class(**flags, **code)


def config_from_json(config_class, values, source):
    """A config from a JSON dict (a manifest's): every field there, of its type and accepted by its
    flag's checks, else one line naming the file and the field (a hand-edited file must not reach
    the training as a string)."""
    if not isinstance(values, dict):
        raise ValueError(f"{source}: its {config_class.__name__} is not a JSON object; write the "
                         "file again with this project's scripts")
    kwargs = {}
    for f in dataclasses.fields(config_class):
        value, kind = values.get(f.name), type(f.default)
        ok = (isinstance(value, bool) if kind is bool else
              isinstance(value, (list, tuple)) if kind is tuple else
              isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else
              isinstance(value, kind) and not isinstance(value, bool))
        if not ok:
            raise ValueError(f"{source}: {f.name} is {value!r}, not of type {kind.__name__}; write "
                             "the file again with this project's scripts")
        text = ",".join(map(str, value)) if kind is tuple else str(value)
        try:
            kwargs[f.name] = value if kind is bool else field_type(f)(text)
        except (argparse.ArgumentTypeError, ValueError) as e:
            raise ValueError(f"{source}: {f.name} {e}") from None
        if f.metadata.get("choices") and kwargs[f.name] not in f.metadata["choices"]:
            raise ValueError(f"{source}: {f.name} is {value!r}; one of "
                             f"{', '.join(f.metadata['choices'])}")
    return config_class(**kwargs)


# ----------------------------------------------------------------------------- device and precision

def pick_device(name="auto", precision="auto"):
    """The one place device and precision are chosen, printed once. Returns (device, amp): amp is
    the autocast dtype (bfloat16 on CUDA by default: fp32 weights and optimizer state, bf16 matmuls)
    or None for fp32, which on CUDA is IEEE fp32 (cuDNN's default would be TF32 convolutions)."""
    import torch
    from methods import set_ieee_fp32
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name}: this project runs on cpu or cuda; use "
                         "auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asked for, but torch sees no CUDA device")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: torch sees {torch.cuda.device_count()} CUDA device(s), "
                         f"0 to {torch.cuda.device_count() - 1}")
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    amp = torch.bfloat16 if precision == "bf16" else None
    if device.type == "cuda":
        # the fastest kernels for each batch shape, chosen once
        torch.backends.cudnn.benchmark = True
        set_ieee_fp32(amp is None)
    detail = (torch.cuda.get_device_name(device) if device.type == "cuda"
              else f"{torch.get_num_threads()} threads")
    print(f"device: {device} ({detail}), {'bf16 autocast' if amp else 'fp32'}", file=sys.stderr)
    return device, amp


def eval_batch_size(device):
    """Large batches fill a GPU; on a CPU small ones keep activations in cache: 64 is 1.5x faster
    than 128 for resnet20 on 2 cores, the same logits bitwise (docs/RESULTS.md)."""
    return 1000 if device.type == "cuda" else 64


# ----------------------------------------------------------------------------- progress

class Progress:
    """A loader's batches, and on a terminal a line on stderr saying how far the pass has gone
    ("label 12/352"), redrawn at most twice a second. It reads no tensor, so it adds no host sync;
    silent when stderr is no terminal."""

    def __init__(self, loader, label):
        self.loader, self.label = loader, label

    def __len__(self):
        return len(self.loader)

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def __iter__(self):
        if not sys.stderr.isatty():
            yield from self.loader
            return
        shown = 0.0
        for i, batch in enumerate(self.loader, 1):
            if time.monotonic() - shown > 0.5:
                print(f"\r{self.label} {i}/{len(self.loader)}", end="", file=sys.stderr, flush=True)
                shown = time.monotonic()
            yield batch
        print("\r\x1b[K", end="", file=sys.stderr, flush=True)
