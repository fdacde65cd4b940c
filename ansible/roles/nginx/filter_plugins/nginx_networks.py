"""Address checks for the nginx role, on Python's ipaddress module (the
ansible.utils ipaddr filters would need netaddr on the controller)."""

import ipaddress


def nginx_invalid_networks(values):
    """The entries that are not an IPv4 or IPv6 address or network with its host
    bits clear ("10.0.0.0/8", "2001:db8::/64", "192.0.2.7"). A network written
    with host bits set ("10.0.0.1/8") is refused: nginx would widen it silently."""
    invalid = []
    for value in values:
        try:
            ipaddress.ip_network(value if isinstance(value, str) else "", strict=True)
        except ValueError:
            invalid.append(value)
    return invalid


class FilterModule:
    def filters(self):
        return {"nginx_invalid_networks": nginx_invalid_networks}
