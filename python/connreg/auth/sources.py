"""The source address a login is counted against, behind a reverse proxy or not.

`X-Forwarded-For` is believed only when the connection comes from one of `trusted_proxies`
(CIDRs). Each proxy appends the address it received the request from, so the header's right end
is written by our proxies and its left end by whoever sent the request: the source is the
right-most address that is not itself a trusted proxy. Anything left of it is ignored (a client
can put anything there). From an untrusted peer the header is ignored altogether, so it cannot
be used to spread guesses over made-up addresses or to blame someone else's address.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Iterable[str]) -> list[Network]:
    """CIDRs (or single addresses); ValueError naming the bad entry."""
    networks = []
    for value in values:
        text = value.strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError(f"trusted_proxies: {text!r} is not an address or CIDR "
                             "(e.g. 10.0.0.0/8, 192.0.2.7, fd00::/8)") from None
    return networks


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1:text.index("]")]
    elif text.count(":") == 1:                # v4:port
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    # An IPv4 peer on a dual-stack socket shows as ::ffff:a.b.c.d.
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


class TrustedProxies:
    def __init__(self, cidrs: Iterable[str]):
        self.networks = parse_networks(cidrs)

    def trusted(self, address) -> bool:
        return address is not None and any(address in n for n in self.networks)

    def source(self, peer: str | None, forwarded_for: list[str]) -> str:
        """The address to count a login against: `peer`, or the right-most untrusted address
        of `X-Forwarded-For` when `peer` is a trusted proxy."""
        peer_address = _address(peer or "")
        if peer_address is None:
            return peer or "unknown"
        if not self.networks or not self.trusted(peer_address):
            return str(peer_address)
        hops = [h for value in forwarded_for for h in value.split(",") if h.strip()]
        for hop in reversed(hops):
            address = _address(hop)
            if address is None:
                break  # garbage where a proxy should have written: trust nothing further left
            if not self.trusted(address):
                return str(address)
        return str(peer_address)  # only proxies in the chain (or nothing usable)

    def forwarded_https(self, peer: str | None, forwarded_proto: list[str]) -> bool:
        """Whether a trusted proxy in front of us says the client spoke https to it (the
        nearest proxy's `X-Forwarded-Proto`, its right-most value). From anyone else the
        header is ignored."""
        peer_address = _address(peer or "")
        if not self.networks or not self.trusted(peer_address):
            return False
        values = [v.strip().lower() for value in forwarded_proto for v in value.split(",")
                  if v.strip()]
        return bool(values) and values[-1] == "https"
