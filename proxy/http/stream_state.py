"""A stream's lifecycle: the flags of `ActiveStream.state` (one int; flags are gained, never
lost). The request and the response progress independently, as in HTTP/2's half-closed
states, so the lifecycle is a set of flags rather than one linear enum.

Thread affinity: none (constants).
"""

REQUEST_COMPLETE = 1   # the request's end was decoded
RESPONSE_STARTED = 2   # the response head went to the codec
RESPONSE_COMPLETE = 4  # the response's end went to the codec
UPGRADED = 8           # answered 101 (or 2xx to CONNECT): a tunnel until either side closes
UPGRADE_ACCEPTED = 16  # its upgrade (or CONNECT) was allowed (Envoy's upgrade filter chain
#                        was made): counted in downstream_cx_upgrades_total/_active
CLOSED = 32            # ended (completed or reset): logged, filters destroyed, off its HCM;
#                        the highest flag, so `state >= CLOSED` tests it
