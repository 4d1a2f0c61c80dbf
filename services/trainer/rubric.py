"""Rubrics: a named set of weighted criteria that score a model's answers, read from a YAML or JSON file.

    name: support-replies
    description: Replies to support tickets.
    criteria:
      - name: cites_ticket
        kind: regex
        weight: 1
        params: {pattern: 'TICKET-\\d+'}
      - name: helpful
        kind: judge
        weight: 2
        params: {judge: "platform:smollm2", scale: {min: 1, max: 5}, instructions: "The reply solves the problem."}

The kinds of criteria and their ``params`` are ``rubric_kinds.py``'s (exact_match, regex, json_schema,
json_field, numeric, similarity, tool_call, judge), with the judge's fixed prompt, recorded in ``to_dict``.

Light: no torch, transformers or ray; the trainer service parses rubrics with it. A bad file is
INVALID_ARGUMENT naming the criterion and the field (``criteria[2].params.pattern``). Scoring is
``graders.py``'s.
"""

from __future__ import annotations

import re
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

import yaml

from services.common.errors import InvalidArgument
from services.common.tool_calls import load_json
from services.trainer.rubric_kinds import (
    JUDGE_PROMPT_VERSION,
    JUDGE_USER_TEMPLATE,
    KINDS,
    MAX_PATTERN_CHARS,
    Judge,
    Params,
)

# Re-exported: what a rubric's users read from here.
__all__ = ["JUDGE_PROMPT_VERSION", "JUDGE_USER_TEMPLATE", "MAX_PATTERN_CHARS", "Criterion", "Rubric", "parse_rubric"]

MAX_FILE_CHARS = 256 * 1024
MAX_VALUES = 20_000  # values in a rubric file, an alias counted each time it is used
MAX_DEPTH = 32
MAX_CRITERIA = 32
MAX_DESCRIPTION_CHARS = 2000
MAX_WEIGHT = 1000.0
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class Criterion:
    name: str = field(metadata={"help": "Unique in the rubric: letters, digits, '_', '-', '.'; at most 64."})
    kind: str = field(metadata={"help": f"One of {', '.join(KINDS)}."})
    params: Any = field(default=None, metadata={"help": "The kind's settings (a mapping, or its Params)."})
    weight: float = field(default=1.0, metadata={"help": f"Its share of the total, > 0 and <= {MAX_WEIGHT:g}."})

    # judge_prompt: as ``to_dict`` records it; read back, it is left aside (the prompt is the code's, by version).
    FIELDS: ClassVar[tuple[str, ...]] = ("name", "kind", "weight", "params", "judge_prompt")

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise InvalidArgument(f"name {str(self.name)[:60]!r} is not a criterion name: letters, digits, '_', '-' "
                                  "and '.', at most 64, e.g. cites_ticket", field="name")  # fmt: skip
        if not isinstance(self.kind, str) or self.kind not in KINDS:
            raise InvalidArgument(f"kind {str(self.kind)[:40]!r} is not one: use {', '.join(KINDS)}", field="kind")
        weight = self.weight
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 < weight <= MAX_WEIGHT:
            raise InvalidArgument(f"weight must be a number > 0 and <= {MAX_WEIGHT:g} (got {str(weight)[:40]})",
                                  field="weight")  # fmt: skip
        object.__setattr__(self, "weight", float(weight))
        if not isinstance(self.params, Params):
            object.__setattr__(self, "params", _params(KINDS[self.kind], self.params, self.kind))

    @property
    def is_judge(self) -> bool:
        return self.kind == "judge"

    def to_dict(self) -> dict[str, Any]:
        params = {f.name: getattr(self.params, f.name) for f in fields(self.params) if f.init}
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "weight": self.weight, "params": params}
        if isinstance(self.params, Judge):
            params["scale"] = {"min": self.params.scale[0], "max": self.params.scale[1]}
            out["judge_prompt"] = {"version": JUDGE_PROMPT_VERSION, "system": self.params.system_prompt(),
                                   "user_template": JUDGE_USER_TEMPLATE}  # fmt: skip
        return out


def _params(cls: type[Params], raw: Any, kind: str) -> Params:
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise InvalidArgument(f"params must be a mapping of {kind}'s settings", field="params")
    known = {f.name: f for f in fields(cls) if f.init}  # type: ignore[arg-type]
    for key in raw:
        if key not in known:
            raise InvalidArgument(f"params.{str(key)[:40]} is not a setting of {kind}: its settings are "
                                  f"{', '.join(known) or 'none'}", field=f"params.{str(key)[:40]}")  # fmt: skip
    for name, f in known.items():
        if name not in raw and f.default is MISSING and f.default_factory is MISSING:
            raise InvalidArgument(f"params.{name} is required: {f.metadata.get('help', '')}", field=f"params.{name}")
    return cls(**raw)


@dataclass(frozen=True)
class Rubric:
    name: str = field(metadata={"help": "The rubric's name: letters, digits, '_', '-', '.'; at most 64."})
    criteria: tuple[Criterion, ...] = field(metadata={"help": f"1 to {MAX_CRITERIA} criteria, names unique."})
    description: str = field(default="", metadata={"help": f"What it checks, at most {MAX_DESCRIPTION_CHARS}."})

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise InvalidArgument(f"name {str(self.name)[:60]!r} is not a rubric name: letters, digits, '_', '-' and "
                                  "'.', at most 64, e.g. support-replies", field="name")  # fmt: skip
        if not isinstance(self.description, str) or len(self.description) > MAX_DESCRIPTION_CHARS:
            raise InvalidArgument(f"description must be text of at most {MAX_DESCRIPTION_CHARS} characters",
                                  field="description")  # fmt: skip
        if not 1 <= len(self.criteria) <= MAX_CRITERIA:
            raise InvalidArgument(f"criteria has {len(self.criteria)} entries: give 1 to {MAX_CRITERIA}",
                                  field="criteria")  # fmt: skip
        seen: set[str] = set()
        for i, criterion in enumerate(self.criteria):
            if criterion.name in seen:
                raise InvalidArgument(f"criteria[{i}] ({criterion.name!r}): another criterion has this name: give "
                                      "each its own", field=f"criteria[{i}].name")  # fmt: skip
            seen.add(criterion.name)

    @property
    def judges(self) -> list[tuple[int, Criterion]]:
        return [(i, c) for i, c in enumerate(self.criteria) if c.is_judge]

    def to_dict(self) -> dict[str, Any]:
        """As stored and shown: every setting resolved, and each judge criterion's full prompt."""
        return {"name": self.name, "description": self.description,
                "criteria": [c.to_dict() for c in self.criteria]}  # fmt: skip

    @classmethod
    def from_dict(cls, raw: Any) -> Rubric:
        if not isinstance(raw, dict):
            raise InvalidArgument("a rubric is a mapping with name, description and criteria", field="")
        for key in raw:
            if key not in ("name", "description", "criteria"):
                raise InvalidArgument(f"{str(key)[:40]!r} is not a rubric field: use name, description, criteria",
                                      field=str(key)[:40])  # fmt: skip
        items = raw.get("criteria")
        if not isinstance(items, list) or not items:
            raise InvalidArgument("criteria must be a list of criteria (each with name, kind, weight, params)",
                                  field="criteria")  # fmt: skip
        if len(items) > MAX_CRITERIA:
            raise InvalidArgument(f"criteria has {len(items)} entries: give 1 to {MAX_CRITERIA}", field="criteria")
        criteria = []
        for i, item in enumerate(items):
            label = repr(str(item.get("name"))[:64]) if isinstance(item, dict) and "name" in item else "(no name)"
            try:
                if not isinstance(item, dict):
                    raise InvalidArgument("a criterion is a mapping with name, kind, weight and params", field="")
                unknown = [str(k)[:40] for k in item if k not in Criterion.FIELDS]
                if unknown:
                    raise InvalidArgument(f"{unknown[0]!r} is not a criterion field: use name, kind, weight, params",
                                          field=unknown[0])  # fmt: skip
                missing = [k for k in ("name", "kind") if k not in item]
                if missing:
                    raise InvalidArgument(f"{missing[0]} is required", field=missing[0])
                criteria.append(Criterion(**{k: v for k, v in item.items() if k != "judge_prompt"}))
            except InvalidArgument as err:
                where = f"criteria[{i}]" + (f".{err.field}" if err.field else "")
                raise InvalidArgument(f"criteria[{i}] {label}: {err.message}", field=where) from None
        return cls(raw.get("name"), tuple(criteria), raw.get("description", "") or "")  # type: ignore[arg-type]


def parse_rubric(text: str) -> Rubric:
    """A rubric from a file's text: JSON (it starts with '{') or YAML; INVALID_ARGUMENT naming what is wrong."""
    if len(text) > MAX_FILE_CHARS:
        raise InvalidArgument(f"the rubric file is {len(text)} characters long: give at most {MAX_FILE_CHARS}",
                              field="rubric")  # fmt: skip
    if text.lstrip().startswith("{"):
        raw, error = load_json(text)
        if error:
            raise InvalidArgument(f"the rubric file is not JSON ({error.replace('_', ' ')})", field="rubric")
    else:
        try:
            raw = yaml.safe_load(text)
        except RecursionError:
            raise InvalidArgument("the rubric file nests too deeply", field="rubric") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise InvalidArgument(f"the rubric file is neither JSON nor YAML{where}: {getattr(err, 'problem', err)}",
                                  field="rubric") from None  # fmt: skip
    _check_size(raw)
    return Rubric.from_dict(raw)


def _check_size(value: Any) -> None:
    """At most ``MAX_VALUES`` values (YAML aliases counted at every use) nested at most ``MAX_DEPTH`` deep."""
    count, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        count += 1
        if count > MAX_VALUES or depth > MAX_DEPTH:
            raise InvalidArgument(f"the rubric file holds too much: at most {MAX_VALUES} values, {MAX_DEPTH} deep",
                                  field="rubric")  # fmt: skip
        if isinstance(item, dict):
            stack += [(v, depth + 1) for v in item.values()]
        elif isinstance(item, list):
            stack += [(v, depth + 1) for v in item]
