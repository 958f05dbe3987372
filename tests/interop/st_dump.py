#!/usr/bin/env python3
"""Read a safetensors file with the reference library and describe it.

Usage: st_dump.py FILE [--dump DIR] [--seed SEED]

Output, one record a line, fields separated by tabs:
    header  N                      (header length in bytes)
    metadata JSON                  (the "__metadata__" object, keys sorted, or null)
    tensor  INDEX NAME DTYPE SHAPE NBYTES SHA256
SHAPE is the dimensions joined by "x" ("-" for a scalar); tensors come in the
order of their data offsets.  --dump writes the raw bytes of tensor INDEX to
DIR/INDEX.bin.  --seed recomputes the values tests/support/synth.c promises
(its PRNG, rounded here by other means) and fails on any difference.

The reference library does the reading: safetensors.deserialize gives the raw
bytes of every dtype (numpy has no bfloat16 or float8), and safe_open with
numpy reads the dtypes numpy has, which must agree with them.  Any
disagreement or rejection is reported on stderr with exit status 1.
"""

import argparse
import hashlib
import json
import os
import struct
import sys

import numpy as np
import safetensors
import safetensors.numpy as stnp

M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def fail(msg):
    print(f"st_dump: {msg}", file=sys.stderr)
    sys.exit(1)


def stream(seed, index, count):
    """The raw 64-bit draws of synth.c for tensor `index` (splitmix64)."""
    with np.errstate(over="ignore"):
        start = np.uint64(seed) ^ (np.uint64(0xD1B54A32D192ED03) * np.uint64(index + 1))
        steps = np.arange(1, count + 1, dtype=np.uint64)
        z = start + steps * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def f8_table(ebits, mbits, has_inf):
    """Finite non-negative values of a float8 format, indexed by code 0..127."""
    bias = (1 << (ebits - 1)) - 1
    vals = []
    for code in range(128):
        e, m = code >> mbits, code & ((1 << mbits) - 1)
        if e == 0:
            v = m / (1 << mbits) * 2.0 ** (1 - bias)
        elif (has_inf and e == (1 << ebits) - 1) or (
            not has_inf and e == (1 << ebits) - 1 and m == (1 << mbits) - 1
        ):
            v = np.inf
        else:
            v = (1 + m / (1 << mbits)) * 2.0 ** (e - bias)
        vals.append(v)
    return np.array(vals)


def to_f8(x, ebits, mbits, has_inf):
    """Nearest float8 code by search in the value table, ties to the even code."""
    table = f8_table(ebits, mbits, has_inf)
    a = np.abs(x)
    hi = np.clip(np.searchsorted(table, a), 1, 126)
    lo = hi - 1
    dlo, dhi = a - table[lo], table[hi] - a
    pick = np.where((dhi < dlo) | ((dhi == dlo) & (hi % 2 == 0)), hi, lo)
    return (pick | np.where(x < 0, 0x80, 0)).astype(np.uint8)


def expected(dtype, seed, index, count):
    u = stream(seed, index, count)
    x = (u >> np.uint64(40)).astype(np.float64) * 2.0**-24 - 0.5
    if dtype == "F32":
        return x.astype("<f4").tobytes()
    if dtype == "F64":
        return x.astype("<f8").tobytes()
    if dtype == "F16":
        return x.astype("<f2").tobytes()
    if dtype == "BF16":
        b = x.astype("<f4").view("<u4").astype(np.uint64)
        b = (b + 0x7FFF + ((b >> np.uint64(16)) & np.uint64(1))) >> np.uint64(16)
        return b.astype("<u2").tobytes()
    if dtype == "F8_E5M2":
        return to_f8(x, 5, 2, True).tobytes()
    if dtype == "F8_E4M3":
        return to_f8(x, 4, 3, False).tobytes()
    if dtype == "BOOL":
        return (u >> np.uint64(63)).astype(np.uint8).tobytes()
    if dtype.startswith("U"):
        return (u >> np.uint64(60)).astype(f"<u{int(dtype[1:]) // 8}").tobytes()
    if dtype.startswith("I"):
        v = (u >> np.uint64(59)).astype(np.int64) - 16
        return v.astype(f"<i{int(dtype[1:]) // 8}").tobytes()
    fail(f"no expected values for dtype {dtype}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--dump")
    ap.add_argument("--seed", type=int)
    args = ap.parse_args()

    with open(args.file, "rb") as f:
        data = f.read()

    try:
        tensors = dict(safetensors.deserialize(data))
    except Exception as e:  # the library's own verdict on the file
        fail(f"reference library rejects {args.file}: {e}")

    # The header read by hand, only for the layout the library does not
    # report: data offsets (file order) and padding.
    (n,) = struct.unpack("<Q", data[:8])
    text = data[8 : 8 + n].decode("utf-8")
    body = text.rstrip(" ")
    if n % 8 != 0 or len(text) - len(body) >= 8 or not body.endswith("}"):
        fail(f"header of {n} bytes is not JSON padded with under 8 spaces to a multiple of 8")
    header = json.loads(body)
    meta = header.pop("__metadata__", None)
    if set(header) != set(tensors):
        fail("header names and library names differ")
    order = sorted(header, key=lambda k: header[k]["data_offsets"][0])

    numpy_ok = {}
    with safetensors.safe_open(args.file, framework="numpy") as sf:
        if sf.metadata() != meta:
            fail(f"metadata differs: library {sf.metadata()!r}, header {meta!r}")
        for name in order:
            if tensors[name]["dtype"] in stnp._TYPES:
                numpy_ok[name] = sf.get_tensor(name)

    print(f"header\t{n}")
    print("metadata\t" + json.dumps(meta, sort_keys=True, separators=(",", ":")))
    if args.dump:
        os.makedirs(args.dump, exist_ok=True)
    for index, name in enumerate(order):
        t = tensors[name]
        raw = bytes(t["data"])
        shape = t["shape"]
        if name in numpy_ok:
            arr = numpy_ok[name]
            if list(arr.shape) != list(shape) or arr.astype(arr.dtype.newbyteorder("<")).tobytes() != raw:
                fail(f"{name}: numpy view disagrees with the raw bytes")
        if args.seed is not None:
            count = int(np.prod(shape, dtype=np.int64)) if shape else 1
            want = expected(t["dtype"], args.seed, index, count)
            if want != raw:
                first = next(i for i in range(min(len(want), len(raw))) if want[i] != raw[i]) \
                    if len(want) == len(raw) else -1
                fail(f"{name} ({t['dtype']}): values differ from the synth PRNG (first byte {first})")
        if args.dump:
            with open(os.path.join(args.dump, f"{index}.bin"), "wb") as out:
                out.write(raw)
        dims = "x".join(str(d) for d in shape) if shape else "-"
        print(f"tensor\t{index}\t{name}\t{t['dtype']}\t{dims}\t{len(raw)}\t{hashlib.sha256(raw).hexdigest()}")


if __name__ == "__main__":
    main()
