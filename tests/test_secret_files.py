"""Secrets from mounted files (``NAME_FILE``, how the Helm chart hands the teacher its master key): read and
stripped, refused with a message naming the variable when unreadable, empty, or set twice."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from services.common.errors import InvalidArgument
from services.common.settings import env_secret

KEY = base64.b64encode(os.urandom(32)).decode()


def test_the_file_holds_the_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "master-key"
    path.write_text(KEY + "\n")
    monkeypatch.delenv("DISTILLERY_MASTER_KEY", raising=False)
    monkeypatch.setenv("DISTILLERY_MASTER_KEY_FILE", str(path))
    assert env_secret("DISTILLERY_MASTER_KEY") == KEY


def test_the_variable_still_works_and_neither_gives_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISTILLERY_MASTER_KEY_FILE", raising=False)
    monkeypatch.setenv("DISTILLERY_MASTER_KEY", KEY)
    assert env_secret("DISTILLERY_MASTER_KEY") == KEY
    monkeypatch.delenv("DISTILLERY_MASTER_KEY")
    assert env_secret("DISTILLERY_MASTER_KEY") == ""


def test_unreadable_empty_or_both_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISTILLERY_MASTER_KEY", raising=False)
    monkeypatch.setenv("DISTILLERY_MASTER_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(InvalidArgument, match=r"DISTILLERY_MASTER_KEY_FILE=.*cannot read it"):
        env_secret("DISTILLERY_MASTER_KEY")
    (tmp_path / "empty").write_text("\n")
    monkeypatch.setenv("DISTILLERY_MASTER_KEY_FILE", str(tmp_path / "empty"))
    with pytest.raises(InvalidArgument, match="is empty"):
        env_secret("DISTILLERY_MASTER_KEY")
    monkeypatch.setenv("DISTILLERY_MASTER_KEY", KEY)
    with pytest.raises(InvalidArgument, match="not both"):
        env_secret("DISTILLERY_MASTER_KEY")
