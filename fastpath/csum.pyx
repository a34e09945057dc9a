# cython: language_level=3
"""The one's-complement sum's implementations (csum.h), by name, for tests
and benchmarks: the loop itself calls them through inet.pxd's csum_add."""
from libc.stdint cimport uint8_t, uint64_t

cdef extern from "csum.h" nogil:
    enum:
        VS_CSUM_AUTO
        VS_CSUM_SCALAR
        VS_CSUM_VEC16
        VS_CSUM_AVX2
    bint vs_csum_available(int impl)
    uint64_t vs_csum_with(int impl, uint64_t s, const uint8_t *p, size_t n)

IMPLEMENTATIONS = {"auto": VS_CSUM_AUTO, "scalar": VS_CSUM_SCALAR, "vec16": VS_CSUM_VEC16, "avx2": VS_CSUM_AVX2}


def available() -> list:
    """The implementations this CPU runs ("auto" is the widest of them)."""
    return [name for name, impl in IMPLEMENTATIONS.items() if vs_csum_available(impl)]


def ones_sum(const uint8_t[::1] data, str impl="auto", uint64_t start=0) -> int:
    """The one's-complement sum of data (RFC 1071; an odd last byte padded
    with zero), added to `start`, folded to 16 bits, as a big-endian value:
    what a checksum field holds is its complement."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"impl {impl!r} is not one of {', '.join(IMPLEMENTATIONS)}")
    cdef int which = IMPLEMENTATIONS[impl]
    if not vs_csum_available(which):
        raise OSError(f"this CPU does not run the {impl} checksum")
    cdef uint64_t s
    cdef const uint8_t *p = &data[0] if data.shape[0] else NULL
    with nogil:
        s = vs_csum_with(which, start, p, data.shape[0])
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    # Summed as little-endian words: swap to the big-endian value.
    return ((s & 0xFF) << 8) | (s >> 8)
