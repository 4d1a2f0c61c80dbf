"""Reading a run's train or eval split (canonical JSONL written by ingest) in a training job.

A split that cannot be read or decoded is the dataset's problem, not the job's: it is an
``invalid_dataset`` failure that says what to do, never retried. Each recipe turns the lines into
its own rows (``where`` names the line in its messages); ``prompt_completion`` is the text paths' row
(the SFT recipe's, and the base answers a rubric is checked with).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

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


def prompt_completion(line: str, where: str) -> dict[str, Any]:
    """``{"messages": [...]}`` -> ``{"prompt": [the turns before the last], "completion": [the assistant's last]}``."""
    try:
        messages = json.loads(line)["messages"]
    except (ValueError, KeyError, TypeError):
        raise failures.invalid_dataset(f"{where}: not a JSON object with a messages list") from None
    if not isinstance(messages, list) or len(messages) < 2:
        raise failures.invalid_dataset(f"{where}: messages needs at least a user and an assistant turn")
    turns = []
    for message in messages:
        if not (isinstance(message, dict) and isinstance(message.get("content"), str) and message.get("role")):
            raise failures.invalid_dataset(f"{where}: every message needs a role and a text content")
        turns.append({"role": str(message["role"]), "content": message["content"]})
    if turns[-1]["role"] != "assistant" or not any(t["role"] == "user" for t in turns):
        raise failures.invalid_dataset(f"{where}: the last message must be the assistant's, after a user message")
    return {"prompt": turns[:-1], "completion": turns[-1:]}
