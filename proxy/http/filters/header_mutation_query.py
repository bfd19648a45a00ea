"""The header_mutation filter's `query_parameter_mutations`: the request's query as Envoy 1.40's
`Http::Utility::QueryParamsMulti` reads and writes it.

Job: `apply_query_mutations(path, mutations, info)` -> the new path. Envoy's rules kept here
(its behaviour, checked against 1.40, not what one might expect of a URL library):
- the query (after the first `?`) is split on `&`, each parameter on its first `=`; a
  parameter without `=` has the value ""; names and values are percent-decoded (`%XX` only, a
  bad escape stays as it is; `+` is not a space);
- parameters are kept per name, names in byte order (a btree map): the rewritten query lists
  them sorted, each name's values in the order they came;
- the query is written back unencoded (`name=value` joined by `&`): a decoded `%20` goes out as a
  space, a value holding `&` becomes two parameters for whoever reads it next (each level of
  mutations reads the path again);
- no parameters left: the path loses its `?`.
- `APPEND_IF_EXISTS_OR_ADD` appends a value, `ADD_IF_ABSENT` adds only a new name,
  `OVERWRITE_IF_EXISTS` replaces the values of a present name, `OVERWRITE_IF_EXISTS_OR_ADD`
  replaces or adds; `remove` drops every value of the name. An empty formatted value is still
  added (unlike headers).

Must not: do I/O. Thread affinity: mutations are immutable and shared by workers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ...router.header_mutation import ValueFormat

__all__ = ["QueryMutation", "apply_query_mutations", "parse_query", "render_query",
           "APPEND_IF_EXISTS_OR_ADD", "ADD_IF_ABSENT", "OVERWRITE_IF_EXISTS",
           "OVERWRITE_IF_EXISTS_OR_ADD", "QUERY_APPEND_ACTIONS"]

APPEND_IF_EXISTS_OR_ADD = "APPEND_IF_EXISTS_OR_ADD"
ADD_IF_ABSENT = "ADD_IF_ABSENT"
OVERWRITE_IF_EXISTS_OR_ADD = "OVERWRITE_IF_EXISTS_OR_ADD"
OVERWRITE_IF_EXISTS = "OVERWRITE_IF_EXISTS"
QUERY_APPEND_ACTIONS = (APPEND_IF_EXISTS_OR_ADD, ADD_IF_ABSENT, OVERWRITE_IF_EXISTS_OR_ADD,
                        OVERWRITE_IF_EXISTS)

_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")


@dataclass(frozen=True, slots=True)
class QueryMutation:
    """Remove parameter `key` (value None), or set it from `value` under `action`."""

    key: bytes
    value: ValueFormat | None = None
    action: str = APPEND_IF_EXISTS_OR_ADD


def _decode(b: bytes) -> bytes:
    if b"%" not in b:
        return b
    return _ESCAPE.sub(lambda m: bytes((int(m.group(1), 16),)), b)


def parse_query(path: bytes) -> dict[bytes, list[bytes]]:
    """The path's parameters, name -> values (insertion order; render_query sorts)."""
    params: dict[bytes, list[bytes]] = {}
    q = path.find(b"?")
    if q < 0:
        return params
    query = path[q + 1:]
    start, n = 0, len(query)
    while start < n:
        end = query.find(b"&", start)
        if end < 0:
            end = n
        param = query[start:end]
        name, eq, value = param.partition(b"=")
        if eq:
            params.setdefault(_decode(name), []).append(_decode(value))
        else:
            params.setdefault(param, []).append(b"")
        start = end + 1
    return params


def render_query(path: bytes, params: dict[bytes, list[bytes]]) -> bytes:
    base = path.split(b"?", 1)[0]
    parts = [k + b"=" + v for k in sorted(params) for v in params[k]]
    return base + b"?" + b"&".join(parts) if parts else base


def apply_query_mutations(path: bytes, mutations: tuple[QueryMutation, ...], info: Any) -> bytes:
    params = parse_query(path)
    for m in mutations:
        if m.value is None:
            params.pop(m.key, None)
            continue
        value = m.value.format(info).encode("latin-1", "replace")
        action = m.action
        if action == APPEND_IF_EXISTS_OR_ADD:
            params.setdefault(m.key, []).append(value)
        elif action == ADD_IF_ABSENT:
            if m.key not in params:
                params[m.key] = [value]
        elif action == OVERWRITE_IF_EXISTS_OR_ADD or m.key in params:  # or IF_EXISTS
            params[m.key] = [value]
    return render_query(path, params)
