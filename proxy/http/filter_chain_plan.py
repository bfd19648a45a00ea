"""What a stream's filter chain looks like, worked out once per worker instead of per request.

A `ChainPlan` says, for one sequence of filters (by their factories and the classes their
`create` returned), which of them decode, which encode (in encode order), and for each
(direction, call) whether every non-terminal filter there leaves that call to
`PassThroughFilter` (it CONTINUEs and does nothing); also whether one of them may change the
request's content-type (a class without `keeps_request_content_type = True` may), and which
have an `on_destroy` of their own. The filter
manager (filter_manager.py) uses it to build the per-stream chains without a loop over the
factories, and to hand a call straight to the end of the chain when every filter before it
would only CONTINUE and nothing is held in that direction: the same outcome, without a Python
call per filter (e.g. the response body passing a CORS or ratelimit filter, which act on the
headers only).

`ChainPlans` holds the plans of one HcmContext's filter factories. It is per worker (the
HcmContext is): filled and read on that worker's thread only, so no lock. A plan is learnt from
the first stream's filters: a worker factory's `create` makes filters of one class
(filter.py's WorkerFilterFactory says so; every factory here does). A chain a route switched
gets its own plan, keyed by the factories left in; past `_MAX_PLANS` such plans are worked
out per stream and not kept.
"""

from __future__ import annotations

from .filter import PassThroughFilter

__all__ = ["ChainPlan", "ChainPlans"]

_MAX_PLANS = 64
_PASS = {name: getattr(PassThroughFilter, name) for name in (
    "decode_headers", "decode_data", "decode_trailers",
    "encode_headers", "encode_data", "encode_trailers")}
_NO_DESTROY = PassThroughFilter.on_destroy


def _passes(cls: type, name: str) -> bool:
    """Does `cls` leave `name` to PassThroughFilter (CONTINUE, no side effect)?"""
    return getattr(cls, name, None) is _PASS[name]


class ChainPlan:
    """Immutable once made. Indices are into the stream's `filters` (creation order)."""

    __slots__ = ("decoders_only", "all_decode", "decode_idx", "encode_idx", "decode_data_passes",
                 "decode_trailers_passes", "encode_headers_passes", "encode_data_passes",
                 "encode_trailers_passes", "grpc_snapshot", "destroy_idx", "encode_one",
                 "encode_body_filters")

    def __init__(self, factories, classes) -> None:
        n = len(classes)
        decode = tuple(i for i in range(n) if factories[i].decoder)
        encode = tuple(i for i in reversed(range(n)) if factories[i].encoder)
        self.all_decode = len(decode) == n
        self.decode_idx = decode
        self.encode_idx = encode
        self.encode_one = encode[0] if len(encode) == 1 else None  # (the one encoder filter)
        # The chain is its filters in order, as decoders, and nothing else to work out.
        self.decoders_only = self.all_decode and not encode
        before_terminal = decode[:-1]
        self.decode_data_passes = all(_passes(classes[i], "decode_data") for i in before_terminal)
        self.decode_trailers_passes = all(_passes(classes[i], "decode_trailers")
                                          for i in before_terminal)
        # (the encoders' end is the wire sink: every encoder filter is before it)
        self.encode_headers_passes = all(_passes(classes[i], "encode_headers") for i in encode)
        self.encode_data_passes = all(_passes(classes[i], "encode_data") for i in encode)
        self.encode_trailers_passes = all(_passes(classes[i], "encode_trailers") for i in encode)
        # The encoder filters with a body or trailers call of their own: when each of them
        # said a response's body is not theirs (FilterManager.pass_encoded_body), that
        # response's body and trailers go straight to the wire sink.
        self.encode_body_filters = sum(
            1 for i in encode
            if not (_passes(classes[i], "encode_data") and _passes(classes[i], "encode_trailers")))
        # Whether a filter before the terminal one may change the request's content-type: only
        # then does the stream note, as the request arrives, whether it is gRPC (its local
        # replies' shape); otherwise a local reply reads the unchanged header when it happens.
        self.grpc_snapshot = not all(getattr(classes[i], "keeps_request_content_type", False)
                                     for i in before_terminal)
        # The filters whose on_destroy does something (the others are not called at the end).
        self.destroy_idx = tuple(i for i in range(n)
                                 if getattr(classes[i], "on_destroy", None) is not _NO_DESTROY)


class ChainPlans:
    """One HcmContext's factories ((worker factory, disabled, switchable) triples) and the
    plans learnt for them. Thread affinity: the worker that owns the HcmContext."""

    __slots__ = ("factories", "lone", "switchable", "creates", "plain_factories", "static", "plans")

    def __init__(self, factories) -> None:
        self.factories = factories
        # One filter that no route can disable (the router alone: the usual chain): its
        # factory's create, for a chain without a plan (no lists, nothing to skip).
        self.lone = (factories[0][0].create if len(factories) == 1 and not factories[0][1]
                     and not factories[0][2] else None)
        # Whether a route may leave a filter out: then each stream looks at its route.
        self.switchable = any(switchable for _, _, switchable in factories)
        self.creates = tuple(factory.create for factory, _, _ in factories)
        self.plain_factories = tuple(factory for factory, _, _ in factories)
        self.static: ChainPlan | None = None  # the plan when no route can switch a filter
        self.plans: dict = {}  # by the factories a route left in, when one can

    @staticmethod
    def learn(factories, filters) -> ChainPlan:
        """The plan for `filters`, made by `factories` (each makes one class of filter: the
        plan holds for every stream these factories make filters for)."""
        return ChainPlan(factories, [type(flt) for flt in filters])

    def learn_switched(self, made: tuple, filters) -> ChainPlan:
        """The plan of a chain a route switched, kept under the factories it left in."""
        plan = self.learn(made, filters)
        if len(self.plans) < _MAX_PLANS:
            self.plans[made] = plan
        return plan
