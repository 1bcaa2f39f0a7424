"""Target-device profiles: what a device class runs, and the budgets that gate a release.

A profile is a TOML file, validated on load: an unknown key or a wrong type is a
ConfigError naming file and field. A name is looked up in these folders, first match wins:

    --targets-dir DIR (each, in the order given)     "--targets-dir"
    $EDGEKIT_TARGETS_DIR (os.pathsep-separated)       "$EDGEKIT_TARGETS_DIR"
    ./targets, the current project's                  "project"
    $XDG_CONFIG_HOME/edgekit/targets (~/.config/...)  "user"
    the profiles shipped inside the package           "shipped"
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from edgekit._toml import Invalid, pydantic_error_hint, pydantic_error_line, read_toml
from edgekit.errors import ConfigError
from edgekit.target_dirs import (BUILTIN_DIR, profile_files, profile_names, search_dirs, sourced_dirs, sourced_files,
                                 user_dir)
from edgekit.words import PRECISIONS, Precision

__all__ = ["Budgets", "LMWorkload", "Profile", "PRECISIONS", "load_profile", "load_found", "list_profiles", "profile_names", "search_dirs",
           "sourced_dirs", "sourced_files", "user_dir", "BUILTIN_DIR"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Budgets(_Strict):
    """Every budget is optional; each must mean something in its unit (see _check_budget)."""

    max_model_mb: Optional[float] = None          # MiB on disk
    max_peak_rss_mb: Optional[float] = None       # MiB of peak resident memory
    max_latency_ms_p95: Optional[float] = None    # milliseconds, 95th percentile of one sample
    max_accuracy_drop: Optional[float] = None     # fraction of 1, absolute, against FP32
    min_fidelity_cosine: Optional[float] = None   # cosine of the outputs to FP32's, at most 1
    # language models (a profile with an [lm] section)
    max_ppl_increase: Optional[float] = None      # fraction of FP32's perplexity (0.05 = 5% higher)
    min_decode_tokens_per_s: Optional[float] = None  # generated tokens per second, with the profile's prompt
    max_ttft_ms: Optional[float] = None           # milliseconds to the first token (the prompt's prefill)

    @field_validator("*")
    @classmethod
    def _meaningful(cls, value: Optional[float], info: ValidationInfo) -> Optional[float]:
        if value is not None:
            _check_budget(info.field_name, value)
        return value


MAX_ACCURACY_DROP = 0.5  # a larger drop gates nothing: it reads as percentage points meant as a fraction
MAX_PPL_INCREASE = 1.0  # a perplexity twice FP32's is no model; 5 reads as percent meant as a fraction
_SIZES = {"max_model_mb": "a size in MiB", "max_peak_rss_mb": "a memory size in MiB",
          "max_latency_ms_p95": "a p95 latency in milliseconds",
          "min_decode_tokens_per_s": "a speed in generated tokens per second",
          "max_ttft_ms": "a time to the first token in milliseconds"}
LM_BUDGETS = ("max_ppl_increase", "min_decode_tokens_per_s", "max_ttft_ms")


def _check_budget(name: str, value: float) -> None:
    """Invalid naming the budget's unit, when a value cannot mean what was meant."""
    shown = f"{name} = {value:g}"
    if name in _SIZES and not value > 0:
        raise Invalid(f"{shown} is {_SIZES[name]} and can never be met",
                      hint="give a positive number, or leave the budget out")
    if name == "max_accuracy_drop" and not 0 <= value <= MAX_ACCURACY_DROP:
        raise Invalid(f"{shown} is a fraction of 1 (0.01 = 1 percentage point)",
                      hint=f"give 0 to {MAX_ACCURACY_DROP:g}, e.g. 0.01 for a drop of at most 1 pp")
    if name == "max_ppl_increase" and not 0 <= value <= MAX_PPL_INCREASE:
        raise Invalid(f"{shown} is a fraction of FP32's perplexity (0.05 = 5% higher)",
                      hint=f"give 0 to {MAX_PPL_INCREASE:g}, e.g. 0.05 for at most 5% higher")
    if name == "min_fidelity_cosine" and not 0 < value <= 1:
        raise Invalid(f"{shown} is a cosine similarity to the FP32 outputs (1: the same direction, "
                      "0: unrelated)", hint="give more than 0 and at most 1, e.g. 0.99")


class LMWorkload(_Strict):
    """A language model's workload: what the cache holds and what one request asks."""

    context: int = Field(gt=1)          # tokens the KV cache holds: prompt + generated
    prompt_tokens: int = Field(gt=0)    # a request's prompt (prefill, time to the first token)
    generate_tokens: int = Field(gt=0)  # tokens generated per request (decode speed)
    kv_cache: Literal["auto", "cache", "recompute"] = "auto"  # auto: calibrate measures both, budgets choose

    @model_validator(mode="after")
    def _fits(self) -> "LMWorkload":
        if self.prompt_tokens + self.generate_tokens > self.context:
            raise Invalid(f"prompt_tokens + generate_tokens = {self.prompt_tokens + self.generate_tokens} "
                          f"do not fit context = {self.context}",
                          hint="give a context at least as long as a prompt and its answer")
        return self


class Profile(_Strict):
    name: str
    description: str = ""
    arch: Literal["aarch64", "armv7l", "x86_64"]
    cpu: str = ""
    memory_mb: int = Field(gt=0)
    runtime: Literal["onnxruntime", "tflite"]
    runtime_version: Optional[str] = None
    precisions: list[Precision] = Field(min_length=1)
    per_channel: bool = True
    reduce_range: bool = False
    threads: int = Field(default=0, ge=0)
    providers: list[str] = ["CPUExecutionProvider"]
    objective: Literal["latency", "size", "memory"] = "latency"
    budgets: Budgets = Budgets()
    lm: Optional[LMWorkload] = None  # a language-model workload: edgekit.toolchains.lm serves the profile

    @model_validator(mode="after")
    def _lm_budgets(self) -> "Profile":
        given = [b for b in LM_BUDGETS if getattr(self.budgets, b) is not None]
        if given and self.lm is None:
            raise Invalid(f"budgets.{given[0]} judges a language model, and the profile has no [lm] section",
                          hint="add [lm] with context, prompt_tokens and generate_tokens, or leave the budget out")
        return self

    def snapshot(self) -> dict:
        """The profile as recorded in calibration records and bundle manifests."""
        return self.model_dump(mode="json")


def load_file(path: Path) -> Profile:
    data = read_toml(path)
    data.setdefault("name", path.stem)
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(pydantic_error_line(path, exc), hint=pydantic_error_hint(exc)) from exc


def _looks_like_path(spec: str) -> bool:
    return spec.endswith(".toml") or os.sep in spec or "/" in spec


def load_profile(spec: str | Path, targets_dirs: list[Path] | tuple[Path, ...] = ()) -> Profile:
    """A profile by name (looked up in the targets folders) or by path to a TOML file."""
    spec = str(spec)
    if _looks_like_path(spec):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ConfigError(f"target profile {spec}: file not found")
        return load_file(path)
    for d in search_dirs(targets_dirs):
        candidate = d / f"{spec}.toml"
        if candidate.is_file():
            return load_found(candidate)
    known = ", ".join(profile_names(targets_dirs)) or "none"
    raise ConfigError(f"unknown target '{spec}' (known: {known}; or give a path to a .toml file)")


def list_profiles(targets_dirs: list[Path] | tuple[Path, ...] = ()) -> list[tuple[Path, Profile]]:
    """Every profile in the search folders; a broken file raises ConfigError naming it."""
    return [(p, load_found(p)) for p in profile_files(targets_dirs)]


def load_found(path: Path) -> Profile:
    """A profile found in a targets folder: found by its file's name, so it must bear that name
    (a bundle and an inventory name the profile by it)."""
    profile = load_file(path)
    if profile.name != path.stem:
        raise ConfigError(f"{path}: field 'name': '{profile.name}' is not the file's name '{path.stem}'; a profile "
                          "is found by its file name, and bundles and inventories name it by its 'name'",
                          hint=f"rename the file {profile.name}.toml, or set name = \"{path.stem}\"")
    return profile
