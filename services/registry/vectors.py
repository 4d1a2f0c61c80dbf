"""Steering vectors of a tenant (docs/optimization.md): rows in ``vectors``, the directions in S3 as safetensors
under ``tenants/<tenant>/vectors/<id>.safetensors``, loaded ones kept in memory.

A vector lives in a base model's hidden space and fits every model trained from that base; names are unique per
tenant and base model. It is computed in this (the registry's) process, in a worker thread, with the model the
request names, loaded by the Generator. The built-in library (``examples/steering/*.jsonl``) is created for a
tenant and base model on first use: listing with a model, or attaching a built-in's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool

from distillery.registry.v1 import registry_pb2
from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.common.objects import ObjectStore, tenant_key
from services.common.protoconv import timestamp
from services.registry import vector_files
from services.registry.generate import Generator, Loaded, is_ocr, is_speech, wrong_kind
from services.registry.models import Model
from services.registry.steering import SteeringVector
from services.registry.tenants import new_id
from services.registry.vector_pairs import check_name, check_pairs, read_pairs

MAX_STRENGTH = 64.0
MAX_FILE_BYTES = 64 * 1024 * 1024
CACHE_SIZE = 256
LIBRARY = Path(__file__).resolve().parents[2] / "examples" / "steering"


@dataclass(frozen=True)
class BuiltIn:
    name: str
    description: str
    # The strength it was checked at on the demo model (SmolLM2-135M-Instruct, its default 10 layers): the
    # directions are raw mean differences, so useful strengths are small (about 0.3 breaks that model).
    suggested_strength: float


BUILT_INS = (
    BuiltIn("concise", "Shorter, more direct answers (negative: longer, more elaborate ones).", 0.15),
    BuiltIn("formal", "A formal, professional register (negative: casual).", 0.2),
    BuiltIn("friendly", "A warm, friendly tone (negative: cold and curt).", 0.1),
)


@dataclass(frozen=True)
class Vector:
    id: str
    tenant_id: str
    name: str
    base_model: str
    hidden_size: int
    layer_count: int
    layers: list[int]
    method: str
    pair_count: int
    built_in: bool
    description: str
    suggested_strength: float
    object_key: str
    created_at: datetime


def vector_pb(v: Vector) -> registry_pb2.Vector:
    """A vector as the RPCs return it."""
    return registry_pb2.Vector(
        id=v.id, tenant_id=v.tenant_id, name=v.name, base_model=v.base_model, hidden_size=v.hidden_size,
        layer_count=v.layer_count, layers=v.layers, method=v.method, pair_count=v.pair_count, built_in=v.built_in,
        description=v.description, created_at=timestamp(v.created_at), suggested_strength=v.suggested_strength,
    )  # fmt: skip


def not_found(ref: str, model: Model | None) -> NotFound:
    where = f" for base model {model.base_model}" if model else ""
    hint = f"distillery vectors list --model {model.id}" if model else "distillery vectors list"
    return NotFound(f"vector {ref!r} not found{where}: see `{hint}`", field="vector_id")


class Vectors:
    """The tenant-scoped store of steering vectors; ``generator`` loads the models they are computed with."""

    def __init__(self, pool: AsyncConnectionPool, store: ObjectStore, generator: Generator) -> None:
        self.pool = pool
        self.store = store
        self.generator = generator
        self._cache: OrderedDict[str, SteeringVector] = OrderedDict()
        self._library_locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def _text_model(self, model: Model, rpc: str) -> Loaded:
        """The text model, loaded by the Generator (which keeps it for Generate too)."""
        if is_speech(model) or is_ocr(model):
            raise wrong_kind(model, rpc)
        return await self.generator.text_model(model, [{"role": "user", "content": "."}], 0, 0.0)

    # --- rows ---

    async def _row(self, tenant_id: str, ref: str, model: Model | None) -> Vector | None:
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(Vector))
            if ref.startswith("vec_"):
                await cur.execute("SELECT * FROM vectors WHERE id = %s AND tenant_id = %s", (ref, tenant_id))
            elif model is not None:
                await cur.execute(
                    "SELECT * FROM vectors WHERE tenant_id = %s AND base_model = %s AND name = %s",
                    (tenant_id, model.base_model, ref),
                )
            else:
                await cur.execute("SELECT * FROM vectors WHERE tenant_id = %s AND name = %s", (tenant_id, ref))
                rows = await cur.fetchall()
                if len(rows) > 1:
                    raise InvalidArgument(
                        f"{len(rows)} vectors are named {ref!r} (one per base model): name the model too (--model)",
                        field="model_id",
                    )
                return rows[0] if rows else None
            return await cur.fetchone()

    async def get(self, tenant_id: str, ref: str, model: Model | None = None) -> Vector:
        """A vector by id, or by name (of ``model``'s base model; a built-in's name creates it)."""
        if not ref:
            raise InvalidArgument("give a vector id or name", field="vector_id")
        found = await self._row(tenant_id, ref, model)
        if found is None and model is not None and any(b.name == ref for b in self.library()):
            await self.ensure_library(tenant_id, model)
            found = await self._row(tenant_id, ref, model)
        if found is None:
            raise not_found(ref, model)
        return found

    async def list_for(self, tenant_id: str, model: Model | None = None) -> list[Vector]:
        if model is not None and not (is_speech(model) or is_ocr(model)):  # speech and OCR models have none
            await self.ensure_library(tenant_id, model)
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(Vector))
            if model is None:
                await cur.execute("SELECT * FROM vectors WHERE tenant_id = %s ORDER BY base_model, name", (tenant_id,))
            else:
                await cur.execute(
                    "SELECT * FROM vectors WHERE tenant_id = %s AND base_model = %s ORDER BY built_in DESC, name",
                    (tenant_id, model.base_model),
                )
            return await cur.fetchall()

    async def _insert(
        self, tenant_id: str, name: str, vector: SteeringVector, pair_count: int, description: str,
        built_in: bool = False, suggested_strength: float = 0.0,
    ) -> Vector:  # fmt: skip
        vector_id = new_id("vec")
        key = tenant_key(tenant_id, "vectors", f"{vector_id}.safetensors")
        data = vector_files.to_safetensors(vector)
        await asyncio.to_thread(self.store.put_bytes, key, data)
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(Vector))
            await cur.execute(
                "INSERT INTO vectors (id, tenant_id, name, base_model, hidden_size, layer_count, layers, method,"
                " pair_count, built_in, description, suggested_strength, object_key)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (tenant_id, base_model, name) DO NOTHING RETURNING *",
                (vector_id, tenant_id, name, vector.base_model, vector.hidden_size, vector.layer_count,
                 sorted(vector.directions), vector.method, pair_count, built_in, description, suggested_strength, key),
            )  # fmt: skip
            row = await cur.fetchone()
        if row is None:
            await asyncio.to_thread(self.store.delete_prefix, key)
            raise AlreadyExists(
                f"a vector named {name!r} exists for base model {vector.base_model}: choose another name, or delete "
                f"it first (`distillery vectors delete {name} --model MODEL`)",
                field="name",
            )
        self._cache[row.id] = vector
        return row

    # --- create, import, export, delete ---

    async def create(
        self, tenant_id: str, model: Model, name: str, pairs: Sequence[tuple[str, str, str]],
        layers: Sequence[int] = (), method: str = "", description: str = "",
    ) -> Vector:  # fmt: skip
        name = check_name(name)
        check_pairs(pairs)
        if method not in ("", "mean_diff", "pca"):
            raise InvalidArgument(f"method is {method!r}: use mean_diff (default) or pca", field="method")
        if await self._row(tenant_id, name, model) is not None:
            raise AlreadyExists(
                f"a vector named {name!r} exists for base model {model.base_model}: choose another name, or delete "
                f"it first (`distillery vectors delete {name} --model {model.id}`)",
                field="name",
            )
        loaded = await self._text_model(model, "CreateVector")
        from services.registry import steering

        vector = await asyncio.to_thread(
            steering.compute_vector, loaded.model, loaded.tokenizer, list(pairs), list(layers), method or "mean_diff",
            model.base_model,
        )  # fmt: skip
        return await self._insert(tenant_id, name, vector, len(pairs), description)

    async def import_file(
        self, tenant_id: str, model: Model, name: str, data: bytes, file_format: str = "", description: str = ""
    ) -> Vector:
        name = check_name(name)
        if not data:
            raise InvalidArgument("data is empty: give the vector file's bytes", field="data")
        if len(data) > MAX_FILE_BYTES:
            raise InvalidArgument(f"the file has {len(data)} bytes: at most {MAX_FILE_BYTES}", field="data")
        found = vector_files.detect(data)
        if file_format and file_format != found:
            raise InvalidArgument(f"format is {file_format!r} but the file is {found}", field="format")
        reader = vector_files.from_gguf if found == vector_files.GGUF else vector_files.from_safetensors
        vector = await asyncio.to_thread(reader, data, model.base_model)
        loaded = await self._text_model(model, "ImportVector")
        from services.registry import steering

        size, count = steering.hidden_size(loaded.model), len(steering.decoder_layers(loaded.model))
        if vector.hidden_size != size or max(vector.directions) >= count:
            raise FailedPrecondition(
                f"the file's vector has hidden size {vector.hidden_size} and layers up to {max(vector.directions)}; "
                f"{model.base_model} has hidden size {size} and {count} layers: import a vector made for this model",
                field="data",
            )
        vector = SteeringVector(vector.directions, size, count, model.base_model, "imported")
        return await self._insert(tenant_id, name, vector, 0, description)

    async def load(self, row: Vector) -> SteeringVector:
        """The vector's directions (from memory, else from S3)."""
        cached = self._cache.get(row.id)
        if cached is None:
            data = await asyncio.to_thread(self.store.get_bytes, row.object_key)
            loaded = await asyncio.to_thread(vector_files.from_safetensors, data, row.base_model)
            cached = SteeringVector(loaded.directions, row.hidden_size, row.layer_count, row.base_model, row.method)
            self._cache[row.id] = cached
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        self._cache.move_to_end(row.id)
        return cached

    async def export(self, row: Vector, file_format: str = "") -> tuple[bytes, str]:
        file_format = file_format or vector_files.SAFETENSORS
        if file_format not in (vector_files.SAFETENSORS, vector_files.GGUF):
            raise InvalidArgument(f"format is {file_format!r}: use safetensors or gguf", field="format")
        vector = await self.load(row)
        if file_format == vector_files.SAFETENSORS:
            return vector_files.to_safetensors(vector), f"{row.name}.safetensors"
        return await asyncio.to_thread(vector_files.to_gguf, vector), f"{row.name}.gguf"

    async def delete(self, tenant_id: str, row: Vector) -> None:
        """Refused while a profile of the tenant attaches the vector (naming the profiles)."""
        async with self.pool.connection() as conn, conn.transaction():
            attached = await self._attached_by(conn, tenant_id, row.id)
            if attached:
                raise FailedPrecondition(
                    f"vector {row.name} ({row.id}) is attached by profile(s) {', '.join(attached)}: detach it "
                    "first (`distillery models optimize MODEL ...` without it), then delete",
                    field="vector_id",
                )
            await conn.execute("DELETE FROM vectors WHERE id = %s AND tenant_id = %s", (row.id, tenant_id))
        self._cache.pop(row.id, None)
        await asyncio.to_thread(self.store.delete_prefix, row.object_key)

    async def _attached_by(self, conn: Any, tenant_id: str, vector_id: str) -> list[str]:
        cur = await conn.execute(
            "SELECT p.model_id || '/' || p.name FROM profiles p WHERE p.tenant_id = %s AND EXISTS"
            " (SELECT 1 FROM jsonb_array_elements(coalesce(p.body->'vectors', '[]'::jsonb)) v"
            " WHERE v->>'vector_id' = %s) ORDER BY 1",
            (tenant_id, vector_id),
        )
        return [r[0] for r in await cur.fetchall()]

    # --- the built-in library ---

    def library(self) -> list[BuiltIn]:
        return [b for b in BUILT_INS if (LIBRARY / f"{b.name}.jsonl").is_file()]

    async def ensure_library(self, tenant_id: str, model: Model) -> None:
        """Create the built-in vectors the tenant does not have yet for ``model``'s base model."""
        lock = self._library_locks.setdefault((tenant_id, model.base_model), asyncio.Lock())
        async with lock:
            async with self.pool.connection() as conn:
                cur = await conn.execute(
                    "SELECT name FROM vectors WHERE tenant_id = %s AND base_model = %s AND built_in",
                    (tenant_id, model.base_model),
                )
                have = {r[0] for r in await cur.fetchall()}
            missing = [b for b in self.library() if b.name not in have]
            if not missing:
                return
            loaded = await self._text_model(model, "ListVectors")
            from services.registry import steering

            for built_in in missing:
                pairs = read_pairs(LIBRARY / f"{built_in.name}.jsonl")
                vector = await asyncio.to_thread(
                    steering.compute_vector, loaded.model, loaded.tokenizer, pairs, None, "mean_diff", model.base_model
                )
                # AlreadyExists: the tenant made its own vector of that name, or another replica was first.
                with contextlib.suppress(AlreadyExists):
                    await self._insert(tenant_id, built_in.name, vector, len(pairs), built_in.description, True,
                                       built_in.suggested_strength)  # fmt: skip


async def attach(vectors: Vectors, tenant_id: str, model: Model, attached: Sequence[Any]) -> list[Any]:
    """Attached vectors (``registry_pb2.AttachedVector``: an id or a name of ``model``'s base model, a strength, a
    layer range) checked to fit ``model``, as ``registry_pb2.AttachedVector`` with the id and the name filled in.
    NotFound names `distillery vectors list --model M`; a built-in's name creates the built-in library."""
    return [(await _found(vectors, tenant_id, model, i, item))[1] for i, item in enumerate(attached)]


async def resolve(
    vectors: Vectors, tenant_id: str, model: Model, attached: Sequence[Any]
) -> list[tuple[SteeringVector, float, int, int]]:
    """Attached vectors (as ``attach`` takes them) as ``steering.steered`` takes them, the tensors loaded (and
    kept in memory)."""
    resolved = []
    for i, item in enumerate(attached):
        row, checked = await _found(vectors, tenant_id, model, i, item)
        resolved.append((await vectors.load(row), checked.strength, checked.first_layer, checked.last_layer))
    return resolved


async def _found(vectors: Vectors, tenant_id: str, model: Model, i: int, item: Any) -> tuple[Vector, Any]:
    ref = item.vector_id or item.vector_name
    strength = float(item.strength)
    if not math.isfinite(strength) or abs(strength) > MAX_STRENGTH:
        raise InvalidArgument(
            f"vectors[{i}].strength is {strength}: use -{MAX_STRENGTH:g} to {MAX_STRENGTH:g}",
            field=f"vectors[{i}].strength",
        )
    row = await vectors.get(tenant_id, ref, model)
    if row.base_model != model.base_model:
        raise FailedPrecondition(
            f"vector {row.name} ({row.id}) was made for base model {row.base_model}, not {model.base_model} "
            f"(model {model.id}): see `distillery vectors list --model {model.id}`",
            field=f"vectors[{i}]",
        )
    first, last = int(item.first_layer), int(item.last_layer)
    if (first or last) and not 0 <= first <= last < row.layer_count:
        raise InvalidArgument(
            f"vectors[{i}] layers {first}-{last}: give 0 <= first_layer <= last_layer < {row.layer_count} "
            "(both 0: all of the vector's layers)",
            field=f"vectors[{i}].first_layer",
        )
    checked = registry_pb2.AttachedVector(
        vector_id=row.id, vector_name=row.name, strength=strength, first_layer=first, last_layer=last
    )
    return row, checked
