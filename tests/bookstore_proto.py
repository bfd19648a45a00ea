"""The test service of the gRPC-JSON transcoder tests, as protoc would describe it, built in
Python (no protoc here): package `bookstore`, one message `Book` used as every method's
request and reply (so an echoing gRPC server answers any method), and HTTP rules
(google.api.http) of each kind the transcoder maps: path variables, nested and wildcard
templates, a body field, `body: "*"`, a custom verb, additional bindings, a server-streaming
method and a method without a rule.

    syntax = "proto3";
    package bookstore;
    import "google/api/annotations.proto";
    enum Kind { KIND_UNSPECIFIED = 0; NOVEL = 1; ESSAY = 2; }
    message Meta { string note = 1; bool flag = 2; }
    message Book { int64 id = 1; string title = 2; string author = 3; repeated string tags = 4;
                   Kind kind = 5; Meta meta = 6; int64 shelf = 7; double price = 8;
                   string series_name = 9; }
    service Bookstore {
      rpc GetBook(Book) returns (Book) { option (google.api.http) = {get: "/shelves/{shelf}/books/{id}"}; }
      rpc CreateBook(Book) returns (Book) { option (google.api.http) = {post: "/shelves/{shelf}/books" body: "*"
          additional_bindings {put: "/books/{id}" body: "*"}}; }
      rpc UpdateMeta(Book) returns (Book) { option (google.api.http) = {patch: "/books/{id}/meta" body: "meta"}; }
      rpc Archive(Book) returns (Book) { option (google.api.http) = {post: "/books/{id}:archive"}; }
      rpc ByTitle(Book) returns (Book) { option (google.api.http) = {get: "/v1/{title=titles/*}/{series_name=**}"}; }
      rpc DeleteBook(Book) returns (Book) { option (google.api.http) = {delete: "/books/{id}"}; }
      rpc Fail(Book) returns (Book) { option (google.api.http) = {get: "/fail/{id}"}; }
      rpc Search(Book) returns (stream Book) { option (google.api.http) = {get: "/search"}; }
      rpc NoRule(Book) returns (Book);
    }

`descriptor_set(include_imports=True)` is the FileDescriptorSet `protoc --include_imports
--descriptor_set_out` writes (google/protobuf/descriptor.proto, google/api/http.proto and
annotations.proto first); with False only bookstore.proto (its imports not declared: the
options' google.api.http extension is read by number, which both Envoy and protobuf's Python
runtime resolve from their own linked copies).
"""

from __future__ import annotations

import base64

from proxy.grpc import protobuf_env  # noqa: F401  (before the first protobuf import)

from google.api import annotations_pb2, http_pb2  # noqa: E402
from google.protobuf import descriptor_pb2  # noqa: E402

__all__ = ["descriptor_set", "descriptor_set_b64", "PACKAGE", "SERVICE"]

PACKAGE = "bookstore"
SERVICE = "bookstore.Bookstore"
_F = descriptor_pb2.FieldDescriptorProto


def _rule(**kw) -> http_pb2.HttpRule:
    extra = kw.pop("additional_bindings", [])
    rule = http_pb2.HttpRule(**kw)
    for b in extra:
        rule.additional_bindings.add().CopyFrom(http_pb2.HttpRule(**b))
    return rule


_METHODS = [
    ("GetBook", _rule(get="/shelves/{shelf}/books/{id}"), False),
    ("CreateBook", _rule(post="/shelves/{shelf}/books", body="*",
                         additional_bindings=[{"put": "/books/{id}", "body": "*"}]), False),
    ("UpdateMeta", _rule(patch="/books/{id}/meta", body="meta"), False),
    ("Archive", _rule(post="/books/{id}:archive"), False),
    ("ByTitle", _rule(get="/v1/{title=titles/*}/{series_name=**}"), False),
    ("DeleteBook", _rule(delete="/books/{id}"), False),
    ("Fail", _rule(get="/fail/{id}"), False),
    ("Search", _rule(get="/search"), True),
    ("NoRule", None, False),
]


def _bookstore(declare_imports: bool) -> descriptor_pb2.FileDescriptorProto:
    f = descriptor_pb2.FileDescriptorProto(name="bookstore.proto", package=PACKAGE, syntax="proto3")
    if declare_imports:
        f.dependency.append("google/api/annotations.proto")
    kind = f.enum_type.add(name="Kind")
    for i, n in enumerate(("KIND_UNSPECIFIED", "NOVEL", "ESSAY")):
        kind.value.add(name=n, number=i)
    meta = f.message_type.add(name="Meta")
    meta.field.add(name="note", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL, json_name="note")
    meta.field.add(name="flag", number=2, type=_F.TYPE_BOOL, label=_F.LABEL_OPTIONAL, json_name="flag")
    book = f.message_type.add(name="Book")
    for name, num, typ, label, type_name, json_name in (
            ("id", 1, _F.TYPE_INT64, _F.LABEL_OPTIONAL, "", "id"),
            ("title", 2, _F.TYPE_STRING, _F.LABEL_OPTIONAL, "", "title"),
            ("author", 3, _F.TYPE_STRING, _F.LABEL_OPTIONAL, "", "author"),
            ("tags", 4, _F.TYPE_STRING, _F.LABEL_REPEATED, "", "tags"),
            ("kind", 5, _F.TYPE_ENUM, _F.LABEL_OPTIONAL, ".bookstore.Kind", "kind"),
            ("meta", 6, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".bookstore.Meta", "meta"),
            ("shelf", 7, _F.TYPE_INT64, _F.LABEL_OPTIONAL, "", "shelf"),
            ("price", 8, _F.TYPE_DOUBLE, _F.LABEL_OPTIONAL, "", "price"),
            ("series_name", 9, _F.TYPE_STRING, _F.LABEL_OPTIONAL, "", "seriesName")):
        fd = book.field.add(name=name, number=num, type=typ, label=label, json_name=json_name)
        if type_name:
            fd.type_name = type_name
    svc = f.service.add(name="Bookstore")
    for name, rule, streaming in _METHODS:
        m = svc.method.add(name=name, input_type=".bookstore.Book", output_type=".bookstore.Book")
        if streaming:
            m.server_streaming = True
        if rule is not None:
            m.options.Extensions[annotations_pb2.http].CopyFrom(rule)
    return f


def _file_of(module) -> descriptor_pb2.FileDescriptorProto:
    p = descriptor_pb2.FileDescriptorProto()
    module.DESCRIPTOR.CopyToProto(p)
    return p


def descriptor_set(include_imports: bool = True) -> bytes:
    """The serialized FileDescriptorSet."""
    s = descriptor_pb2.FileDescriptorSet()
    if include_imports:
        for module in (descriptor_pb2, http_pb2, annotations_pb2):
            s.file.append(_file_of(module))
    s.file.append(_bookstore(include_imports))
    return s.SerializeToString()


def descriptor_set_b64(include_imports: bool = False) -> str:
    return base64.b64encode(descriptor_set(include_imports)).decode()


if __name__ == "__main__":  # the value of a case's proto_descriptor_bin
    print(descriptor_set_b64())
