"""Optimization profiles (docs/optimization.md): per model, named sets of attached steering vectors and
sampling settings that ``Generate``, ``GenerateStream`` and the gateway's endpoint apply.

A model's "default" profile applies to every request that names none; a request names another profile,
or "none" for no profile, and overrides fields (``merged``): each sampling field it sets wins (its
``temperature`` above 0 too, and its ``max_new_tokens`` above 0 as max_tokens), its vectors replace the
profile's, and ``no_vectors`` attaches none. A profile is stored as one row (table ``profiles``) whose
body holds the sampling fields set and the vectors by id (resolved from names when the profile is set,
so ``DeleteVector`` can refuse while a profile attaches one).
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from services.common.errors import InvalidArgument, NotFound
from services.registry import models
from services.registry.models import Model

DEFAULT, NONE = "default", "none"
GREEDY, SAMPLE = "greedy", "sample"
MAX_STOP, MAX_STOP_CHARS = 4, 64
MAX_TOKENS = 2048
MAX_STRENGTH = 64.0
MAX_VECTORS = 16
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Sampling:
    """Decoding settings; None (and no stop strings) where not set."""

    strategy: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()

    def over(self, base: Sampling) -> Sampling:
        """These settings over ``base``'s: each field set here wins. A temperature set without a strategy says
        the strategy too (above 0 sample, 0 greedy)."""
        mine = {k: v for k, v in asdict(self).items() if v not in (None, (), [])}
        if self.temperature is not None and self.strategy is None:
            mine["strategy"] = SAMPLE if self.temperature > 0 else GREEDY
        if "stop" in mine:
            mine["stop"] = tuple(mine["stop"])
        return replace(base, **mine)

    def as_json(self) -> dict[str, Any]:
        return {k: list(v) if k == "stop" else v for k, v in asdict(self).items() if v not in (None, (), [])}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Sampling:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**{**known, "stop": tuple(known.get("stop") or ())})


@dataclass(frozen=True)
class Attached:
    """A vector attached with a strength over decoder layers first..last (both 0: all of the vector's)."""

    vector_id: str
    strength: float
    first_layer: int = 0
    last_layer: int = 0
    vector_name: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"vector_id": self.vector_id, "vector_name": self.vector_name, "strength": self.strength,
                "first_layer": self.first_layer, "last_layer": self.last_layer}  # fmt: skip


@dataclass(frozen=True)
class Profile:
    model_id: str
    name: str
    vectors: tuple[Attached, ...] = ()
    sampling: Sampling = field(default_factory=Sampling)
    updated_at: datetime | None = None


# Resolves attached vectors (ids or names) for a model: the same vectors with ids and names, checked to fit.
Resolver = Callable[[Model, Sequence[Attached]], Awaitable[list[Attached]]]


def check_name(name: str) -> str:
    if name == NONE or not _NAME.match(name):
        raise InvalidArgument(
            f"profile name {name!r} is not usable: use 1 to 64 letters, digits, '_', '-' or '.' (not \"none\", which "
            "asks for no profile)",
            field="name",
        )
    return name


def check_sampling(s: Sampling, where: str = "sampling") -> None:
    """INVALID_ARGUMENT naming the first field out of range, and the range to use."""

    def refuse(name: str, value: Any, fix: str) -> None:
        raise InvalidArgument(f"{where}.{name} is {value!r}: {fix}", field=f"{where}.{name}")

    def number(name: str, value: float | None, ok: Callable[[float], bool], fix: str) -> None:
        if value is not None and (not math.isfinite(value) or not ok(value)):
            refuse(name, value, fix)

    if s.strategy is not None and s.strategy not in (GREEDY, SAMPLE):
        refuse("strategy", s.strategy, 'use "greedy" or "sample"')
    number("temperature", s.temperature, lambda v: 0 <= v <= 2, "use 0 to 2 (0: greedy)")
    if s.strategy == SAMPLE and s.temperature == 0:
        refuse("temperature", 0.0, 'sampling needs a temperature above 0 (up to 2); or use strategy "greedy"')
    number("top_p", s.top_p, lambda v: 0 < v <= 1, "use a number above 0, at most 1 (1: no cut)")
    if s.top_k is not None and s.top_k < 0:
        refuse("top_k", s.top_k, "use 0 (no cut) or more")
    number("min_p", s.min_p, lambda v: 0 <= v < 1, "use 0 (no cut) up to, not including, 1")
    number(
        "repetition_penalty", s.repetition_penalty, lambda v: 0 < v <= 2, "use a number above 0, at most 2 (1: none)"
    )
    if s.max_tokens is not None and not 1 <= s.max_tokens <= MAX_TOKENS:
        refuse("max_tokens", s.max_tokens, f"use 1 to {MAX_TOKENS}")
    if len(s.stop) > MAX_STOP:
        refuse("stop", list(s.stop), f"give at most {MAX_STOP} stop strings")
    for i, text in enumerate(s.stop):
        if not text or len(text) > MAX_STOP_CHARS:
            raise InvalidArgument(
                f"{where}.stop[{i}] is {len(text)} characters long: give 1 to {MAX_STOP_CHARS}",
                field=f"{where}.stop[{i}]",
            )


def check_vectors(vectors: Sequence[Attached], where: str = "vectors") -> None:
    if len(vectors) > MAX_VECTORS:
        raise InvalidArgument(f"{where} has {len(vectors)} vectors: attach at most {MAX_VECTORS}", field=where)
    for i, v in enumerate(vectors):
        here = f"{where}[{i}]"
        if not v.vector_id:
            raise InvalidArgument(f"{here}.vector_id is empty: give a vector's id or name", field=f"{here}.vector_id")
        if not math.isfinite(v.strength) or abs(v.strength) > MAX_STRENGTH:
            raise InvalidArgument(
                f"{here}.strength is {v.strength}: use -{MAX_STRENGTH:g} to {MAX_STRENGTH:g} (negative steers away)",
                field=f"{here}.strength",
            )
        if v.first_layer < 0 or v.last_layer < v.first_layer:
            raise InvalidArgument(
                f"{here}: layers {v.first_layer}-{v.last_layer} are not a range: give first_layer <= last_layer "
                "(both 0: all of the vector's layers)",
                field=f"{here}.first_layer",
            )


def _profile(model_id: str, name: str, body: dict[str, Any], updated_at: datetime | None) -> Profile:
    vectors = tuple(
        Attached(v["vector_id"], float(v["strength"]), int(v.get("first_layer", 0)), int(v.get("last_layer", 0)),
                 str(v.get("vector_name", "")))
        for v in body.get("vectors") or []
    )  # fmt: skip
    return Profile(model_id, name, vectors, Sampling.from_json(body.get("sampling") or {}), updated_at)


async def set_profile(
    pool: AsyncConnectionPool, tenant_id: str, model_id: str, name: str, vectors: Sequence[Attached],
    sampling: Sampling, resolve: Resolver,
) -> Profile:  # fmt: skip
    """Replace (or create) the model's profile ``name`` ("" default): vectors resolved to ids and checked to fit."""
    name = check_name(name or DEFAULT)
    check_sampling(sampling)
    check_vectors(vectors)
    model = await models.get(pool, tenant_id, model_id)
    resolved = await resolve(model, vectors) if vectors else []
    body = {"sampling": sampling.as_json(), "vectors": [v.as_json() for v in resolved]}
    async with pool.connection() as conn:
        cur = await conn.execute(
            "INSERT INTO profiles (tenant_id, model_id, name, body) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (model_id, name) DO UPDATE SET body = EXCLUDED.body, updated_at = now() "
            "RETURNING updated_at",
            (tenant_id, model.id, name, Jsonb(body)),
        )
        row = await cur.fetchone()
    assert row is not None
    return _profile(model.id, name, body, row[0])


async def find(pool: AsyncConnectionPool, tenant_id: str, model_id: str, name: str) -> Profile | None:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT body, updated_at FROM profiles WHERE tenant_id = %s AND model_id = %s AND name = %s",
            (tenant_id, model_id, name),
        )
        row = await cur.fetchone()
    return None if row is None else _profile(model_id, name, row[0], row[1])


def _missing(model_id: str, name: str) -> NotFound:
    return NotFound(
        f"model {model_id} has no profile {name!r}: list them with `distillery models profile {model_id}`, or set it "
        f"with `distillery models optimize {model_id} --profile {name} ...`",
        field="profile",
    )


async def get_profile(pool: AsyncConnectionPool, tenant_id: str, model_id: str, name: str) -> Profile:
    model = await models.get(pool, tenant_id, model_id)  # another tenant's model is NOT_FOUND
    found = await find(pool, tenant_id, model.id, name or DEFAULT)
    if found is None:
        raise _missing(model.id, name or DEFAULT)
    return found


async def for_snippet(pool: AsyncConnectionPool, tenant_id: str, model: Model, name: str) -> Profile | None:
    """The profile a snippet carries: the one named (NOT_FOUND when missing), else the default when there is one."""
    if name:
        return await get_profile(pool, tenant_id, model.id, name)
    return await find(pool, tenant_id, model.id, DEFAULT)


async def list_profiles(pool: AsyncConnectionPool, tenant_id: str, model_id: str) -> list[Profile]:
    model = await models.get(pool, tenant_id, model_id)
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT name, body, updated_at FROM profiles WHERE tenant_id = %s AND model_id = %s ORDER BY name",
            (tenant_id, model.id),
        )
        rows = await cur.fetchall()
    return [_profile(model.id, name, body, updated_at) for name, body, updated_at in rows]


async def delete_profile(pool: AsyncConnectionPool, tenant_id: str, model_id: str, name: str) -> None:
    model = await models.get(pool, tenant_id, model_id)
    async with pool.connection() as conn:
        cur = await conn.execute(
            "DELETE FROM profiles WHERE tenant_id = %s AND model_id = %s AND name = %s",
            (tenant_id, model.id, name or DEFAULT),
        )
        if cur.rowcount == 0:
            raise _missing(model.id, name or DEFAULT)


@dataclass(frozen=True)
class Overrides:
    """What one request says over the profile (GenerateRequest's fields)."""

    profile: str = ""  # "" the default profile when there is one, "none" none, else a name
    sampling: Sampling = field(default_factory=Sampling)
    vectors: tuple[Attached, ...] = ()
    no_vectors: bool = False
    temperature: float = 0.0  # GenerateRequest.temperature: above 0 wins
    max_new_tokens: int = 0  # GenerateRequest.max_new_tokens: above 0 wins


@dataclass(frozen=True)
class Applied:
    """What a request is answered with: the profile's name ("" none), the sampling and the vectors."""

    profile: str
    sampling: Sampling
    vectors: tuple[Attached, ...]


async def applied(
    pool: AsyncConnectionPool, tenant_id: str, model: Model, asked: Overrides, resolve: Resolver
) -> Applied:
    """The merge rule (module docstring): the profile a request names, with its overrides."""
    check_sampling(asked.sampling)
    check_vectors(asked.vectors)
    profile: Profile | None = None
    if asked.profile != NONE:
        profile = await find(pool, tenant_id, model.id, asked.profile or DEFAULT)
        if profile is None and asked.profile:
            raise _missing(model.id, asked.profile)
    sampling = profile.sampling if profile else Sampling()
    if asked.temperature > 0:
        sampling = Sampling(temperature=asked.temperature).over(sampling)
    if asked.max_new_tokens > 0:
        sampling = replace(sampling, max_tokens=asked.max_new_tokens)
    sampling = asked.sampling.over(sampling)
    check_sampling(sampling)
    if asked.no_vectors and not asked.vectors:
        vectors: tuple[Attached, ...] = ()
    elif asked.vectors:
        vectors = tuple(await resolve(model, asked.vectors))
    else:
        vectors = profile.vectors if profile else ()
    return Applied(profile.name if profile else "", sampling, vectors)
