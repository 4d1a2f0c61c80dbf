"""Reading a run's train or eval split (canonical JSONL written by ingest) in a training job.

A split that cannot be read or decoded is the dataset's problem, not the job's: it is an
``invalid_dataset`` failure that says what to do, never retried. Each recipe turns the lines into
its own rows (``where`` names the line in its messages).
"""

from __future__ import annotations

from collections.abc import Iterator

from minio.error import S3Error

from services.common.errors import NotFound
from services.common.objects import ObjectStore
from services.trainer.recipes import failures


def read_split(store: ObjectStore, key: str, name: str) -> str:
    """A split's JSONL text; a split that cannot be read or decoded is an invalid dataset, saying what to do."""
    try:
        text = store.get_bytes(key).decode("utf-8")
    except (S3Error, NotFound) as err:
        code = err.code if isinstance(err, S3Error) else "NoSuchKey"
        raise failures.invalid_dataset(
            f"cannot read the {name} split at {key} ({code}): split the dataset again"
        ) from None
    except UnicodeDecodeError:
        raise failures.invalid_dataset(
            f"the {name} split at {key} is not UTF-8 text: upload the dataset again"
        ) from None
    return text


def split_lines(store: ObjectStore, key: str, name: str) -> Iterator[tuple[str, str]]:
    """The split's non-blank lines, each with where it is (``"<name> split, line <n>"``) for messages."""
    for number, line in enumerate(read_split(store, key, name).splitlines(), 1):
        if line.strip():
            yield f"{name} split, line {number}", line
