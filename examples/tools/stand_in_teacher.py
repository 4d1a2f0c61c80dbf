"""The template stand-in teacher: tool-calling trajectories written from templates, for `make distill-tools`.

A STAND-IN, NOT A MODEL. On the distill-tools path a large teacher model writes the
trajectories a student learns from. The local demo has no outside key, and the stack's
own platform model (SmolLM2-135M) cannot call tools, so this module stands in for that
teacher: it fills phrasing templates with cities, amounts and dates drawn from a seeded
random generator, makes the call a good teacher would make, simulates the tool's result
and writes a short final answer. The output is a tool-calls dataset in the OpenAI
fine-tuning format (one ``{"messages": [...], "tools": [...]}`` per line), the same kind
a real teacher's trajectories are stored as.

Four tools with compact schemas (every training example carries them in its prompt, and
CPU step time grows with its length): ``get_weather(city, units?)``, ``get_time(city)``,
``convert_currency(amount, from, to)`` and ``search_flights(origin,
destination, date)``. The call's arguments follow from the request alone: ``units`` only
when the user names Celsius or Fahrenheit, currencies as ISO codes whether the user says
"USD" or "dollars", dates as written (ISO). About a fifth of the requests want no tool
(arithmetic, capitals, translations, thanks) and are answered in text.

A call row is user -> assistant call -> tool result -> short final answer; a no-call row
is user -> assistant text. Every call is checked with ``services.common.tool_calls.check_call``
before it is written, and no request text repeats, so the held-out split (keyed by
request) holds requests the student never saw. Same seed, same file.

    python -m examples.tools.stand_in_teacher OUT.jsonl [--rows 240] [--seed 7]
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.common.tool_calls import Call, check_call, tools_by_name

NAME = "template stand-in teacher (no model: phrasing templates, seeded)"
DEFAULT_ROWS, DEFAULT_SEED = 240, 7
NO_CALL_SHARE = 0.2


def _tool(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    parameters = {"type": "object", "properties": properties, "required": required}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


CURRENCIES = {"USD": "dollars", "EUR": "euros", "GBP": "pounds", "JPY": "yen"}
_CODES = {"type": "string", "enum": list(CURRENCIES)}
TOOLS = [
    _tool("get_weather", "Current weather in a city.",
          {"city": {"type": "string"}, "units": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, ["city"]),
    _tool("get_time", "Current local time in a city.", {"city": {"type": "string"}}, ["city"]),
    _tool("convert_currency", "Convert an amount between currencies.",
          {"amount": {"type": "number"}, "from": _CODES, "to": _CODES}, ["amount", "from", "to"]),
    _tool("search_flights", "Find flights on a date (YYYY-MM-DD).",
          {"origin": {"type": "string"}, "destination": {"type": "string"}, "date": {"type": "string"}},
          ["origin", "destination", "date"]),
]  # fmt: skip
BY_NAME = tools_by_name(TOOLS)

CITIES = [
    "Paris", "London", "Tokyo", "New York", "Berlin", "Madrid", "Rome", "Lisbon", "Dublin", "Oslo", "Stockholm",
    "Helsinki", "Vienna", "Prague", "Warsaw", "Budapest", "Athens", "Istanbul", "Cairo", "Nairobi", "Lagos",
    "Cape Town", "Dubai", "Mumbai", "Delhi", "Bangkok", "Singapore", "Seoul", "Beijing", "Shanghai", "Sydney",
    "Melbourne", "Auckland", "Toronto", "Vancouver", "Chicago", "Boston", "Seattle", "Denver", "Miami",
    "Mexico City", "Lima", "Bogota", "Santiago", "Buenos Aires", "Sao Paulo", "Reykjavik", "Zurich", "Amsterdam",
    "Brussels", "Copenhagen", "Edinburgh", "Marrakesh", "Hanoi", "Manila", "Jakarta", "Osaka", "Montreal",
    "Havana", "Casablanca",
]  # fmt: skip
CONDITIONS = ["sunny", "cloudy", "light rain", "clear", "windy", "foggy", "snowing", "partly cloudy"]
CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid", "Kenya": "Nairobi",
            "Peru": "Lima", "Norway": "Oslo", "Egypt": "Cairo", "Canada": "Ottawa", "Australia": "Canberra",
            "Portugal": "Lisbon", "Greece": "Athens"}  # fmt: skip
WORDS = {"hello": {"Spanish": "hola", "French": "bonjour", "German": "hallo", "Italian": "ciao"},
         "thank you": {"Spanish": "gracias", "French": "merci", "German": "danke", "Italian": "grazie"},
         "good night": {"Spanish": "buenas noches", "French": "bonne nuit", "German": "gute Nacht",
                        "Italian": "buona notte"}}  # fmt: skip
RATES_TO_USD = {"USD": 1.0, "EUR": 1.08, "GBP": 1.27, "JPY": 0.0067}

# (user text, call arguments, tool result, final answer); each maker draws its own values from `rng`.
Turns = tuple[str, dict[str, Any], dict[str, Any], str]


def weather(rng: random.Random) -> Turns:
    city = rng.choice(CITIES)
    units = rng.choice([None, None, "celsius", "fahrenheit"])
    asks = ["What's the weather in {c}?", "How is the weather in {c} right now?", "Is it raining in {c}?",
            "Weather for {c}, please.", "What's it like outside in {c} today?", "Check the weather in {c}.",
            "Do I need a jacket in {c} today?", "Tell me the current weather in {c}."]  # fmt: skip
    unit_asks = ["What's the temperature in {c} in {u}?", "Weather in {c}, in {u} please.",
                 "How warm is it in {c}? Give it in {u}.", "Current weather in {c} in {u}?",
                 "Tell me the weather in {c} using {u}."]  # fmt: skip
    text = rng.choice(unit_asks if units else asks).format(c=city, u=(units or "").capitalize())
    arguments: dict[str, Any] = {"city": city} | ({"units": units} if units else {})
    shown = units or "celsius"
    degrees = rng.randint(-5, 34) if shown == "celsius" else rng.randint(23, 93)
    condition = rng.choice(CONDITIONS)
    result = {"city": city, "temperature": degrees, "units": shown, "conditions": condition}
    mark = "C" if shown == "celsius" else "F"
    return text, arguments, result, f"It is {degrees}°{mark} and {condition} in {city}."


def local_time(rng: random.Random) -> Turns:
    city = rng.choice(CITIES)
    asks = ["What time is it in {c}?", "What's the local time in {c}?", "Current time in {c}?",
            "Tell me the time in {c}.", "Is it late in {c} right now?", "What hour is it in {c} at the moment?",
            "Could you check the time in {c}?"]  # fmt: skip
    hour, minute = rng.randint(0, 23), rng.choice(range(0, 60, 5))
    clock = f"{hour:02d}:{minute:02d}"
    result = {"city": city, "time": clock}
    return rng.choice(asks).format(c=city), {"city": city}, result, f"It is {clock} in {city}."


def currency(rng: random.Random) -> Turns:
    source, target = rng.sample(list(CURRENCIES), 2)
    amount: float = rng.choice([rng.randint(5, 2000), round(rng.uniform(1, 500), 2)])
    shown = f"{amount:g}"

    def said(code: str) -> str:
        return code if rng.random() < 0.5 else CURRENCIES[code]

    asks = ["Convert {a} {f} to {t}.", "How much is {a} {f} in {t}?", "What are {a} {f} worth in {t}?",
            "Change {a} {f} into {t}, please.", "I have {a} {f}. How many {t} is that?",
            "{a} {f} to {t}?"]  # fmt: skip
    text = rng.choice(asks).format(a=shown, f=said(source), t=said(target))
    converted = round(amount * RATES_TO_USD[source] / RATES_TO_USD[target], 2)
    arguments = {"amount": amount, "from": source, "to": target}
    result = {"amount": amount, "from": source, "to": target, "converted": converted}
    return text, arguments, result, f"{shown} {source} is about {converted:g} {target}."


def flights(rng: random.Random) -> Turns:
    origin, destination = rng.sample(CITIES, 2)
    date = f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    asks = ["Find flights from {o} to {d} on {t}.", "Are there flights from {o} to {d} on {t}?",
            "I need to fly {o} to {d} on {t}.", "Search flights {o} -> {d}, {t}.",
            "Show me flights to {d} from {o} on {t}.", "Book-able flights on {t} from {o} to {d}?",
            "On {t} I want to go from {o} to {d}. Any flights?"]  # fmt: skip
    text = rng.choice(asks).format(o=origin, d=destination, t=date)
    count, price = rng.randint(1, 9), rng.randint(60, 900)
    arguments = {"origin": origin, "destination": destination, "date": date}
    result = {"flights": count, "cheapest_usd": price}
    return text, arguments, result, f"I found {count} flights from {origin} to {destination} on {date}, from ${price}."


def no_tool(rng: random.Random) -> tuple[str, str]:
    """A request no tool fits, and its text answer."""
    kind = rng.randrange(5)
    if kind == 0:
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        op, word, value = rng.choice([("+", "plus", a + b), ("-", "minus", a - b), ("*", "times", a * b)])
        ask = rng.choice(["What is {a} {w} {b}?", "Calculate {a} {o} {b}.", "Quick math: {a} {o} {b}?"])
        return ask.format(a=a, b=b, w=word, o=op), f"{a} {word} {b} is {value}."
    if kind == 1:
        country = rng.choice(list(CAPITALS))
        ask = rng.choice(["What is the capital of {c}?", "Which city is the capital of {c}?", "Capital of {c}?"])
        return ask.format(c=country), f"The capital of {country} is {CAPITALS[country]}."
    if kind == 2:
        word = rng.choice(list(WORDS))
        language = rng.choice(list(WORDS[word]))
        ask = rng.choice(["How do you say '{w}' in {l}?", "Translate '{w}' into {l}.", "'{w}' in {l}?"])
        return ask.format(w=word, l=language), f"'{word.capitalize()}' in {language} is '{WORDS[word][language]}'."
    if kind == 3:
        ask = rng.choice(["Thanks, that's all!", "Thank you so much.", "Great, thanks for the help.", "Cheers!",
                          "Perfect, thank you.", "Thanks a lot!"])  # fmt: skip
        return ask, "You're welcome! Let me know if you need anything else."
    ask = rng.choice(["What can you do?", "What can you help me with?", "Hi! What are you able to do?",
                      "Hello there.", "Good morning!", "Who are you?"])  # fmt: skip
    return ask, "Hello! I can check the weather, tell the local time, convert currencies and search for flights."


# Tool name -> the maker of its requests; call requests take turns between the tools.
MAKERS: dict[str, Callable[[random.Random], Turns]] = {
    "get_weather": weather, "get_time": local_time, "convert_currency": currency, "search_flights": flights,
}  # fmt: skip


def call_row(turns: Turns, name: str, number: int) -> dict[str, Any]:
    text, arguments, result, answer = turns
    problems = check_call(Call(name, arguments), BY_NAME)
    if problems:  # a template bug: never write a call the tool would refuse
        raise ValueError(f"the stand-in teacher made an invalid {name} call {arguments}: {problems}")
    call_id = f"call_{number}"
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}
    messages = [
        {"role": "user", "content": text},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call_id, "content": json.dumps(result)},
        {"role": "assistant", "content": answer},
    ]
    return {"messages": messages, "tools": TOOLS}


def trajectories(rows: int = DEFAULT_ROWS, seed: int = DEFAULT_SEED) -> list[dict[str, Any]]:
    """``rows`` verified trajectories with distinct requests, the same for the same seed."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    attempts = 0
    while len(out) < rows:
        attempts += 1
        if attempts > rows * 50:
            raise ValueError(f"could not write {rows} distinct requests from the templates")
        if rng.random() < NO_CALL_SHARE:
            text, answer = no_tool(rng)
            row = {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": answer}],
                   "tools": TOOLS}  # fmt: skip
        else:
            name = list(MAKERS)[len(out) % len(MAKERS)]
            row = call_row(MAKERS[name](rng), name, len(out) + 1)
            text = row["messages"][0]["content"]
        key = " ".join(text.casefold().split())
        if key in seen:
            continue
        seen.add(key)
        out.append(row)
    return out


def write(path: Path, rows: int = DEFAULT_ROWS, seed: int = DEFAULT_SEED) -> int:
    """Write the trajectories to ``path`` as JSONL; returns how many."""
    lines = [json.dumps(row, ensure_ascii=False) for row in trajectories(rows, seed)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=NAME)
    parser.add_argument("out", type=Path)
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args()
    print(f"{NAME}: wrote {write(args.out, args.rows, args.seed)} trajectories to {args.out}")


if __name__ == "__main__":
    main()
