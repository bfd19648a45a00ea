"""x-forwarded-client-cert (XFCC): what the HTTP connection manager says of a TLS client's
certificate, as Envoy's ConnectionManagerUtility::mutateXfccRequestHeader does.

`forward_client_cert_details`:
- SANITIZE (the default): the header is removed from every request (request_headers.py puts
  it in the HCM's removed set);
- ALWAYS_FORWARD_ONLY: passed on untouched, whatever the connection;
- FORWARD_ONLY, APPEND_FORWARD, SANITIZE_SET: removed unless the connection is TLS with a
  client certificate; then FORWARD_ONLY passes it on, APPEND_FORWARD appends this hop's
  element after a ",", SANITIZE_SET replaces it with this hop's element.

The element (`details`) is `;`-joined `key=value` pairs in Envoy's order: `By=` for each URI SAN
of our own certificate, `Hash=` (hex SHA-256 of the client certificate's DER), then those
`set_current_client_cert_details` asks for: `Cert="<URL-encoded PEM>"`,
`Chain="<URL-encoded PEM of each certificate, leaf first>"`, `Subject="<RFC 2253>"` (present even
when empty), `URI=` for each URI SAN (`URI=` alone when there is none), `DNS=` for each DNS SAN.
The PEM's URL encoding is %DOWNSTREAM_PEER_CERT%'s (access_log/tls_operators.py).
Must not: do I/O. Thread affinity: none (pure functions of immutable values).
"""

from __future__ import annotations

from ..access_log.tls_operators import url_encoded_pem

__all__ = ["xfcc_details", "XFCC"]

XFCC = b"x-forwarded-client-cert"


def xfcc_details(tls, details: tuple[str, ...]) -> bytes:
    """This hop's XFCC element for a connection's TlsInfo `tls` (a client certificate was
    presented) and the HCM's `set_current_client_cert_details` (in Envoy's order)."""
    out = [f"By={uri}" for uri in tls.local_uri_sans]
    digest = tls.peer_sha256
    if digest:
        out.append(f"Hash={digest}")
    for d in details:
        if d == "cert":
            pem = url_encoded_pem(tls.peer_certificate)
            if pem:
                out.append(f'Cert="{pem}"')
        elif d == "chain":
            chain = "".join(url_encoded_pem(c) for c in tls.peer_chain)
            if chain:
                out.append(f'Chain="{chain}"')
        elif d == "subject":
            out.append(f'Subject="{tls.peer_subject}"')
        elif d == "uri":
            out.extend([f"URI={u}" for u in tls.peer_uri_sans] or ["URI="])
        elif d == "dns":
            out.extend(f"DNS={n}" for n in tls.peer_dns_sans)
    return ";".join(out).encode("latin-1", "replace")
