"""REST/JSON <-> gRPC for the gRPC-JSON transcoder, without I/O: the services' methods and
their google.api.http rules from a FileDescriptorSet, a request's method and path mapped to a
gRPC method and its request message (path variables, query parameters, the JSON body), and a
reply message printed as Envoy's transcoder prints it (protobuf's JSON mapping: fields in
number order, 64-bit integers as strings, `print_options`).

JSON <-> protobuf is protobuf's json_format (the pure-Python backend on a free-threaded
build: proxy/grpc/protobuf_env.py). Errors a client causes are `TranscodeError` with the
gRPC code Envoy names in its response details; `NotMapped` means the request is not one this
transcoder maps (Envoy passes it through untouched); `SetupError` is a config error.

Thread affinity: a `Transcoding` is built on the main thread at config load and only read
afterwards (its message classes make per-stream instances); everything else is per call.
"""

from __future__ import annotations

import base64
import json
import math
import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from . import protobuf_env  # noqa: F401  (selects the backend before protobuf is imported)
from .http_template import PathTemplate, TemplateError, parse_template, split_path, unescape_reserved
from .transcoding_types import NotMapped, PrintOptions, SetupError, TranscodeError

from google.api import annotations_pb2, http_pb2  # noqa: E402,F401  (registers google.api.http)
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory  # noqa: E402
from google.protobuf.descriptor import FieldDescriptor  # noqa: E402

__all__ = ["Transcoding", "MethodInfo", "Mapped", "PrintOptions", "TranscodeError", "NotMapped",
           "SetupError"]

_HTTP_BODY = "google.api.HttpBody"
_INT = re.compile(r"-?[0-9]+\Z")
_TYPE_NAMES = {v: k for k, v in descriptor_pb2.FieldDescriptorProto.Type.items()}
_INT32 = (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32)
_INT64 = (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64)
_UINT32 = (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32)
_UINT64 = (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64)


@dataclass(frozen=True, slots=True)
class MethodInfo:
    grpc_path: bytes                # /<package>.<Service>/<Method>
    request_class: type
    response_class: type
    server_streaming: bool


@dataclass(frozen=True, slots=True)
class _Binding:
    http_method: bytes
    template: PathTemplate
    body: str                       # "" none, "*" the whole message, else a field path
    method: MethodInfo


@dataclass(frozen=True, slots=True)
class Mapped:
    """A request mapped to a method: the path and query bindings, and where the body goes."""
    method: MethodInfo
    body: str
    bindings: tuple[tuple[str, str], ...]


def _rule_pairs(rule) -> list[tuple[bytes, str]]:
    kind = rule.WhichOneof("pattern")
    if kind is None:
        return []
    if kind == "custom":
        return [(rule.custom.kind.encode(), rule.custom.path)]
    return [(kind.upper().encode(), getattr(rule, kind))]


class Transcoding:
    """The immutable method table of one transcoder config."""

    def __init__(self, descriptor_set: bytes, services: tuple[str, ...], auto_mapping: bool,
                 ignored_query_parameters: frozenset[str], ignore_unknown_query_parameters: bool,
                 print_options: PrintOptions) -> None:
        fds = descriptor_pb2.FileDescriptorSet()
        try:
            fds.ParseFromString(descriptor_set)
        except Exception as e:
            raise SetupError(f"unable to parse proto descriptor: {e}") from None
        pool = descriptor_pool.DescriptorPool()
        for f in fds.file:
            try:
                pool.AddSerializedFile(f.SerializeToString())
            except Exception as e:
                raise SetupError(f"unable to build proto descriptor pool: {f.name}: {e}") from None
        protos = {f"{f.package}.{s.name}" if f.package else s.name: s for f in fds.file for s in f.service}
        self.ignored = ignored_query_parameters
        self.ignore_unknown = ignore_unknown_query_parameters
        self.print_options = print_options
        bindings: list[_Binding] = []
        for name in services:
            if name not in protos:
                raise SetupError(f"could not find '{name}' in the proto descriptor")
            svc = pool.FindServiceByName(name)
            for mproto in protos[name].method:
                m = svc.methods_by_name[mproto.name]
                where = f"{name}.{m.name}"
                if m.input_type.full_name == _HTTP_BODY or m.output_type.full_name == _HTTP_BODY:
                    raise SetupError(f"{where}: google.api.HttpBody is not supported")
                if mproto.client_streaming:
                    raise SetupError(f"{where}: client streaming methods are not supported")
                info = MethodInfo(f"/{name}/{m.name}".encode(),
                                  message_factory.GetMessageClass(m.input_type),
                                  message_factory.GetMessageClass(m.output_type),
                                  mproto.server_streaming)
                rules = []
                if mproto.options.HasExtension(annotations_pb2.http):
                    top = mproto.options.Extensions[annotations_pb2.http]
                    rules = [top, *top.additional_bindings]
                elif auto_mapping:
                    rules = [http_pb2.HttpRule(post=f"/{name}/{m.name}", body="*")]
                for rule in rules:
                    if rule.response_body:
                        raise SetupError(f"{where}: response_body is not supported")
                    for verb, path in _rule_pairs(rule):
                        try:
                            template = parse_template(path)
                        except TemplateError as e:
                            raise SetupError(f"{where}: {e}") from None
                        for field, _, _ in template.variables:
                            _leaf(m.input_type, field, where)
                        if rule.body and rule.body != "*":
                            _field_path(m.input_type, rule.body, where)
                        bindings.append(_Binding(verb, template, rule.body, info))
        self.bindings = tuple(bindings)
        self.verbs = frozenset(b.template.verb for b in bindings if b.template.verb)

    # -- requests ---------------------------------------------------------------------------------
    def lookup(self, method: bytes, path: bytes) -> Mapped:
        """The method a request maps to, with its bindings; NotMapped when none."""
        raw_path, _, query = path.partition(b"?")
        segments, verb = split_path(raw_path.decode("utf-8", "surrogateescape"), self.verbs)
        best = None
        for b in self.bindings:
            if b.http_method != method:
                continue
            found = b.template.match(segments, verb)
            if found is not None and (best is None or b.template.rank() < best[0].template.rank()):
                best = (b, found)
        if best is None:
            raise NotMapped("no method for this path")
        binding, found = best
        values = [(f, unescape_reserved(v)) for f, v in found]
        desc = binding.method.request_class.DESCRIPTOR
        for key, value in _query_pairs(query):
            if key in self.ignored:
                continue
            try:
                _field_path(desc, key, "")
            except SetupError:
                if self.ignore_unknown:
                    continue
                raise NotMapped(f'Could not find field "{key}" in the type "{desc.full_name}".') from None
            values.append((key, value))
        return Mapped(binding.method, binding.body, tuple(values))

    def request_message(self, mapped: Mapped, body: bytes) -> bytes:
        """The serialized request message (TranscodeError for what the client got wrong)."""
        msg = mapped.method.request_class()
        if body.strip():
            try:
                doc = json.loads(body)
            except ValueError as e:
                raise TranscodeError(f"Unexpected JSON: {e}") from None
            try:
                if mapped.body == "*":
                    if not isinstance(doc, dict):
                        raise TranscodeError("Expected a JSON object for the request message.")
                    json_format.ParseDict(doc, msg, ignore_unknown_fields=True)
                elif mapped.body:
                    parent, field = _walk(msg, mapped.body)
                    json_format.ParseDict({field.json_name: doc}, parent, ignore_unknown_fields=True)
            except json_format.ParseError as e:
                raise TranscodeError(str(e)) from None
        for path, value in mapped.bindings:
            _set(msg, path, value)
        return msg.SerializeToString()

    # -- responses ------------------------------------------------------------------------------
    def response_json(self, method: MethodInfo, message: bytes) -> bytes:
        msg = method.response_class()
        msg.ParseFromString(message)
        o = self.print_options
        doc = json_format.MessageToDict(
            msg, always_print_fields_with_no_presence=o.always_print_primitive_fields,
            preserving_proto_field_name=o.preserve_proto_field_names,
            use_integers_for_enums=o.always_print_enums_as_ints)
        doc = _ordered(doc, msg.DESCRIPTOR, o.preserve_proto_field_names)
        if o.add_whitespace:
            text = json.dumps(doc, indent=1, ensure_ascii=False) + "\n"
        else:
            text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
        return text.translate(_CPP_ESCAPES).encode()


# What protobuf's C++ JSON printer escapes beyond what Python's json does (as \uXXXX).
_CPP_ESCAPES = {ord(c): "\\u%04x" % ord(c) for c in "<>\u2028\u2029"}


def _query_pairs(query: bytes):
    for part in query.split(b"&"):
        if not part:
            continue
        k, _, v = part.partition(b"=")
        key = unquote_to_bytes(k).decode("utf-8", "replace")
        if key:
            yield key, unquote_to_bytes(v).decode("utf-8", "replace")


def _find(desc, name: str):
    f = desc.fields_by_name.get(name)
    if f is None:
        f = desc.fields_by_camelcase_name.get(name)
    return f


def _field_path(desc, path: str, where: str) -> FieldDescriptor:
    field = None
    for k, part in enumerate(path.split(".")):
        if field is not None:
            if field.message_type is None or field.is_repeated:
                raise SetupError(f"{where}: {path!r} does not name a field of {desc.full_name}")
            desc = field.message_type
        field = _find(desc, part)
        if field is None:
            raise SetupError(f"{where}: {path!r} does not name a field")
    return field


def _leaf(desc, path: str, where: str) -> FieldDescriptor:
    field = _field_path(desc, path, where)
    if field.message_type is not None:
        raise SetupError(f"{where}: {path!r} is a message field")
    return field


def _walk(msg, path: str):
    parts = path.split(".")
    for part in parts[:-1]:
        msg = getattr(msg, _find(msg.DESCRIPTOR, part).name)
    return msg, _find(msg.DESCRIPTOR, parts[-1])


def _set(msg, path: str, text: str) -> None:
    parent, field = _walk(msg, path)
    value = _convert(field, text, path)
    if field.is_repeated:
        getattr(parent, field.name).append(value)
    else:
        setattr(parent, field.name, value)


def _bad(path: str, text: str, field: FieldDescriptor) -> TranscodeError:
    kind = field.enum_type or field.message_type
    name = f"type.googleapis.com/{kind.full_name}" if kind is not None else _TYPE_NAMES[field.type]
    return TranscodeError(f'{path}: invalid value "{text}" for type {name}')


# absl::SimpleAtob, which Envoy's converter reads a bool from a string with.
_TRUE = frozenset(("true", "t", "yes", "y", "1"))
_FALSE = frozenset(("false", "f", "no", "n", "0"))


def _convert(field: FieldDescriptor, text: str, path: str):
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        return text
    if t == FieldDescriptor.TYPE_BYTES:
        try:
            return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_" if ("-" in text or "_" in text) else None)
        except ValueError:
            raise _bad(path, text, field) from None
    if field.message_type is not None:
        raise _bad(path, text, field)
    if t == FieldDescriptor.TYPE_BOOL:
        low = text.lower()
        if low in _TRUE or low in _FALSE:
            return low in _TRUE
        raise _bad(path, text, field)
    if t == FieldDescriptor.TYPE_ENUM:
        v = field.enum_type.values_by_name.get(text)
        if v is not None:
            return v.number
        if _INT.match(text) and -(1 << 31) <= int(text) < (1 << 31):
            return int(text)
        raise _bad(path, text, field)
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        try:
            return float(text)
        except ValueError:
            raise _bad(path, text, field) from None
    if not _INT.match(text):
        raise _bad(path, text, field)
    n = int(text)
    lo, hi = ((-(1 << 31), 1 << 31) if t in _INT32 else (-(1 << 63), 1 << 63) if t in _INT64
              else (0, 1 << 32) if t in _UINT32 else (0, 1 << 64))
    if not lo <= n < hi:
        raise _bad(path, text, field)
    return n


def _ordered(doc, desc, proto_names: bool):
    """MessageToDict's keys in field-number order (protobuf's C++ printer's), recursively;
    integral doubles printed without '.0' as the C++ printer does."""
    if not isinstance(doc, dict) or desc is None:
        return _number(doc)
    if desc.full_name.startswith("google.protobuf."):
        return doc  # well-known types print as their JSON values
    out = {}
    for field in sorted(desc.fields, key=lambda f: f.number):
        key = field.name if proto_names else field.json_name
        if key not in doc:
            continue
        value = doc[key]
        sub = field.message_type
        if sub is not None and sub.GetOptions().map_entry:
            out[key] = {k: _ordered(v, sub.fields_by_name["value"].message_type, proto_names)
                        for k, v in value.items()}
        elif isinstance(value, list):
            out[key] = [_ordered(v, sub, proto_names) for v in value]
        else:
            out[key] = _ordered(value, sub, proto_names)
    for key, value in doc.items():  # (extensions and anything not a plain field, as they came)
        out.setdefault(key, value)
    return out


def _number(value):
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) < 1e16:
        return int(value)
    return value
