"""The MessagePack header walker agrees with msgpack itself on where every value ends."""

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from geoloc.images.msgpack_spans import Truncated, map_entries, value_end

scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False) | st.text(max_size=300) | st.binary(max_size=70_000)
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=20) | st.dictionaries(st.text(max_size=10), children, max_size=20),
    max_leaves=40,
)


@given(values)
def test_value_end_is_the_packed_length(value):
    packed = msgpack.packb(value, use_bin_type=True)
    assert value_end(packed, 0) == len(packed)
    assert value_end(b"\x00" + packed + b"\xc0", 1) == len(packed) + 1


@given(values)
def test_a_cut_value_is_reported_truncated(value):
    packed = msgpack.packb(value, use_bin_type=True)
    for cut in {1, len(packed) // 2, len(packed) - 1} - {0, len(packed)}:
        with pytest.raises(Truncated):
            value_end(packed[:cut], 0)


def test_extensions_and_invalid_bytes():
    for ext in (msgpack.ExtType(5, b"x" * n) for n in (1, 2, 4, 8, 16, 3, 300, 70_000)):
        packed = msgpack.packb(ext)
        assert value_end(packed, 0) == len(packed)
    with pytest.raises(ValueError, match="0xc1"):
        value_end(b"\xc1", 0)


def test_map_entries():
    assert map_entries(msgpack.packb({"a": 1, "b": 2}), 0) == (2, 1)
    assert map_entries(msgpack.packb({str(n): n for n in range(20)}), 0) == (20, 3)
    assert map_entries(msgpack.packb([1]), 0) is None
