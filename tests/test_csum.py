"""The one's-complement sum's implementations (fastpath/csum.h) against a
reference sum, on random data of every length up to a few vectors and on
runs as long as a super-frame, at every alignment, and on the data that
carries the most (all ones) and the least (all zeros)."""
import random

import pytest

import fastpath.csum
from fastpath.csum import available, ones_sum
from rawframes import ones_sum as reference

IMPLS = available()


def test_the_compiled_module_is_loaded_and_scalar_and_vec16_always_run():
    assert fastpath.csum.__file__.endswith(".so")
    assert {"auto", "scalar", "vec16"} <= set(IMPLS)


@pytest.mark.parametrize("impl", IMPLS)
def test_every_length_and_alignment_matches_the_reference(impl):
    rng = random.Random(1071)
    buf = bytes(rng.getrandbits(8) for _ in range(600))
    for offset in range(8):
        for length in range(0, 300):
            data = buf[offset:offset + length]
            assert ones_sum(memoryview(data), impl) == reference(data), (impl, offset, length)


@pytest.mark.parametrize("impl", IMPLS)
def test_long_random_runs_match_the_reference(impl):
    rng = random.Random(768)
    for _ in range(40):
        length = rng.randrange(64, 70000)
        offset = rng.randrange(0, 64)
        data = rng.randbytes(length + offset)[offset:]
        assert ones_sum(data, impl) == reference(data), (impl, length, offset)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("fill", [0x00, 0xFF, 0x80])
def test_extreme_data_matches_the_reference(impl, fill):
    for length in (1, 63, 64, 65, 1448, 65535, 65536, 3 << 20):
        data = bytes([fill]) * length
        assert ones_sum(data, impl) == reference(data), (impl, fill, length)


@pytest.mark.parametrize("impl", IMPLS)
def test_a_running_sum_continues(impl):
    rng = random.Random(793)
    data = rng.randbytes(4000)
    # The sum of the first part, added as the start of the second: one sum of the whole.
    first = ones_sum(data[:1000], impl)
    swapped = ((first & 0xFF) << 8) | (first >> 8)  # back to the little-endian words it summed
    assert ones_sum(data[1000:], impl, swapped) == reference(data)


def test_an_unknown_implementation_is_refused():
    with pytest.raises(ValueError, match="impl"):
        ones_sum(b"ab", "sse9")
