"""Values Envoy lets the runtime override: `type.v3.FractionalPercent` (and its draw),
`config.core.v3.RuntimeFractionalPercent` and `config.core.v3.RuntimeFeatureFlag`.

A FractionalPercent is `numerator` over HUNDRED, TEN_THOUSAND or MILLION. There is no runtime
layer here, so a runtime value is its `default_value` (what Envoy uses when the runtime has no
value for `runtime_key`, which is always the case without a runtime).

Must not: do I/O or keep state (the caller passes its worker's random bits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .reader import ConfigError, Fields

__all__ = ["FractionalPercent", "parse_fractional_percent", "parse_runtime_fractional_percent",
           "HUNDRED_PERCENT", "ZERO_PERCENT", "parse_runtime_feature_flag"]

_DENOMINATORS = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000}


@dataclass(frozen=True, slots=True)
class FractionalPercent:
    numerator: int = 0
    denominator: int = 100

    def enabled(self, random_bits) -> bool:
        """One draw: true for numerator/denominator of the values `random_bits()` returns
        (uniform in [0, 2**32)); 0 % and 100 % need no draw."""
        if self.numerator >= self.denominator:
            return True
        if self.numerator == 0:
            return False
        return random_bits() % self.denominator < self.numerator

    def capped(self, numerator: int) -> FractionalPercent:
        """The same denominator with `numerator`, at most this one's (Envoy's header-supplied
        percentages cannot exceed the configured one)."""
        return FractionalPercent(min(numerator, self.numerator), self.denominator)


HUNDRED_PERCENT = FractionalPercent(100, 100)
ZERO_PERCENT = FractionalPercent(0, 100)


def parse_fractional_percent(raw: Any, path: str, default: FractionalPercent = ZERO_PERCENT
                             ) -> FractionalPercent:
    if raw is None:
        return default
    f = Fields(raw, path, ("numerator", "denominator"))
    numerator = f.int("numerator", 0, min=0, max=2**32 - 1)
    denominator = _DENOMINATORS[f.enum("denominator", tuple(_DENOMINATORS), "HUNDRED")]
    return FractionalPercent(numerator, denominator)


def parse_runtime_fractional_percent(raw: Any, path: str,
                                     default: FractionalPercent = HUNDRED_PERCENT
                                     ) -> FractionalPercent:
    """`RuntimeFractionalPercent` (default_value required, runtime_key accepted: no runtime)."""
    if raw is None:
        return default
    f = Fields(raw, path, ("default_value", "runtime_key"))
    value = f.raw_obj("default_value")
    if value is None:
        raise ConfigError(f.at("default_value"), "is required")
    f.str("runtime_key", "")
    return parse_fractional_percent(value, f.at("default_value"))


def parse_runtime_feature_flag(raw: Any, path: str, default: bool = True) -> bool:
    """`RuntimeFeatureFlag` (`default_value` and `runtime_key` both required, as Envoy's
    validation says): its default_value."""
    if raw is None:
        return default
    f = Fields(raw, path, ("default_value", "runtime_key"))
    value = f.bool("default_value", required=True)
    f.str("runtime_key", required=True)
    return value
