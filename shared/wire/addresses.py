"""Host checks shared by the transport (refusing to bind beyond loopback, binding a reachable interface) and the
slurm planner, and the loopback every listener uses unless the config says otherwise (LOOPBACK_IP; loopback_listener
for the TCPStores of the weight group's rendezvous and of torchrun, which torch would bind on every interface)."""

from __future__ import annotations

import ipaddress
import socket

# What every socket binds to unless the config says the run reaches beyond this node.
LOOPBACK_IP = "127.0.0.1"


def is_loopback(host: str) -> bool:
    """True for localhost and loopback IPs; False for any other name, which may resolve anywhere."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def loopback_listener(ip: str, port: int) -> tuple[int, int]:
    """(fd, port) of a TCP socket listening on loopback `ip`:`port` (port 0: a free one), to hand to a TCPStore
    (`master_listen_fd`), which owns the fd from then on. A TCPStore server started from a host name listens on
    every interface whatever the name (torch has no bind option), so its loopback-only listener is made here."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((ip, port))
        sock.listen(512)
    except OSError:
        sock.close()
        raise
    bound = sock.getsockname()[1]
    return sock.detach(), bound


def bind_addresses(address: str) -> list[str]:
    """What to bind for `address`, first the one to report. A tcp host *name* that resolves here to a loopback
    address (Debian's /etc/hosts maps the node's own name to 127.0.1.1) is bound on this node's routable address
    as well: other nodes resolve that name to the real interface and would never reach the loopback alias, while
    peers on this node still resolve it to the alias. Loopback names, IPs the config names, `*`, ipc and inproc are
    bound as given; all interfaces only when the config says `*`."""
    scheme, _, rest = address.partition("://")
    if scheme != "tcp":
        return [address]
    host, _, port = rest.rpartition(":")
    bare = host.strip("[]")
    if not host or bare == "*" or is_loopback(bare):
        return [address]
    try:
        ipaddress.ip_address(bare)
        return [address]  # an address, not a name: the config chose the interface
    except ValueError:
        pass
    try:
        resolved = socket.gethostbyname(bare)
    except OSError:
        return [address]  # zmq reports the unresolvable name when it binds
    if not ipaddress.ip_address(resolved).is_loopback:
        return [address]
    return [f"tcp://{routable_ip()}:{port}", f"tcp://{resolved}:{port}"]


def routable_ip() -> str:
    """An IPv4 address of this node that other nodes can reach: the source address of the default route, else
    the first global address the kernel lists (/proc/net/fib_trie; a cluster's private network may have no
    default route). Raises OSError naming the problem when the node has none."""
    for probe in ("10.255.255.255", "192.0.2.1"):  # connecting a UDP socket sends nothing; it only picks a route
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect((probe, 9))
                ip = s.getsockname()[0]
            if not ipaddress.ip_address(ip).is_loopback:
                return ip
        except OSError:
            continue
    local = _local_addresses()
    if local:
        return local[0]
    raise OSError("no routable IPv4 address on this node: set run.host to this node's address")


def _local_addresses() -> list[str]:
    """This node's own IPv4 addresses outside 127/8, in the kernel's order (Linux)."""
    try:
        lines = open("/proc/net/fib_trie").read().splitlines()
    except OSError:
        return []
    out: list[str] = []
    for prev, line in zip(lines, lines[1:]):
        if "/32 host LOCAL" in line:
            ip = prev.strip().split()[-1]
            if not ipaddress.ip_address(ip).is_loopback and ip not in out:
                out.append(ip)
    return out
