"""The steering vectors of profiles and requests (``profiles.py``), found in the tenant's vectors (``vectors.py``):
names resolved to ids when a profile is set, and the vectors themselves loaded when a request applies them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg_pool import AsyncConnectionPool

from services.registry import profiles, vectors
from services.registry.models import Model
from services.registry.profile_messages import attached_pb
from services.registry.profiles import Applied, Attached, Overrides


def vector_resolver(store: vectors.Vectors, tenant_id: str) -> profiles.Resolver:
    """Attached vectors (by id or name) of the tenant's, checked to fit the model, with their ids and names."""

    async def resolve(model: Model, attached: Sequence[Attached]) -> list[Attached]:
        found = await vectors.attach(store, tenant_id, model, [attached_pb(a) for a in attached])
        return [
            Attached(f.vector_id, f.strength, f.first_layer, f.last_layer, f.vector_name)
            for f in found
        ]  # fmt: skip

    return resolve


async def steering(store: vectors.Vectors, tenant_id: str, model: Model, attached: Sequence[Attached]) -> list[Any]:
    """The vectors to apply (``steering.steered``'s attachments); none without any attached."""
    if not attached:
        return []
    return list(await vectors.resolve(store, tenant_id, model, [attached_pb(a) for a in attached]))


async def for_request(
    pool: AsyncConnectionPool, store: vectors.Vectors, tenant_id: str, model: Model, asked: Overrides
) -> tuple[Applied, list[Any]]:
    """What a Generate request is answered with (``profiles.applied``), and the vectors loaded to apply."""
    chosen = await profiles.applied(pool, tenant_id, model, asked, vector_resolver(store, tenant_id))
    return chosen, await steering(store, tenant_id, model, chosen.vectors)
