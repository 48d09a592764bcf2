"""Where each MessagePack value lies in a buffer, found from the type headers alone.

msgpack's Unpacker can only skip a value after copying it into its own buffer, so an
index pass over gigabytes of shards would copy every image twice just to learn where
it lies. Here the headers are read in place (from a memory map) and the payloads are
stepped over untouched; msgpack itself still decodes every value we keep.
"""

from __future__ import annotations

_FIXED_SIZES = {
    0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8,
    0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8, 0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17,
}
"""Head byte -> payload bytes of nil, booleans, numbers and fixed-size extensions."""
_LENGTH_PREFIXED = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}
"""Head byte -> bytes of the big-endian length of bin and str values."""
_EXTENSIONS = {0xC7: 1, 0xC8: 2, 0xC9: 4}
_CONTAINERS = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}
"""Head byte -> (bytes of the item count, values per item) of arrays and maps."""
MAX_DEPTH = 200


class Truncated(ValueError):
    """The buffer ends inside a value."""


def _number(buffer, start: int, size: int) -> int:
    if start + size > len(buffer):
        raise Truncated(f"length field at {start} runs past the end")
    return int.from_bytes(buffer[start:start + size], "big")


def value_end(buffer, position: int, depth: int = 0) -> int:
    """The offset just past the value that starts at `position`."""
    if position >= len(buffer):
        raise Truncated(f"value at {position} starts past the end")
    if depth > MAX_DEPTH:
        raise ValueError(f"values nested deeper than {MAX_DEPTH} at {position}")
    head = buffer[position]
    if head <= 0x7F or head >= 0xE0:
        end = position + 1
    elif head <= 0x8F:
        end = items_end(buffer, position + 1, 2 * (head & 0x0F), depth)
    elif head <= 0x9F:
        end = items_end(buffer, position + 1, head & 0x0F, depth)
    elif head <= 0xBF:
        end = position + 1 + (head & 0x1F)
    elif head in _FIXED_SIZES:
        end = position + 1 + _FIXED_SIZES[head]
    elif head in _LENGTH_PREFIXED:
        size = _LENGTH_PREFIXED[head]
        end = position + 1 + size + _number(buffer, position + 1, size)
    elif head in _EXTENSIONS:
        size = _EXTENSIONS[head]
        end = position + 2 + size + _number(buffer, position + 1, size)
    elif head in _CONTAINERS:
        size, per_item = _CONTAINERS[head]
        end = items_end(buffer, position + 1 + size, per_item * _number(buffer, position + 1, size), depth)
    else:
        raise ValueError(f"byte {head:#04x} at {position} starts no MessagePack value")
    if end > len(buffer):
        raise Truncated(f"value at {position} runs past the end")
    return end


def items_end(buffer, position: int, count: int, depth: int = 0) -> int:
    """The offset just past `count` consecutive values starting at `position`."""
    for _ in range(count):
        position = value_end(buffer, position, depth + 1)
    return position


def map_entries(buffer, position: int) -> tuple[int, int] | None:
    """(number of entries, offset of the first key) when a map starts at `position`, else None."""
    head = buffer[position]
    if 0x80 <= head <= 0x8F:
        return head & 0x0F, position + 1
    if head in (0xDE, 0xDF):
        size = _CONTAINERS[head][0]
        return _number(buffer, position + 1, size), position + 1 + size
    return None
