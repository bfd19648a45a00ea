"""Declared field tables: one per config message, the single place that says what ftproxy does
with each field of an Envoy message.

Job: each config message (`Bootstrap`, `Listener`, `Cluster`, `TcpProxy`, ...) declares its
fields once, in a `Message`: the Envoy field name, Envoy's default, and one status:
- USED: parsed into the model attribute `attr`, which runtime code reads (a test checks that
  some module outside the config layer reads that attribute: tests/unit/test_config_tables.py);
- INERT: accepted, and nothing reads it, for the reason given (`why`): it has no effect in
  Envoy either under what ftproxy supports (e.g. `listener_filters_timeout` when listener
  filters are refused), or it only feeds something ftproxy does not have;
- REFUSED: a real Envoy field ftproxy does not implement: present, it is refused with
  "<path>: not supported yet (<why>)". With `only_default=True` its default value is accepted
  (the parser reads the value and calls `require_default`).

`Message.read(raw, path)` opens an object: unknown fields (did-you-mean) and every refused field
present are reported together (or recorded in the caller's ErrorCollector, which goes on). The
README's "Supported configuration" field lists are generated from these tables
(`python -m proxy.config.fields_table README.md` rewrites them; a test checks them).

Must not: do I/O (but `_main`, that maintenance command), or import other proxy layers than
`proxy.config.reader`. The tables are filled at import time (main thread) and never mutated
afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .reader import MISSING, ConfigError, ConfigErrors, ErrorCollector, Fields, all_errors

__all__ = ["USED", "INERT", "REFUSED", "FieldSpec", "Message", "used", "inert", "refused",
           "tables", "not_supported", "markdown_block"]

USED = "used"
INERT = "inert"
REFUSED = "refused"


def not_supported(path: str, why: str = "") -> ConfigError:
    """The one way a refusal is written: `<path>: not supported yet (<why>)`."""
    return ConfigError(path, "not supported yet" + (f" ({why})" if why else ""))


@dataclass(frozen=True, slots=True)
class FieldSpec:
    name: str                  # Envoy's field name (proto JSON, snake_case)
    status: str                # USED, INERT or REFUSED
    default: Any = None        # Envoy's default (None: unset / empty)
    attr: str | None = None    # the parsed model's attribute carrying the value (USED / INERT)
    why: str = ""              # INERT: why nothing needs to read it; REFUSED: the refusal's reason
    only_default: bool = False  # REFUSED: the default value is accepted (see require_default)


def used(name: str, default: Any = None, attr: str | None = None, why: str = "") -> FieldSpec:
    """A field whose value the runtime honours; `attr` (default: the field name) is the parsed
    model's attribute that runtime code reads. `attr=""` for a field that only selects or
    structures (its content is described by its own message's table)."""
    return FieldSpec(name, USED, default, name if attr is None else (attr or None), why)


def inert(name: str, why: str, default: Any = None, attr: str | None = None) -> FieldSpec:
    return FieldSpec(name, INERT, default, attr, why)


def refused(name: str, why: str = "", default: Any = None, only_default: bool = False) -> FieldSpec:
    return FieldSpec(name, REFUSED, default, None, why, only_default)


_TABLES: dict[str, Message] = {}


@dataclass(frozen=True, slots=True)
class Message:
    """The declared fields of one Envoy message. `model` is the frozen dataclass the message
    is parsed into (None when its fields are folded into a parent's model); `bookkeeping` are
    model attributes that are no Envoy field (the raw tree kept for /config_dump, ...)."""

    proto: str
    fields: tuple[FieldSpec, ...]
    model: type | None = None
    bookkeeping: tuple[str, ...] = ()
    title: str = ""
    # Derived once (read() runs per resource of an xDS push: 1,000 clusters are 9,000 reads).
    names: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _refused: frozenset[str] = field(init=False, repr=False, compare=False)
    _refused_specs: tuple[FieldSpec, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        dup = {n for n in names if names.count(n) > 1}
        assert not dup, f"{self.proto}: fields declared twice: {dup}"
        assert self.proto not in _TABLES, f"{self.proto} declared twice"
        specs = tuple(f for f in self.fields if f.status == REFUSED and not f.only_default)
        object.__setattr__(self, "names", tuple(names))
        object.__setattr__(self, "_refused", frozenset(f.name for f in specs))
        object.__setattr__(self, "_refused_specs", specs)
        _TABLES[self.proto] = self

    def spec(self, name: str) -> FieldSpec:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.proto} declares no field {name!r}")

    def with_status(self, status: str) -> tuple[FieldSpec, ...]:
        return tuple(f for f in self.fields if f.status == status)

    def read(self, raw: Any, path: str, extra: Iterable[str] = (),
             errors_to: ErrorCollector | None = None) -> Fields:
        """`raw` at `path` opened as this message: unknown fields and refused fields present
        are reported together (ConfigErrors when more than one). `extra`: names the caller
        accepts beyond the table (e.g. "@type" of a typed_config body). With `errors_to`, those
        errors are recorded there instead and the caller goes on checking the known fields."""
        errors: list[ConfigError] = []
        known = (*self.names, *extra)
        try:
            f = Fields(raw, path, known)
        except ConfigError as e:
            if not (isinstance(raw, Mapping) and all(isinstance(k, str) for k in raw)):
                raise  # not an object at all: nothing more to say about it
            # Unknown fields: reported with the refusals below.
            errors.extend(all_errors(e))
            f = Fields({k: v for k, v in raw.items() if k in known}, path, known)
        for spec in self._refused_specs:
            if _present(f.raw.get(spec.name)):
                errors.append(not_supported(f.at(spec.name), spec.why))
        if errors_to is not None:
            for e in errors:
                errors_to.add(e)
            return Fields({k: v for k, v in f.raw.items() if k not in self._refused}, path, known)
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise ConfigErrors(errors)
        return f

    def require_default(self, f: Fields, name: str, value: Any) -> Any:
        """`value` (already parsed by the caller) if it is the declared default of the
        only-default field `name`; else the refusal naming the path."""
        spec = self.spec(name)
        assert spec.status == REFUSED and spec.only_default, (self.proto, name)
        if value is not MISSING and value is not None and value != spec.default:
            raise not_supported(f.at(name), spec.why or f"only the default, {_show(spec.default)}, is")
        return value


def _present(value: Any) -> bool:
    """Whether a refused field is really set. proto3: an empty list, an empty string, false and
    0 are the field's default, the same as leaving it out (`transparent: false` asks for
    nothing); an object, even empty, is set (`tracing: {}` turns tracing on)."""
    if value is None or value is False or value == [] or value == "":
        return False
    return not (type(value) is int and value == 0)


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, str) else str(value)


def tables() -> dict[str, Message]:
    """Every declared table by proto name (filled when the config modules are imported)."""
    return dict(_TABLES)


# -- documentation ---------------------------------------------------------------------------

def _names(specs: Iterable[FieldSpec], with_why: bool) -> str:
    out = []
    for s in specs:
        text = f"`{s.name}`"
        if s.only_default:
            text += " (only unset or empty)" if s.default is None else f" (only {_show(s.default)})"
        if with_why and s.why:
            text += f" ({s.why})"
        out.append(text)
    return ", ".join(out)


def markdown_block(proto: str) -> str:
    """The README's generated sentence list for one message."""
    m = _TABLES[proto]
    lines = [f"`{proto}` —"]
    if u := m.with_status(USED):
        lines.append(f"Used: {_names(u, False)}.")
    if i := m.with_status(INERT):
        lines.append(f"Accepted, inert: {_names(i, True)}.")
    if r := m.with_status(REFUSED):
        lines.append(f"Refused (not supported yet): {_names(r, False)}.")
    return " ".join(lines)


BEGIN = "<!-- fields: "
END = "<!-- /fields -->"


def render_readme(text: str) -> str:
    """`text` with every `<!-- fields: PROTO -->...<!-- /fields -->` block regenerated."""
    out: list[str] = []
    rest = text
    while (start := rest.find(BEGIN)) >= 0:
        head_end = rest.index("-->", start) + 3
        proto = rest[start + len(BEGIN):head_end - 3].strip()
        stop = rest.index(END, head_end)
        out.append(rest[:head_end])
        out.append("\n" + markdown_block(proto) + "\n")
        out.append(END)
        rest = rest[stop + len(END):]
    out.append(rest)
    return "".join(out)


def _main(argv: list[str]) -> int:  # pragma: no cover - a maintenance command
    import proxy.config.load  # noqa: F401  the catalogue of extensions
    from proxy.config.registry import load_all
    load_all()  # imports every config module (fills the tables)
    # Run as __main__, this file is a second module object: use the one the tables filled.
    from proxy.config.fields_table import render_readme

    for path in argv:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        new = render_readme(text)
        if new != text:
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(new)
            print(f"{path}: field tables regenerated")
    return 0


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.exit(_main(sys.argv[1:]))
