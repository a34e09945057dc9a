# Every counter the loop keeps, each enum beside the names the control plane
# reports it by. Offsets are computed from the enums they follow, so adding a
# drop reason or a GSO error moves what comes after it instead of overlapping it.
# One writer (the loop) per counter; the control plane reads them without the
# lock: 64-bit aligned loads do not tear.
from fastpath.frame cimport DROP_REASONS
from fastpath.gso cimport GSO_ERRORS

cdef enum:  # port counters: PC_COUNT per port, in one flat array
    PC_RX_PACKETS = 0
    PC_RX_BYTES
    PC_TX_PACKETS
    PC_TX_BYTES
    PC_FLOODED                     # frames from this port that were flooded
    PC_TX_ERRORS                   # writes to this port that failed
    PC_ARP_SUPPRESSED              # ARP requests from this port the switch answered itself
    PC_ND_SUPPRESSED               # neighbour solicitations likewise
    PC_MAC_LIMITED                 # frames whose source MAC was not learned: the port holds its max_macs
    PC_PAUSED                      # times the loop stopped reading the port: its storm buckets were dry (pause.pxi)
    PC_DROPS                       # DROP_REASONS counters follow, by frame.drop_reason
    PC_CAPTURE_DROPS = PC_DROPS + DROP_REASONS   # mirrored frames the capture reader was too slow for
    PC_COUNT
PORT_COUNTER_NAMES = ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "flooded", "tx_errors", "arp_suppressed",
                      "nd_suppressed", "mac_limited", "paused")
assert len(PORT_COUNTER_NAMES) == PC_DROPS

cdef enum:  # tunnel peer counters: PE_COUNT per peer
    PE_TX_PACKETS = 0
    PE_TX_BYTES                    # inner frame bytes
    PE_RX_PACKETS
    PE_RX_BYTES
    PE_TX_ERRORS
    PE_COUNT
PEER_COUNTER_NAMES = ("tx_packets", "tx_bytes", "rx_packets", "rx_bytes", "tx_errors")
assert len(PEER_COUNTER_NAMES) == PE_COUNT

cdef enum:
    HIST_BUCKETS = 7               # frames per batch: 1, 2-3, 4-7, 8-15, 16-31, 32-63, 64+
HIST_BOUNDS = (1, 3, 7, 15, 31, 63)   # upper bound of each bucket; the last is open
assert len(HIST_BOUNDS) == HIST_BUCKETS - 1

cdef enum:  # loop statistics
    LS_WAKEUPS = 0
    LS_FRAMES                      # frames fully handled (read, decided, written)
    LS_BATCHES
    LS_SWEPT                       # expired entries removed by the sweep
    LS_OFFLOAD                     # the offload counters follow, named by OFFLOAD_COUNTER_NAMES
    LS_SUPERFRAMES_IN = LS_OFFLOAD # TSO super-frames read from ports
    LS_SUPERFRAMES_OUT             # ...written whole to ports
    LS_SEGMENTED                   # ...cut into segments for the tunnel
    LS_SEGMENTS                    # segments those produced
    LS_CSUM_COMPLETED              # partial checksums completed in software
    LS_GRO_RUNS                    # super-frames rebuilt from tunnel segments
    LS_GRO_COALESCED               # segments folded into them (beyond each run's first)
    LS_UDP_GRO                     # datagrams that arrived coalesced by the kernel's UDP GRO
    LS_GSO_ERRORS                  # GSO_ERRORS counters follow, by gso error (GSO_ERROR_NAMES)
    LS_HIST = LS_GSO_ERRORS + GSO_ERRORS   # HIST_BUCKETS counters follow
    LS_COUNT = LS_HIST + HIST_BUCKETS
LOOP_COUNTER_NAMES = ("wakeups", "frames", "batches", "swept")
assert len(LOOP_COUNTER_NAMES) == LS_OFFLOAD
OFFLOAD_COUNTER_NAMES = ("superframes_in", "superframes_out", "segmented", "segments", "csum_completed",
                         "gro_superframes", "gro_coalesced", "udp_gro_datagrams")
assert len(OFFLOAD_COUNTER_NAMES) == LS_GSO_ERRORS - LS_OFFLOAD

cdef enum event_kind:              # events kept for the control plane's log
    EV_MAC_MOVED = 1               # a: old output, b: new output
    EV_TABLE_FULL                  # a: the output it came from
    EV_UNKNOWN_PEER                # a: sender's IPv4 (network order), b: VNI
    EV_UNKNOWN_VNI                 # a: sender's IPv4, b: VNI
    EV_KINDS
EVENT_KINDS = (None, "mac_moved", "table_full", "unknown_peer", "unknown_vni")
assert len(EVENT_KINDS) == EV_KINDS
