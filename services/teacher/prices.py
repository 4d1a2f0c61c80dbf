"""The one price table: US dollars per million input and output tokens, per teacher.

Costs shown to users (the pre-run estimate, a job's usage, a run's teacher usage) are
all computed here from token counts. A model that is not listed has no known price:
its cost shows as 0 and the estimate says so. "platform" models run on the
deployment's own hardware and cost nothing per token. Update the table when vendors
change their prices; a model id matches the longest listed prefix, so dated
snapshots ("gpt-4.1-mini-2025-04-14") take their family's price.
"""

from __future__ import annotations

# (input, output) dollars per million tokens.
PRICES: dict[str, dict[str, tuple[float, float]]] = {
    "openai": {
        "gpt-5": (1.25, 10.00),
        "gpt-5-mini": (0.25, 2.00),
        "gpt-5-nano": (0.05, 0.40),
        "gpt-4.1": (2.00, 8.00),
        "gpt-4.1-mini": (0.40, 1.60),
        "gpt-4.1-nano": (0.10, 0.40),
        "gpt-4o": (2.50, 10.00),
        "gpt-4o-mini": (0.15, 0.60),
        "o4-mini": (1.10, 4.40),
    },
    "anthropic": {
        "claude-opus-4": (15.00, 75.00),
        "claude-sonnet-4": (3.00, 15.00),
        "claude-haiku-4": (1.00, 5.00),
        "claude-3-5-haiku": (0.80, 4.00),
    },
    "google": {
        "gemini-2.5-pro": (1.25, 10.00),
        "gemini-2.5-flash": (0.30, 2.50),
        "gemini-2.5-flash-lite": (0.10, 0.40),
        "gemini-2.0-flash": (0.10, 0.40),
    },
}


def price_of(provider: str, model: str) -> tuple[float, float] | None:
    """Dollars per million (input, output) tokens; (0, 0) for platform; None when unknown."""
    if provider == "platform":
        return (0.0, 0.0)
    table = PRICES.get(provider, {})
    matches = [name for name in table if model == name or model.startswith(name + "-")]
    return table[max(matches, key=len)] if matches else None


def cost_usd(provider: str, model: str, input_tokens: int, output_tokens: int) -> float:
    price = price_of(provider, model)
    if price is None:
        return 0.0
    return (input_tokens * price[0] + output_tokens * price[1]) / 1_000_000
