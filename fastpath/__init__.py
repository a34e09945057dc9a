"""fastpath: vswitch's compiled data plane.

The control plane uses these names only; frames, table entries and counters
stay C structures inside the extension modules. There is no pure-Python
fallback: if the extensions are not built, importing fastpath fails.
"""
from fastpath.datapath import (HIST_BOUNDS, IO_MODES, PEER_COUNTER_NAMES, PEER_FLAG, PORT_COUNTER_NAMES,
                               URING_COUNTER_NAMES, VX_DROP_NAMES, Datapath, kernel_takes_udp_superframes,
                               uring_unavailable, vtep_tx_socket)
from fastpath.frame import DROP_NAMES
from fastpath.mactable import MacTable, format_mac, parse_mac

DROP_REASONS = DROP_NAMES[1:]

VXLAN_DROP_REASONS = VX_DROP_NAMES[1:]

__all__ = [
    "Datapath", "MacTable", "DROP_REASONS", "HIST_BOUNDS", "IO_MODES", "PEER_COUNTER_NAMES", "PEER_FLAG",
    "PORT_COUNTER_NAMES", "URING_COUNTER_NAMES", "VXLAN_DROP_REASONS", "format_mac", "kernel_takes_udp_superframes",
    "parse_mac", "uring_unavailable", "vtep_tx_socket",
]
