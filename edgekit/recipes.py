"""A quantization recipe: the one value that quantize, calibrate and package pass around."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict

from edgekit.words import Precision

__all__ = ["Recipe", "METHODS"]

METHODS = ("minmax", "entropy", "percentile")


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    precision: Precision
    method: Optional[Literal["minmax", "entropy", "percentile"]] = None
    per_channel: bool = False
    reduce_range: bool = False
    exclude: tuple[str, ...] = ()
    include: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        """A short, stable, human-readable name: int8-static-entropy-pc-rr."""
        parts = [self.precision]
        if self.method:
            parts.append(self.method)
        if self.per_channel:
            parts.append("pc")
        if self.reduce_range:
            parts.append("rr")
        if self.exclude:
            parts.append(f"x{len(self.exclude)}")
        if self.include:
            parts.append(f"i{len(self.include)}")
        return "-".join(parts)

    def record(self) -> dict:
        return self.model_dump(mode="json")
