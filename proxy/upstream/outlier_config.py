"""Outlier detection config: Envoy v3 `config.cluster.v3.OutlierDetection` -> frozen model.

Job: validate a cluster's `outlier_detection` through its declared table, with Envoy's defaults
(DetectorConfig in outlier_detection_impl.cc): consecutive_5xx 5, interval 10 s,
base_ejection_time 30 s, max_ejection_percent 10, enforcing_consecutive_5xx 100,
enforcing_success_rate 100, success_rate_minimum_hosts 5, success_rate_request_volume 100,
success_rate_stdev_factor 1900, consecutive_gateway_failure 5,
enforcing_consecutive_gateway_failure 0, consecutive_local_origin_failure 5,
enforcing_consecutive_local_origin_failure 100, enforcing_local_origin_success_rate 100,
failure_percentage_threshold 85, enforcing_failure_percentage(_local_origin) 0,
failure_percentage_minimum_hosts 5, failure_percentage_request_volume 50,
max_ejection_time max(300 s, base_ejection_time), max_ejection_time_jitter 0,
successful_active_health_check_uneject_host true. A max_ejection_time below
base_ejection_time is refused, as Envoy refuses it.

Must not: do I/O or keep state. Pure; callable from any thread.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.config.fields_table import Message, refused, used
from proxy.config.reader import ConfigError, Fields

__all__ = ["OutlierDetectionConfig", "parse_outlier_detection", "OUTLIER_DETECTION"]


@dataclass(frozen=True, slots=True)
class OutlierDetectionConfig:
    consecutive_5xx: int = 5
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_percent: int = 10
    enforcing_consecutive_5xx: int = 100
    enforcing_success_rate: int = 100
    success_rate_minimum_hosts: int = 5
    success_rate_request_volume: int = 100
    success_rate_stdev_factor: int = 1900     # thousandths: 1900 = 1.9 standard deviations
    consecutive_gateway_failure: int = 5
    enforcing_consecutive_gateway_failure: int = 0
    split_external_local_origin_errors: bool = False
    consecutive_local_origin_failure: int = 5
    enforcing_consecutive_local_origin_failure: int = 100
    enforcing_local_origin_success_rate: int = 100
    failure_percentage_threshold: int = 85
    enforcing_failure_percentage: int = 0
    enforcing_failure_percentage_local_origin: int = 0
    failure_percentage_minimum_hosts: int = 5
    failure_percentage_request_volume: int = 50
    max_ejection_time: float = 300.0
    max_ejection_time_jitter: float = 0.0
    successful_active_health_check_uneject_host: bool = True
    always_eject_one_host: bool = False


_PERCENTS = ("max_ejection_percent", "enforcing_consecutive_5xx", "enforcing_success_rate",
             "enforcing_consecutive_gateway_failure", "enforcing_consecutive_local_origin_failure",
             "enforcing_local_origin_success_rate", "failure_percentage_threshold",
             "enforcing_failure_percentage", "enforcing_failure_percentage_local_origin")
_COUNTS = ("consecutive_5xx", "success_rate_minimum_hosts", "success_rate_request_volume",
           "success_rate_stdev_factor", "consecutive_gateway_failure",
           "consecutive_local_origin_failure", "failure_percentage_minimum_hosts",
           "failure_percentage_request_volume")

OUTLIER_DETECTION = Message("envoy.config.cluster.v3.OutlierDetection", model=OutlierDetectionConfig,
                            fields=(
    used("consecutive_5xx", 5),
    used("interval", "10s"),
    used("base_ejection_time", "30s"),
    used("max_ejection_percent", 10),
    used("enforcing_consecutive_5xx", 100),
    used("enforcing_success_rate", 100),
    used("success_rate_minimum_hosts", 5),
    used("success_rate_request_volume", 100),
    used("success_rate_stdev_factor", 1900),
    used("consecutive_gateway_failure", 5),
    used("enforcing_consecutive_gateway_failure", 0),
    used("split_external_local_origin_errors", False),
    used("consecutive_local_origin_failure", 5),
    used("enforcing_consecutive_local_origin_failure", 100),
    used("enforcing_local_origin_success_rate", 100),
    used("failure_percentage_threshold", 85),
    used("enforcing_failure_percentage", 0),
    used("enforcing_failure_percentage_local_origin", 0),
    used("failure_percentage_minimum_hosts", 5),
    used("failure_percentage_request_volume", 50),
    used("max_ejection_time", "300s"),
    used("max_ejection_time_jitter", "0s"),
    used("successful_active_health_check_uneject_host", True),
    used("always_eject_one_host", False),
    refused("monitors", "outlier detection extension monitors"),
    refused("detect_degraded_hosts", "degrading hosts that answer x-envoy-degraded",
            default=False, only_default=True),
))


_DEFAULT = OutlierDetectionConfig()


def _ms(f: Fields, key: str, default: float) -> float:
    v = f.duration(key, default)
    if v < 0:
        raise ConfigError(f.at(key), "must not be negative")
    return v


def parse_outlier_detection(raw, path: str) -> OutlierDetectionConfig:
    f = OUTLIER_DETECTION.read(raw, path)
    OUTLIER_DETECTION.require_default(f, "detect_degraded_hosts", f.bool("detect_degraded_hosts", False))
    kw: dict = {}
    for key in _PERCENTS:
        kw[key] = f.int(key, getattr(_DEFAULT, key), min=0, max=100)
    for key in _COUNTS:
        kw[key] = f.int(key, getattr(_DEFAULT, key), min=0, max=2**32 - 1)
    interval = _ms(f, "interval", 10.0)
    if interval <= 0:
        raise ConfigError(f.at("interval"), "must be greater than 0s")
    base = _ms(f, "base_ejection_time", 30.0)
    max_time = _ms(f, "max_ejection_time", max(300.0, base))
    if max_time < base:
        raise ConfigError(f.at("max_ejection_time"),
                          "outlier detector's max_ejection_time cannot be smaller than base_ejection_time")
    return OutlierDetectionConfig(
        interval=interval, base_ejection_time=base, max_ejection_time=max_time,
        max_ejection_time_jitter=_ms(f, "max_ejection_time_jitter", 0.0),
        split_external_local_origin_errors=f.bool("split_external_local_origin_errors", False),
        successful_active_health_check_uneject_host=f.bool(
            "successful_active_health_check_uneject_host", True),
        always_eject_one_host=f.bool("always_eject_one_host", False),
        **kw)
