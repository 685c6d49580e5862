"""What every script needs at its edges: one error boundary, files written whole, JSON read with its name, locks.

    python -c "import cli; cli.run(lambda: open('missing.pth'))"    # error: [Errno 2] ... 'missing.pth'

Expected failures are bad input (ValueError, argparse's own exit), missing or unreadable files and full or
read-only disks (OSError), running out of GPU memory, and Ctrl-C: each is one line on stderr naming the file or
flag and what to do, with a non-zero exit (1; 130 for Ctrl-C). Anything else is a bug in this project: its
traceback is shown, followed by a line asking to report it. The scripts raise ValueError / OSError with messages
that name the file or flag, so that this one place can print them as they are.
"""
import contextlib
import fcntl
import json
import os
import sys
import tempfile
import traceback

import numpy as np
import torch

TEMP = ".tmp-"  # atomic_write's temp files: .tmp-<pid>-<random>


class OutOfGPUMemory(Exception):
    """Out of GPU memory, with a message saying what the run needs and what to do."""


def run(main, interrupted="interrupted; nothing was written"):
    """Call main() and turn an expected failure into one line and an exit code. interrupted: the line for Ctrl-C
    (say what was kept and how to continue)."""
    try:
        main()
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        sys.exit(130)
    except torch.cuda.OutOfMemoryError:
        sys.exit("error: out of GPU memory; run fewer jobs at once on this GPU (make's JOBS) or use another --device "
                 "(a smaller batch size would change the published recipe)")
    except (ValueError, OSError, OutOfGPUMemory) as e:
        sys.exit(f"error: {e}")
    except Exception:
        traceback.print_exc()
        sys.exit("error: this is a bug in this project, not in your input: please report it with the command and "
                 "the traceback above")


def atomic_write(path, write):
    """Call write(file) on a temp file beside `path`, then rename it into place: no half-written files."""
    atomic_writes([(path, write)])


def atomic_writes(files):
    """Each (path, write) written to a temp file beside its path, and only when every one is written, renamed into
    place in the order given: a full disk or an error leaves every target as it was. A failure while writing (even
    inside torch.save) is an OSError naming the file; the temp files are removed either way, and those that killed
    runs left in the folders are removed first."""
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
                raise OSError(f"could not write {path}: {getattr(e, 'strerror', None) or str(e).splitlines()[0]} "
                              f"(is the disk full or read-only?)") from None
            os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        for (path, _), tmp in zip(files, temps):
            os.replace(tmp, path)
    except BaseException:
        for tmp in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)
        raise


def remove_stale_temps(folder):
    """Delete the temp files of atomic_write whose process is gone (a run killed while writing)."""
    for name in os.listdir(folder):
        pid = name[len(TEMP):].split("-")[0]
        if name.startswith(TEMP) and pid.isdigit():
            try:
                os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
            except ProcessLookupError:
                os.unlink(os.path.join(folder, name))
            except PermissionError:  # alive, another user's
                pass


def check_writable(path, flag="--out"):
    """Before any work: `path` names a file (not a folder) in a folder where files can be made (made if needed)."""
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path} is a folder; give a file path, such as {os.path.join(path, 'out')}")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        raise ValueError(f"{flag} {path}: cannot write in {folder} ({e.strerror}); give another path") from None


def check_out(path, flag="--out", inputs=(), mine=None, overwrite=False):
    """The one check of an output file, before any work: `path` names a file (not a folder) in a folder that takes
    files; it is none of `inputs` (the files and folders the run reads: a folder stands for every file under it;
    a checkpoint's sidecar counts as part of it), and a file already there is this output's own kind
    (mine(path) is True: a rerun replaces it) unless `overwrite`. Raises ValueError naming the flag."""
    check_writable(path, flag)
    target = os.path.realpath(path)
    for source in inputs:
        if not source or not os.path.exists(source):
            continue
        real = os.path.realpath(source)
        if os.path.isdir(real) and target.startswith(real + os.sep):
            raise ValueError(f"{flag} {path} is inside {source}, whose files this run reads; write it elsewhere")
        if target in (real, os.path.splitext(real)[0] + ".json", os.path.splitext(real)[0] + ".pth"):
            raise ValueError(f"{flag} {path} would replace the input {source} (or its sidecar); give another path")
    if os.path.exists(path) and not overwrite and not (mine and mine(path)):
        raise ValueError(f"{flag} {path} exists and is not an output of this kind (another run's file?): pass "
                         f"--overwrite to replace it, or give another path")


def json_of_kind(kind):
    """mine= for check_out: a JSON file whose "kind" is `kind` (what write_json(..., kind=) writes)."""
    def mine(path):
        try:
            obj = read_json(path)
        except (ValueError, OSError):
            return False
        return isinstance(obj, dict) and obj.get("kind") == kind
    return mine


def text_of_kind(prefix):
    """mine= for check_out: a text file whose first line starts with `prefix` (what the script writes first)."""
    def mine(path):
        try:
            with open(path, encoding="utf-8") as f:
                return f.readline().startswith(prefix)
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
        raise ValueError(f"{path}: not valid JSON ({e}); was it written by this project's scripts?") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a JSON (text) file") from None


def to_json(obj):
    """JSON for numpy scalars/arrays and tensors met in configs and metrics."""
    if isinstance(obj, (np.ndarray, np.generic, torch.Tensor)):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@contextlib.contextmanager
def lock(path, wait=False):
    """Hold an exclusive lock on `path`'s run (a hidden .lock file beside it) for the block; a second run on the same
    output stops at once instead of racing for its files, or with `wait` waits for the first to end (make's jobs:
    the caller then finds the output made). Yields whether it waited. The OS releases it when a process dies."""
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
                raise ValueError(f"another run is writing {path} now; wait for it to finish or give another "
                                 f"--out") from None
            print(f"waiting for another run writing {path}", file=sys.stderr, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        # the run that held it may have removed the file between our open and flock: then lock the new one
        if os.path.exists(lock_path) and os.path.samestat(os.fstat(f.fileno()), os.stat(lock_path)):
            break
        f.close()
    try:
        yield waited
    finally:
        os.unlink(lock_path)
        f.close()
