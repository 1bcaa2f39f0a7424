"""A quantization recipe: the one value that quantize, calibrate and package pass around.

Beyond the precision (edgekit.words.PRECISIONS) and the INT8 options (method, per-channel,
reduce-range, exclude, include), a recipe may carry:

    block_size, accuracy_level, algorithm   the weight-only block recipes (int8-block, int4-block):
                                            weights per block of `block_size` along K, the
                                            MatMulNBits accuracy level (4: INT8 activations per
                                            block, the fast kernel), the algorithm (None = RTN;
                                            minmax-offset: a language model's asymmetric blocks;
                                            minmax-offset-head4: its head at 4 bits too;
                                            minmax-offset-lean: that, less the offsets the
                                            calibration text shows cheapest to drop)
    symmetric                               int8-static: symmetric activations; *-block: symmetric
                                            weights (None: the toolchain's default)
    weight_only                             nodes that, instead of the recipe's INT8, get 8-bit
                                            weight-only blocks (what the search moves a node to
                                            when that mends it at less cost than float)
    kv_cache                                a language model's generation: keep keys and values
                                            ("cache") or recompute the prefix ("recompute")
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, model_serializer

from edgekit.words import Precision

__all__ = ["Recipe", "METHODS", "ALGORITHMS", "KV_CACHE"]

METHODS = ("minmax", "entropy", "percentile")
ALGORITHMS = ("rtn", "minmax-offset", "minmax-offset-head4", "minmax-offset-lean", "hqq", "kquant")
KV_CACHE = ("cache", "recompute")  # how a language model generates: keep keys and values, or rerun the prefix
_LATER = ("block_size", "accuracy_level", "algorithm", "symmetric", "weight_only", "kv_cache")


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    precision: Precision
    method: Optional[Literal["minmax", "entropy", "percentile"]] = None
    per_channel: bool = False
    reduce_range: bool = False
    exclude: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    block_size: Optional[int] = None
    accuracy_level: Optional[int] = None
    algorithm: Optional[Literal["rtn", "minmax-offset", "minmax-offset-head4", "minmax-offset-lean", "hqq",
                                "kquant"]] = None
    symmetric: Optional[bool] = None
    weight_only: tuple[str, ...] = ()
    kv_cache: Optional[Literal["cache", "recompute"]] = None  # language models only

    @property
    def id(self) -> str:
        """A short, stable, human-readable name: int8-static-entropy-pc-rr, int4-block-b32-a4."""
        parts = [self.precision]
        if self.method:
            parts.append(self.method)
        if self.block_size:
            parts.append(f"b{self.block_size}")
        if self.accuracy_level is not None:
            parts.append(f"a{self.accuracy_level}")
        if self.algorithm:
            parts.append(self.algorithm)
        if self.symmetric is not None:
            parts.append("sym" if self.symmetric else "asym")
        if self.per_channel:
            parts.append("pc")
        if self.reduce_range:
            parts.append("rr")
        if self.exclude:
            parts.append(f"x{len(self.exclude)}")
        if self.weight_only:
            parts.append(f"w{len(self.weight_only)}")
        if self.include:
            parts.append(f"i{len(self.include)}")
        if self.kv_cache == "recompute":
            parts.append("recompute")
        return "-".join(parts)

    @model_serializer(mode="wrap")
    def _as_written(self, handler):
        """The options a recipe of before them lacks are left out at their defaults, so that
        older records and manifests read, and are written again, the same."""
        data = handler(self)
        return {k: v for k, v in data.items() if k not in _LATER or v not in (None, (), [])}

    def record(self) -> dict:
        return self.model_dump(mode="json")
