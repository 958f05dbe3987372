#!/usr/bin/env python3
"""Generate safetensors files with headers at the edges of the format, and
give the reference implementation's verdict on each.

Usage: st_header_cases.py OUTDIR [--count N] [--seed SEED]

Writes OUTDIR/NNNN.safetensors (N files, default 800) and OUTDIR/verdicts.txt,
one line a file: "NNNN ok" or "NNNN reject", then a tab and what the case
is.  The verdict is safetensors.deserialize's (the Rust core of the Hugging
Face library), never this script's guess.  The headers are built as text,
not with a JSON library, so that they can hold what a JSON library would
never write: escapes, number spellings, raw control characters, deep
nesting, dtype names, and mixes of them.
"""

import argparse
import os
import random
import struct
import sys

import safetensors

DTYPES = ["F32", "F16", "BF16", "F64", "U8", "I8", "BOOL", "I16", "U16", "I32", "U32",
          "I64", "U64", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ",
          "C64", "F4", "F6_E2M3", "F6_E3M2", "f32", "F7", "", "F16\\u0000xyz", "F1\\u0036"]
SIZES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "U8": 1, "I8": 1, "BOOL": 1, "I16": 2,
         "U16": 2, "I32": 4, "U32": 4, "I64": 8, "U64": 8, "F8_E5M2": 1, "F8_E4M3": 1,
         "F8_E8M0": 1, "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1, "C64": 8}

# Ways to write an unsigned integer, of which only the first is plain.
def int_spellings(v):
    return [str(v), "%d.0" % v, "%de0" % v, "%dE+0" % v, "0%d" % v, "%d." % v,
            "-%d" % v if v else "-0", "%.2fe2" % (v / 100.0) if v else "0e5"]

# Strings, each a JSON string body as written in the header.
NAME_FORMS = [
    "m.lora_A.weight", "m.lora_B.weight", "x", "a b", "caf\\u00e9", "\\ud83d\\ude00",
    "x\\u0000y", "x\\uZZZZ", "x\\u12", "x\\ud800", "x\\udc00", "x\\ud800\\u0041", "x\\q",
    "x\ty", "x\ny", "x\ry", "x\\ty", "x\\\"y", "x\\/y", "m.lora_A.weight\\u0000junk",
]

NUMBERS = ["0", "1", "-1", "1.5", "1e5", "1e400", "-1e400", "1e-400", "01", "1.", ".5",
           "-", "1e", "1e+", "123456789012345678901234567890", "-0", "0.0", "2E-3"]


def entry(rng, dtype, shape, begin, end, extra=""):
    spell = lambda v: rng.choice(int_spellings(v)) if rng.random() < 0.15 else str(v)
    parts = ['"dtype":"%s"' % dtype,
             '"shape":[%s]' % ",".join(spell(d) for d in shape),
             '"data_offsets":[%s,%s]' % (spell(begin), spell(end))]
    if rng.random() < 0.05:
        parts[0] = '"dtype\\u0000x":"%s",' % dtype + parts[0]
    if rng.random() < 0.05:
        parts[1] = '"sh\\u0061pe":[%s]' % ",".join(str(d) for d in shape)
    rng.shuffle(parts)
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}"


def nested(depth):
    return "[" * depth + "]" * depth


def make_case(rng):
    """A header and its data section; a short description."""
    n = rng.randint(1, 3)
    tensors, offset, what = [], 0, []
    for i in range(n):
        dtype = rng.choice(DTYPES) if rng.random() < 0.3 else "F32"
        size = SIZES.get(dtype, 1)
        shape = [rng.randint(0, 3) for _ in range(rng.randint(0, 2))]
        count = 1
        for d in shape:
            count *= d
        nbytes = count * size
        name = rng.choice(NAME_FORMS) if rng.random() < 0.4 else "t%d" % i
        extra = ""
        r = rng.random()
        if r < 0.15:
            extra = '"z":%s' % rng.choice(NUMBERS)
            what.append("number " + extra[4:])
        elif r < 0.25:
            d = rng.choice([60, 120, 124, 125, 126, 127, 128, 200])
            extra = '"z":%s' % nested(d)
            what.append("depth %d" % (d + 2))
        elif r < 0.32:
            extra = '"z":"%s"' % rng.choice(NAME_FORMS)
            what.append("ignored string")
        tensors.append((name, entry(rng, dtype, shape, offset, offset + nbytes, extra)))
        what.append("%s %s %s" % (name, dtype, shape))
        offset += nbytes
    members = ['"%s":%s' % t for t in tensors]
    if rng.random() < 0.2:
        key = rng.choice(["k", "format", "x\\u0000y", "x\ty", "\\ud800"])
        val = rng.choice(["pt", "a\\nb", "a\nb", "\\u0000", "caf\\u00e9"])
        members.insert(0, '"__metadata__":{"%s":"%s"}' % (key, val))
        what.append("metadata %r:%r" % (key, val))
    rng.shuffle(members)
    header = "{" + ",".join(members) + "}"
    if rng.random() < 0.05:
        header = " " + header + "\n"
    return header.encode("utf-8"), bytes(offset), "; ".join(what)


def verdict(data):
    try:
        safetensors.deserialize(data)
        return "ok"
    except Exception:  # the reference refused it; its reason is not needed
        return "reject"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("outdir")
    ap.add_argument("--count", type=int, default=800)
    ap.add_argument("--seed", type=int, default=17)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    os.makedirs(args.outdir, exist_ok=True)
    counts = {"ok": 0, "reject": 0}
    with open(os.path.join(args.outdir, "verdicts.txt"), "w") as out:
        for i in range(args.count):
            header, body, what = make_case(rng)
            data = struct.pack("<Q", len(header)) + header + body
            with open(os.path.join(args.outdir, "%04d.safetensors" % i), "wb") as f:
                f.write(data)
            v = verdict(data)
            counts[v] += 1
            out.write("%04d %s\t%s\n" % (i, v, what.replace("\n", "\\n").replace("\t", "\\t")))
    print("%d cases: %d the reference accepts, %d it rejects" % (args.count, counts["ok"],
                                                                counts["reject"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
