"""What validating a text dataset costs next to merely parsing it.

Writes a 200,000-row pairs JSONL of varied, realistic rows (200-400 bytes each:
quotes, line breaks and a little non-ASCII text among them) to a temporary
directory, then measures, in the same run and over the same file, the rate of:

- baseline: a bare orjson parse of every line (``for line in f: orjson.loads(line)``)
- ingest:   ``text_rows.validate_text`` checking every rule and warning of the
  training page and writing the canonical JSONL to a temporary file

Each is the best of three runs, the two taking turns. It prints both rates and the ratio ingest / baseline.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from services.ingest import text_rows

ROWS = 200_000
RUNS = 3

SYSTEMS = [
    "You are a concise assistant.",
    "You rewrite text in a polite, professional tone.",
    "You are a support agent for a billing product. Answer in two sentences at most.",
    "Classify the ticket as bug, billing, account or other, then explain why in one line.",
    "You translate English into plain French.",
    "Summarise the customer's message for the on-call engineer.",
]
SUBJECTS = ["my invoice", "the export", "our SSO login", "the mobile app", "the weekly report", "a refund", "the API"]
PROBLEMS = ["fails with error 502", "shows the wrong total", "is missing since Tuesday", "takes 40 seconds to load",
            "charged us twice", "logs me out every hour", "returns an empty list"]  # fmt: skip
ASIDES = ["", " We're on the Pro plan.", ' The banner says "try again later".', " Café branch, Zürich office —",
          "\nSteps: open the page, click Export.", " Order #{n}.", " It worked last week!"]  # fmt: skip
ANSWERS = [
    "Thanks for flagging {s}. We have reproduced it and a fix ships on {d}; until then, retry after a minute.",
    "Sorry about {s}. I've opened ticket {n} and refunded the duplicate charge; it shows in 3-5 business days.",
    'Category: bug. The report "{s}" describes a failure in an existing feature (ticket {n}).',
    "Please clear the app cache and sign in again; if {s} still misbehaves, reply with request id {n}.",
]


NAMES = ["Ana", "Bilal", "Chen", "Dana", "Émile", "Farah", "Goran", "Hana", "Ivo", "Jun", "Kofi", "Lena"]


def make_rows(path: Path, rows: int = ROWS, seed: int = 7) -> None:
    rng = random.Random(seed)
    with path.open("wb") as out:
        for n in range(rows):
            subject = rng.choice(SUBJECTS)
            aside = rng.choice(ASIDES).format(n=rng.randint(1000, 99999))
            question = f"Hi team, {subject} {rng.choice(PROBLEMS)}.{aside} Can you help? {rng.choice(NAMES)}"
            answer = rng.choice(ANSWERS).format(
                s=subject, n=rng.randint(10**5, 10**6), d=f"2026-0{rng.randint(1, 9)}-1{n % 10}"
            )
            row = {"system_prompt": rng.choice(SYSTEMS), "input": question, "output": answer}
            out.write(orjson.dumps(row) + b"\n")


def best_rates(measures: list[Callable[[], None]], rows: int) -> list[float]:
    """Rows per second of each measure, the best of RUNS; runs alternate so that both see the same machine."""
    best = [float("inf")] * len(measures)
    for _ in range(RUNS):
        for k, measure in enumerate(measures):
            started = time.perf_counter()
            measure()
            best[k] = min(best[k], time.perf_counter() - started)
    return [rows / seconds for seconds in best]


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        source, canonical = Path(tmp) / "pairs.jsonl", Path(tmp) / "canonical.jsonl"
        make_rows(source)
        size = source.stat().st_size

        def parse() -> None:
            with source.open("rb") as f:
                for line in f:
                    orjson.loads(line)

        def validate() -> None:
            canonical.unlink(missing_ok=True)  # a fresh file, as for an upload
            with source.open("rb") as f, canonical.open("wb") as out:
                report = text_rows.validate_text(f, out, inputs_only=False, csv_format=False)
            if not report.valid or report.rows != ROWS:
                raise SystemExit(f"benchmark file did not validate: {report.to_json()}")

        baseline, ingest = best_rates([parse, validate], ROWS)
        print(f"file: {ROWS} pairs rows, {size / ROWS:.0f} bytes per row on average")
        print(f"orjson parse:      {baseline:,.0f} rows/s")
        print(f"ingest validation: {ingest:,.0f} rows/s")
        print(f"ingest validation / orjson parse ratio: {ingest / baseline:.2f}")


if __name__ == "__main__":
    main()
