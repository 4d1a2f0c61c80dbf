"""Profiles (``profiles.py``) between their proto messages and the domain's values: the servicer's conversions."""

from __future__ import annotations

from collections.abc import Iterable

from distillery.registry.v1 import registry_pb2
from services.common.protoconv import timestamp
from services.registry.profiles import Applied, Attached, Overrides, Profile, Sampling

_OPTIONAL = ("strategy", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_tokens")


def sampling_of(message: registry_pb2.Sampling) -> Sampling:
    """The fields set (``optional`` fields present; stop strings given)."""
    given = {name: getattr(message, name) for name in _OPTIONAL if message.HasField(name)}  # type: ignore[arg-type]
    return Sampling(**given, stop=tuple(message.stop))


def sampling_pb(s: Sampling) -> registry_pb2.Sampling:
    given = {name: getattr(s, name) for name in _OPTIONAL if getattr(s, name) is not None}
    return registry_pb2.Sampling(**given, stop=list(s.stop))


def attached_of(messages: Iterable[registry_pb2.AttachedVector]) -> tuple[Attached, ...]:
    """On input a vector is named by id or by name: either goes in ``vector_id`` until it is resolved."""
    return tuple(
        Attached(m.vector_id or m.vector_name, m.strength, m.first_layer, m.last_layer, m.vector_name) for m in messages
    )


def attached_pb(a: Attached) -> registry_pb2.AttachedVector:
    return registry_pb2.AttachedVector(
        vector_id=a.vector_id, vector_name=a.vector_name, strength=a.strength, first_layer=a.first_layer,
        last_layer=a.last_layer,
    )  # fmt: skip


def profile_pb(p: Profile) -> registry_pb2.Profile:
    return registry_pb2.Profile(
        model_id=p.model_id, name=p.name, vectors=[attached_pb(a) for a in p.vectors],
        sampling=sampling_pb(p.sampling), updated_at=timestamp(p.updated_at),
    )  # fmt: skip


def overrides_of(request: registry_pb2.GenerateRequest) -> Overrides:
    return Overrides(
        profile=request.profile, sampling=sampling_of(request.sampling), vectors=attached_of(request.vectors),
        no_vectors=request.no_vectors, temperature=request.temperature, max_new_tokens=request.max_new_tokens,
    )  # fmt: skip


def applied_into(response: registry_pb2.GenerateResponse, applied: Applied, made_with: Sampling) -> None:
    """GenerateResponse's report of the profile, the settings the answer was made with and the vectors."""
    response.profile = applied.profile
    response.sampling.CopyFrom(sampling_pb(made_with))
    response.vectors.extend(attached_pb(a) for a in applied.vectors)
