"""The model's own logic, in plain Python: y = a * x + b for every element, with `a` and `b`
from the config ("a,b"). Nothing here knows about WebAssembly, so `python3 -m unittest` tests
it natively; app.py connects it to sluice."""

import struct


def parse_config(config: bytes) -> tuple:
    """`a,b` as two floats; ValueError says what was wrong."""
    text = config.decode("utf-8").strip()
    a, comma, b = text.partition(",")
    if not comma:
        raise ValueError(f"config must be `a,b`, got `{text}`")
    return float(a), float(b)


def affine(a: float, b: float, data: bytes) -> bytes:
    """Little-endian FP32 values in, a * x + b for each, little-endian FP32 out."""
    count = len(data) // 4
    values = struct.unpack(f"<{count}f", data)
    return struct.pack(f"<{count}f", *(a * x + b for x in values))
