#!/usr/bin/env python3
"""Write a PEFT LoRA adapter with the Hugging Face safetensors library.

Usage: write_adapter.py OUTDIR SIDECAR --dtype F32|F16|BF16 --rank R
                        [--layers L] [--hidden H] [--seed S] [--metadata JSON]

OUTDIR gets adapter_config.json and adapter_model.safetensors laid out as PEFT
saves a LLaMA-style adapter: q_proj, k_proj (grouped-query: half the outputs),
v_proj and o_proj of every layer, names "base_model.model.model.layers.N.
self_attn.M.lora_A.weight" / "lora_B.weight", plus a classifier head
("base_model.model.score.weight") as an extra tensor.

SIDECAR is a JSON file describing what was written, for the C test to compare
against:
    {"header_len": N,                 (from the written file's first 8 bytes)
     "metadata": {...} or null,       (as the library reads it back)
     "tensors": [{"name", "dtype", "shape", "data_offsets", "sha256"}, ...]}
sha256 is the hex digest of the tensor's bytes as numpy held them before
writing; data_offsets come from the header of the written file.

The library writes every dtype: F32 and F16 through safetensors.numpy.save_file,
BF16 (which numpy lacks) through safetensors.serialize_file with TensorSpec
dtype "bfloat16" over a uint16 array of bfloat16 bit patterns.  Afterwards the
file is read back with safetensors.deserialize and every tensor must match.
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


def fail(msg):
    print(f"write_adapter: {msg}", file=sys.stderr)
    sys.exit(1)


def to_bf16_bits(x):
    """float32 array -> uint16 bfloat16 bit patterns, round to nearest even."""
    u = x.astype("<f4").view("<u4").astype(np.uint64)
    u = (u + 0x7FFF + ((u >> np.uint64(16)) & np.uint64(1))) >> np.uint64(16)
    return u.astype("<u2")


def make_tensors(args):
    """name -> (array in its storage type, dtype string), ordered as PEFT does."""
    rng = np.random.default_rng(args.seed)
    h = args.hidden
    kv = h // 2
    r = args.rank
    shapes = []
    for layer in range(args.layers):
        base = f"base_model.model.model.layers.{layer}.self_attn"
        for mod, out in (("q_proj", h), ("k_proj", kv), ("v_proj", kv), ("o_proj", h)):
            shapes.append((f"{base}.{mod}.lora_A.weight", (r, h)))
            shapes.append((f"{base}.{mod}.lora_B.weight", (out, r)))
    shapes.append(("base_model.model.score.weight", (2, h)))

    tensors = {}
    for name, shape in shapes:
        x = (rng.standard_normal(shape) * 0.02).astype(np.float32)
        if args.dtype == "F32":
            tensors[name] = np.ascontiguousarray(x)
        elif args.dtype == "F16":
            tensors[name] = np.ascontiguousarray(x.astype(np.float16))
        else:
            tensors[name] = np.ascontiguousarray(to_bf16_bits(x))
    return tensors


def write_file(path, tensors, dtype, metadata):
    if dtype in ("F32", "F16"):
        stnp.save_file(tensors, path, metadata=metadata)
        return
    specs = {
        name: safetensors.TensorSpec(
            dtype="bfloat16",
            shape=list(arr.shape),
            data_ptr=arr.ctypes.data,
            data_len=arr.nbytes,
        )
        for name, arr in tensors.items()
    }
    # The arrays stay referenced by `tensors` while the library reads them.
    safetensors.serialize_file(specs, path, metadata=metadata)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("outdir")
    ap.add_argument("sidecar")
    ap.add_argument("--dtype", required=True, choices=["F32", "F16", "BF16"])
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--metadata", default='{"format": "pt"}')
    args = ap.parse_args()
    metadata = json.loads(args.metadata) if args.metadata != "null" else None

    os.makedirs(args.outdir, exist_ok=True)
    config = {
        "peft_type": "LORA",
        "task_type": "SEQ_CLS",
        "base_model_name_or_path": "interop/llama-like",
        "r": args.rank,
        "lora_alpha": 2 * args.rank,
        "lora_dropout": 0.0,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "modules_to_save": ["score"],
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    with open(os.path.join(args.outdir, "adapter_config.json"), "w") as f:
        json.dump(config, f, indent=2)

    tensors = make_tensors(args)
    path = os.path.join(args.outdir, "adapter_model.safetensors")
    write_file(path, tensors, args.dtype, metadata)

    # Read back with the library: every tensor's bytes as written.
    with open(path, "rb") as f:
        data = f.read()
    back = dict(safetensors.deserialize(data))
    if set(back) != set(tensors):
        fail("the library reads back other tensor names")
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n].decode("utf-8"))
    with safetensors.safe_open(path, framework="numpy") as sf:
        read_meta = sf.metadata()

    records = []
    for name, arr in tensors.items():
        raw = arr.tobytes()
        b = back[name]
        if bytes(b["data"]) != raw or b["dtype"] != args.dtype or list(b["shape"]) != list(arr.shape):
            fail(f"{name}: the library reads back other bytes, dtype or shape")
        records.append(
            {
                "name": name,
                "dtype": args.dtype,
                "shape": list(arr.shape),
                "data_offsets": header[name]["data_offsets"],
                "sha256": hashlib.sha256(raw).hexdigest(),
            }
        )
    with open(args.sidecar, "w") as f:
        json.dump({"header_len": n, "metadata": read_meta, "tensors": records}, f, indent=1)


if __name__ == "__main__":
    main()
