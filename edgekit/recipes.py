"""A quantization recipe: the one value that quantize, calibrate and package pass around."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, model_serializer

from edgekit.words import Precision

__all__ = ["Recipe", "METHODS", "BLOCK_METHODS", "KV_CACHE"]

METHODS = ("minmax", "entropy", "percentile")  # int8-static's calibrators
BLOCK_METHODS = ("rtn", "minmax-offset", "hqq", "k-quant")  # weight-only blocks (edgekit.toolchains.lm)
KV_CACHE = ("cache", "recompute")  # how a language model generates: keep keys and values, or rerun the prefix


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    precision: Precision
    method: Optional[Literal["minmax", "entropy", "percentile", "rtn", "minmax-offset", "hqq", "k-quant"]] = None
    per_channel: bool = False
    reduce_range: bool = False
    exclude: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    block_size: Optional[int] = None  # weight-only blocks: weights per scale
    kv_cache: Optional[Literal["cache", "recompute"]] = None  # language models only

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
        if self.block_size:
            parts.append(f"b{self.block_size}")
        if self.kv_cache == "recompute":
            parts.append("recompute")
        return "-".join(parts)

    @model_serializer(mode="wrap")
    def _as_kind(self, handler):
        """A language model's block size and cache mode are written only where they are set,
        so every other recipe reads as it always has."""
        return {k: v for k, v in handler(self).items() if k not in _LM_ONLY or v is not None}

    def record(self) -> dict:
        return self.model_dump(mode="json")


_LM_ONLY = ("block_size", "kv_cache")
