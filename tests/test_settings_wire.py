"""Dataclasses that mirror a proto message have the message's fields: the same names, and the same
scalar types. Fast: no service, only the generated descriptors (``Message.DESCRIPTOR.fields``).

A run's ``SftSettings`` / ``GrpoSettings`` arrive as their proto messages and are resolved field by
field into the recipe dataclasses (``resolve_sft`` refuses a name it does not know), and a report's
``Violation`` becomes ``common_pb2.Violation(**asdict(v))``: a field added to one side only would
be refused, or lost, at run time. This test says which field, on which side.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import typing
from typing import Any

import pytest
from google.protobuf.descriptor import FieldDescriptor

import services.trainer.recipes
from distillery.common.v1 import common_pb2
from distillery.trainer.v1 import trainer_pb2
from services.common.reports import Violation
from services.trainer.recipes.grpo_settings import GrpoSettings
from services.trainer.recipes.sft_settings import SftSettings

# (dataclass, the proto message it mirrors)
MIRRORS: list[tuple[type[Any], Any]] = [
    (SftSettings, trainer_pb2.SftSettings),
    (GrpoSettings, trainer_pb2.GrpoSettings),
    (Violation, common_pb2.Violation),
]
SCALARS = {
    FieldDescriptor.CPPTYPE_INT32: int, FieldDescriptor.CPPTYPE_INT64: int, FieldDescriptor.CPPTYPE_UINT32: int,
    FieldDescriptor.CPPTYPE_UINT64: int, FieldDescriptor.CPPTYPE_ENUM: int, FieldDescriptor.CPPTYPE_FLOAT: float,
    FieldDescriptor.CPPTYPE_DOUBLE: float, FieldDescriptor.CPPTYPE_BOOL: bool, FieldDescriptor.CPPTYPE_STRING: str,
}  # fmt: skip


def disagreements(cls: type[Any], message: Any) -> list[str]:
    """What ``cls`` and ``message`` disagree on, one line each: a field on one side only, or a scalar field
    whose Python type is not the message's."""
    wire = {f.name: f for f in message.DESCRIPTOR.fields}
    ours = {f.name: f for f in dataclasses.fields(cls)}
    name = message.DESCRIPTOR.full_name
    problems = [f"{name} has {field}, {cls.__name__} lacks it" for field in sorted(set(wire) - set(ours))]
    problems += [f"{cls.__name__} has {field}, {name} lacks it" for field in sorted(set(ours) - set(wire))]
    hints = typing.get_type_hints(cls)
    for field in sorted(set(wire) & set(ours)):
        descriptor = wire[field]
        wanted = SCALARS.get(descriptor.cpp_type)
        if wanted is None or descriptor.is_repeated:
            continue  # messages and lists: their names are what must match
        if hints[field] is not wanted:
            problems.append(f"{cls.__name__}.{field} is {hints[field]}, {name}.{field} is {wanted.__name__}")
    return problems


@pytest.mark.parametrize(("cls", "message"), MIRRORS, ids=lambda x: getattr(x, "__name__", str(x)))
def test_a_dataclass_has_the_fields_of_the_message_it_mirrors(cls: type[Any], message: Any) -> None:
    problems = disagreements(cls, message)
    assert not problems, "; ".join(problems) + ": add the field to both, or to neither"


def test_a_disagreement_names_the_missing_and_the_extra_field() -> None:
    fields = [(f.name, f.type, f) for f in dataclasses.fields(SftSettings) if f.name != "seed"]
    drifted = dataclasses.make_dataclass("Drifted", [*fields, ("warmup", int, dataclasses.field(default=0))])
    drifted.__annotations__["lora_r"] = float  # a type that is not the wire's
    assert disagreements(drifted, trainer_pb2.SftSettings) == [
        "distillery.trainer.v1.SftSettings has seed, Drifted lacks it",
        "Drifted has warmup, distillery.trainer.v1.SftSettings lacks it",
        "Drifted.lora_r is <class 'float'>, distillery.trainer.v1.SftSettings.lora_r is int",
    ]


def test_every_recipe_settings_dataclass_named_like_a_trainer_message_is_checked() -> None:
    """A new recipe's settings (say ``AsrSettings`` next to a proto ``AsrSettings``) join the check above."""
    messages = set(trainer_pb2.DESCRIPTOR.message_types_by_name)
    checked = {cls for cls, _ in MIRRORS}
    found = []
    for module in pkgutil.iter_modules(services.trainer.recipes.__path__):
        if not module.name.endswith("_settings"):
            continue
        loaded = importlib.import_module(f"services.trainer.recipes.{module.name}")
        found += [
            value
            for value in vars(loaded).values()
            if dataclasses.is_dataclass(value) and isinstance(value, type) and value.__name__ in messages
        ]
    assert {SftSettings, GrpoSettings} <= set(found)
    missing = [cls.__name__ for cls in found if cls not in checked]
    assert not missing, f"add {', '.join(missing)} to MIRRORS with the message each mirrors"
