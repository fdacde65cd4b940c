"""Request bodies, validated strictly: unknown fields and wrong types are rejected, not coerced."""

from __future__ import annotations

import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

PG_INT_MAX = 2**31 - 1
PG_BIGINT_MAX = 2**63 - 1


def _storable(value: str) -> str:
    # PostgreSQL text cannot hold NUL: refuse it here rather than fail in the driver. (Lone
    # surrogates never get this far: the JSON parser rejects them as invalid JSON.)
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _single_line(value: str) -> str:
    if any(not char.isprintable() for char in value):
        raise ValueError("must not contain control characters")
    return value


Text = Annotated[str, AfterValidator(_storable)]
Sku = Annotated[
    str, Field(min_length=1, max_length=64), AfterValidator(_storable), AfterValidator(_single_line)
]
Name = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_storable)]
Cents = Annotated[int, Field(ge=0, le=PG_INT_MAX)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ProductIn(Strict):
    """Body of POST /api/v1/products and PUT /api/v1/products/<id> (a full replacement)."""

    sku: Sku
    name: Name
    description: Annotated[Text, Field(max_length=4000)] = ""
    price_cents: Cents
    stock: Annotated[int, Field(ge=0, le=PG_INT_MAX)]


class OrderItemIn(Strict):
    product_id: Annotated[int, Field(ge=1, le=PG_BIGINT_MAX)]
    quantity: Annotated[int, Field(ge=1, le=10_000)]


class OrderIn(Strict):
    """Body of POST /api/v1/orders."""

    items: Annotated[list[OrderItemIn], Field(min_length=1, max_length=100)]


class SalesReportIn(Strict):
    """Body of POST /api/v1/reports/sales: a range of UTC days, both included ("YYYY-MM-DD")."""

    first_day: datetime.date = Field(alias="from")
    last_day: datetime.date = Field(alias="to")

    @field_validator("last_day")
    @classmethod
    def _not_before_first(cls, value: datetime.date, info: ValidationInfo) -> datetime.date:
        first_day = info.data.get("first_day")
        if first_day is not None and value < first_day:
            raise ValueError("must not be before from")
        return value
