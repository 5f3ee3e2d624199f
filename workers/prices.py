"""Dollars per token: ``ORCH_PRICES``, inline JSON or the path of a JSON file, mapping a model to
its price per million input and output tokens::

    {"gpt-4o-mini": {"input_per_mtok": 0.15, "output_per_mtok": 0.60}}

A model with no price keeps its tokens and has a cost of ``None``: a guessed price would make
every report wrong without saying so.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from workers.errors import ConfigError

__all__ = ["ModelPrice", "Prices", "parse_prices"]

#: Tokens per unit of price.
PER_MTOK = 1_000_000


class ModelPrice(BaseModel):
    """One model's price, dollars per million tokens."""

    model_config = ConfigDict(extra="forbid")

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)


class Prices:
    """The price table of this process."""

    def __init__(self, table: dict[str, ModelPrice] | None = None) -> None:
        self.table = dict(table or {})

    def cost_usd(self, model: str | None, input_tokens: int, output_tokens: int) -> float | None:
        """The dollars these tokens cost, or None when the model has no price."""
        price = self.table.get(model) if model else None
        if price is None:
            return None
        return (
            input_tokens * price.input_per_mtok + output_tokens * price.output_per_mtok
        ) / PER_MTOK

    def __contains__(self, model: object) -> bool:
        return model in self.table


@functools.lru_cache(maxsize=8)
def parse_prices(value: str | None) -> Prices:
    """ORCH_PRICES as a Prices table (inline JSON, or a path to a JSON file); ConfigError saying
    what is wrong, never guessing."""
    if not value or not value.strip():
        return Prices()
    text = value.strip()
    if not text.startswith("{"):
        path = Path(text).expanduser()
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(
                f"ORCH_PRICES names a file that cannot be read ({path}: {exc.strerror}); give "
                'inline JSON ({"model": {"input_per_mtok": 0.15, "output_per_mtok": 0.6}}) or '
                "the path of such a file",
                setting="ORCH_PRICES",
            ) from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"ORCH_PRICES is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})",
            setting="ORCH_PRICES",
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError(
            "ORCH_PRICES must be a JSON object: model -> {input_per_mtok, output_per_mtok}",
            setting="ORCH_PRICES",
        )
    table: dict[str, ModelPrice] = {}
    for model, price in raw.items():
        try:
            table[str(model)] = ModelPrice.model_validate(price)
        except ValidationError as exc:
            fields = ", ".join(sorted({str(e["loc"][0]) for e in exc.errors() if e["loc"]}))
            raise ConfigError(
                f"ORCH_PRICES: model {model!r} needs input_per_mtok and output_per_mtok, numbers "
                f">= 0 (problem with: {fields or 'its value'})",
                setting="ORCH_PRICES",
            ) from None
    return Prices(table)
