"""What a parameter may be: the one constraint system of models, tuning and features.

A constraint answers `check(value)` and `describe()` (for the error "The 'factors' parameter of MF must be an int
>= 1. Got 0."). `Interval` and `Options` bound what a model accepts (`Recommender._parameter_constraints`);
`Range` (`Int`, `Float`) and `Choice` are also search dimensions (`Recommender.search_space`): they can
`suggest` a value to an Optuna trial. Torch- and Optuna-free, so model classes declare them at import.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna


@dataclass(frozen=True)
class Interval:
    """An int or float parameter within [low, high] (None = unbounded); `closed_low=False` excludes low."""

    kind: type
    low: float | None = None
    high: float | None = None
    closed_low: bool = True
    none_ok: bool = False

    def check(self, value: Any) -> bool:
        if value is None:
            return self.none_ok
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        if self.kind is int and not isinstance(value, numbers.Integral):
            return False
        if self.low is not None and (value < self.low or (not self.closed_low and value == self.low)):
            return False
        return self.high is None or value <= self.high

    def describe(self) -> str:
        name = "an int" if self.kind is int else "a float"
        parts = []
        if self.low is not None:
            parts.append(f"{'>=' if self.closed_low else '>'} {self.low}")
        if self.high is not None:
            parts.append(f"<= {self.high}")
        return f"{name} {' and '.join(parts)}".strip() + (" or None" if self.none_ok else "")


@dataclass(frozen=True)
class Options:
    """One of `values` (compared with their types: 1 is not True). As a search dimension, a categorical one."""

    values: tuple

    def check(self, value: Any) -> bool:
        return any(type(value) is type(v) and value == v for v in self.values)

    def describe(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        return trial.suggest_categorical(name, list(self.values))


Choice = Options  # the name a search space reads best with
BOOL = Options((True, False))


@dataclass(frozen=True)
class Range:
    """A numeric search dimension: int or float in [low, high], sampled on a log scale when `log`."""

    low: float
    high: float
    log: bool = False
    kind: type = float
    limits: tuple[str, ...] = ()  # edges that are the parameter's own limits ('low', 'high'): never widened

    def __str__(self) -> str:
        return f"[{self.low:g}, {self.high:g}]{' (log)' if self.log else ''}"

    def check(self, value: Any) -> bool:
        return Interval(self.kind, self.low, self.high).check(value)

    def describe(self) -> str:
        return Interval(self.kind, self.low, self.high).describe() + (" (log scale)" if self.log else "")

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        if self.kind is int:
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def at_edge(self, value: float, share: float = 0.05) -> str | None:
        """'low' / 'high' when `value` lies in the outer `share` of the range (on its own scale)."""
        scale = math.log if self.log else (lambda v: v)
        lo, hi = scale(self.low), scale(self.high)
        if hi == lo:
            return None
        pos = (scale(max(value, self.low)) - lo) / (hi - lo)
        side = "low" if pos <= share else "high" if pos >= 1 - share else None
        return None if side in self.limits else side


def Int(low: int, high: int, log: bool = False, limits: tuple[str, ...] = ()) -> Range:
    return Range(low, high, log, int, limits)


def Float(low: float, high: float, log: bool = False, limits: tuple[str, ...] = ()) -> Range:
    return Range(low, high, log, float, limits)
