"""The gRPC-JSON transcoder's plain types, apart from json_transcoding.py so that loading the
filter's module does not import protobuf (it is imported when a config uses the filter).

Thread affinity: none (immutable values and exception classes)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PrintOptions", "TranscodeError", "NotMapped", "SetupError"]


class SetupError(ValueError):
    """The descriptor set, a service or an HTTP rule cannot be used (config load)."""


class NotMapped(Exception):
    """Not a request this transcoder maps: it goes on untouched."""


class TranscodeError(Exception):
    """A mapped request that cannot become its gRPC message (400 INVALID_ARGUMENT)."""

    def __init__(self, message: str, code: str = "INVALID_ARGUMENT") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True, slots=True)
class PrintOptions:
    add_whitespace: bool = False
    always_print_primitive_fields: bool = False
    always_print_enums_as_ints: bool = False
    preserve_proto_field_names: bool = False
