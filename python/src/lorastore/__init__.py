"""lorastore: LoRA adapters shared by every process of a machine, read in place.

A client of lorastored.  Adapters are leased from the daemon and their
tensors leave this package through DLPack, without a copy: numpy.from_dlpack
and torch.from_dlpack see the daemon's own read-only memory.  A tensor view
keeps its adapter's lease alive until the view is freed.

    import numpy as np
    import lorastore

    with lorastore.connect() as conn:
        with conn.acquire("acme/support") as ad:
            a = np.from_dlpack(ad.tensor("model.layers.0.self_attn.q_proj", "A"))
"""
from collections import namedtuple as _namedtuple

from . import _lorastore as _c
from ._lorastore import (  # noqa: F401  (re-exported)
    __version__,
    DEFAULT_SOCKET,
    Corrupt,
    ConnectionClosed,
    DeviceError,
    Error,
    InvalidAdapter,
    InvalidArgument,
    NoSpace,
    NotFound,
    PermissionDenied,
    Timeout,
    strerror,
)

__all__ = [
    "connect", "Connection", "Adapter", "Tensor", "TensorInfo", "Plan", "DevicePlan", "Error", "NotFound",
    "PermissionDenied", "Corrupt", "NoSpace", "InvalidAdapter", "ConnectionClosed",
    "InvalidArgument", "Timeout", "DeviceError", "DEFAULT_SOCKET", "strerror",
]

TensorInfo = _namedtuple("TensorInfo", "module kind layer dtype shape rank scale")
TensorInfo.__doc__ = """One tensor of an adapter's table.

module: e.g. "model.layers.3.self_attn.q_proj"; kind: "A", "B", "extra" or
"magnitude"; layer: the layer index or -1; dtype: as safetensors names it;
shape: a tuple; rank and scale: of the module (A and B tensors), else 0."""


class Tensor:
    """One tensor of an acquired adapter, in the daemon's read-only memory.

    numpy.from_dlpack(t) and torch.from_dlpack(t) share it without a copy
    (DLPack, read-only); the view keeps the adapter's lease alive.
    """

    __slots__ = ("_t",)

    def __init__(self, t):
        self._t = t

    @property
    def shape(self) -> tuple:
        """The shape."""
        return self._t.shape

    @property
    def dtype(self) -> str:
        """The dtype as safetensors names it ("F32", "F16", "BF16", ...)."""
        return self._t.dtype

    @property
    def module(self) -> str:
        """The module the tensor belongs to."""
        return self._t.module

    @property
    def device(self) -> int:
        """The CUDA ordinal of the GPU it is on; -1 in host memory."""
        return self._t.device

    @property
    def nbytes(self) -> int:
        """Bytes of data."""
        return self._t.nbytes

    @property
    def data_ptr(self) -> int:
        """The address of the data (a device address on a GPU)."""
        return self._t.data_ptr

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        return self._t.__dlpack__(stream=stream, max_version=max_version,
                                  dl_device=dl_device, copy=copy)

    def __dlpack_device__(self):
        return self._t.__dlpack_device__()

    def numpy(self):
        """A read-only numpy view, without a copy.  BF16 tensors come as
        ml_dtypes.bfloat16 arrays (numpy has no bfloat16 of its own)."""
        import numpy as np

        if self.device >= 0:
            raise InvalidArgument("a tensor in GPU memory: use torch.from_dlpack")
        if self.dtype == "BF16":
            import ml_dtypes

            return np.from_dlpack(self._t._view_as("U16")).view(ml_dtypes.bfloat16)
        return np.from_dlpack(self._t)

    def __repr__(self):
        return f"<lorastore.Tensor {self.module} {self.dtype}{list(self.shape)}>"


_PEFT_SUFFIX = {"A": ".lora_A.weight", "B": ".lora_B.weight",
                "magnitude": ".lora_magnitude_vector", "extra": ""}


class Adapter:
    """An acquired adapter version: a lease on the daemon's copy.

    release() (or leaving a with block) gives up the adapter's hold on the
    lease; tensors still viewed keep it until they are freed.
    """

    __slots__ = ("_a",)

    def __init__(self, a):
        self._a = a

    name = property(lambda self: self._a.name, doc="The adapter's name.")
    version = property(lambda self: self._a.version, doc="The version number.")
    digest = property(lambda self: self._a.digest.hex(), doc="SHA-256 content digest, hex.")
    generation = property(lambda self: self._a.generation, doc="Unique across the store.")
    rank = property(lambda self: self._a.rank, doc="The config's r.")
    scale = property(lambda self: self._a.scale, doc="alpha / r (or / sqrt(r)).")
    dtype = property(lambda self: self._a.dtype, doc="F32, F16, BF16 or mixed.")
    tier = property(lambda self: self._a.tier, doc='"host" or "device".')
    tensor_bytes = property(lambda self: self._a.tensor_bytes,
                            doc="The adapter's size: its tensors' bytes (as ls and show give it).")
    resident_bytes = property(lambda self: self._a.resident_bytes,
                              doc="Bytes it takes in its tier's memory (data region and table"
                                  " pages; a device tier's table is in host memory).")
    device = property(lambda self: self._a.device, doc="CUDA ordinal; -1 on host.")
    device_uuid = property(lambda self: self._a.device_uuid, doc='GPU UUID; "" on host.')
    released = property(lambda self: self._a.released, doc="True after release().")

    def release(self) -> None:
        """Give up this adapter's hold on its lease."""
        self._a.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
        return False

    def tensors(self) -> list:
        """Every tensor of the adapter, as TensorInfo."""
        return [TensorInfo(*row) for row in self._a._tensor_rows()]

    def tensor(self, module: str, kind: str) -> Tensor:
        """The tensor of module and kind ("A", "B", "extra", "magnitude")."""
        return Tensor(self._a.tensor(module, kind))

    def peft_config(self) -> dict:
        """The PEFT config fields that matter to serving, with PEFT's names (r,
        lora_alpha, target_modules, use_rslora, rank_pattern, alpha_pattern,
        fan_in_fan_out, bias, use_dora, base_model_name_or_path, modules_to_save,
        task_type), as a dict."""
        return self._a.peft_config()

    def state_dict(self, framework: str | None = None) -> dict:
        """PEFT-style names ("base_model.model.<module>.lora_A.weight", ...) to tensors,
        all sharing the daemon's read-only memory: lorastore Tensors (framework None),
        torch tensors ("torch", through DLPack; a device tier's on its GPU) or numpy
        arrays ("numpy", host memory)."""
        if framework == "torch":
            import torch

            view = torch.from_dlpack
        elif framework == "numpy":
            view = Tensor.numpy
        elif framework is None:
            def view(t):
                return t
        else:
            raise InvalidArgument(f"framework {framework!r}: None, \"torch\" or \"numpy\"")
        out = {}
        for i, row in enumerate(self._a._tensor_rows()):
            module, kind = row[0], row[1]
            name = "base_model.model." + module + _PEFT_SUFFIX[kind]
            out[name] = view(Tensor(self._a._tensor_at(i)))
        return out

    def __repr__(self):
        state = " released" if self.released else ""
        return f"<lorastore.Adapter {self.name}@{self.version} {self.tier}{state}>"


class Connection:
    """A connection to lorastored.  Calls on it are serialized: threads may share it.

    close() (or leaving a with block) raises lorastore.Error while leases of
    the connection are alive, and unmaps nothing under a live view.
    """

    __slots__ = ("_c",)

    def __init__(self, socket: str | None = None, connect_timeout_ms: int = 0):
        self._c = _c.Connection(socket, connect_timeout_ms)

    def close(self) -> None:
        """Close the connection; raises while leases of it are alive."""
        self._c.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    @property
    def closed(self) -> bool:
        return self._c.closed

    @property
    def live_leases(self) -> int:
        """Leases still alive: adapters not released, or tensors still viewed."""
        return self._c.live_leases

    def acquire(self, ref: str, timeout: float | None = None, tier: str = "host",
                device: str | None = None) -> Adapter:
        """Lease ref ("name" for the latest version, "name@N" a fixed one), loading it
        first when it is not resident.  timeout: seconds (None: as long as the load
        takes).  tier "device": the copy in a GPU's memory (device: its UUID; None for
        the GPU of the current CUDA context)."""
        return Adapter(self._c.acquire(ref, timeout, tier, device))

    def list(self, prefix: str = "") -> list:
        """Every version whose name begins with prefix, as dicts."""
        return self._c.list(prefix)

    def show(self, ref: str) -> dict:
        """One version's record."""
        return self._c.show(ref)

    def stats(self) -> dict:
        """The daemon's counters and tiers, as `lorastore stats --json` gives them;
        "origin" is None, or the daemon's traffic with its origin (lorastored --origin)."""
        return self._c.stats()

    def load(self, ref: str) -> str:
        """Make a version resident without leasing it; returns the "name@version" that
        ref named (as `lorastore load` prints it)."""
        return self._c.load(ref)

    def prefetch(self, refs) -> None:
        """Ask the daemon to load refs in the background."""
        self._c.prefetch(list(refs))

    def import_dir(self, path, name: str | None = None, dtype: str = "keep",
                   allow_nonfinite: bool = False, allow_new_base: bool = False) -> dict:
        """Import the PEFT adapter in folder path; returns the version's entry.

        name None takes the folder's name, unless it says nothing of the adapter
        ("adapter", "outputs", "checkpoint-14", ...): InvalidArgument then.  The same
        content as the name's latest version adds nothing: that version comes back with
        "unchanged" True.  A new version for another base model, or other modules, than
        the latest's raises InvalidAdapter unless allow_new_base."""
        return self._c.import_dir(path, name, dtype, allow_nonfinite, allow_new_base)

    def delete(self, ref: str, all: bool = False) -> dict:
        """Delete version "name@N", or with all=True every version of "name"; returns
        {"versions", "blob_bytes", "freed_bytes"}.  Memory still leased is freed when its
        last lease ends; blob files no version uses are removed at once.  A version an
        alias points at is not deleted (Error with code LORASTORE_E_ALIASED)."""
        if "@" not in ref and not all:
            raise InvalidArgument(f"{ref!r} names every version of it: pass all=True to "
                                  "delete them all, or name@N for one")
        if all and "@" in ref:
            raise InvalidArgument("all=True takes a name without @N")
        return self._c.delete(ref)

    def tag(self, ref: str, alias: str) -> dict:
        """Point alias ("name:tag") at ref ("name" for its latest version now, or
        "name@N"): created or moved atomically; returns the version's entry.  An alias is
        taken wherever a reference is (acquire, load, show, the vLLM plugin)."""
        return self._c.tag(ref, alias)

    def untag(self, alias: str) -> None:
        """Remove alias."""
        self._c.untag(alias)

    def export(self, ref: str, path) -> str:
        """Write version ref into folder path (made when missing, holding neither file) as
        adapter_config.json and adapter_model.safetensors, which PEFT loads and which import
        again to the same digest; returns the "name@version" written."""
        return self._c.export(ref, path)

    def evict(self, ref: str) -> None:
        """Drop a version from the daemon's memory."""
        self._c.evict(ref)

    def verify(self, ref: str | None = None) -> int:
        """Check blobs against their checksums; returns how many are bad."""
        return self._c.verify(ref)

    def gc(self) -> dict:
        """Remove blobs that no version refers to."""
        return self._c.gc()

    def rebuild(self) -> dict:
        """Build the catalog again from ref files and blobs (admin):
        {"versions": restored, "skipped": ref files whose blob is broken}."""
        return self._c.rebuild()

    def plan(self, adapters, in_features: int, slices, factors=None):
        """Prepare held adapters for one layer whose input has in_features columns.
        slices: (module, out_offset, out) for each module the layer's output packs
        (one for a plain projection, several for a fused q/k/v); factors: one scale
        factor per adapter (None: 1).  Indices in batches follow the adapters' order.
        Adapters of the host tier give a Plan (CPU arrays); adapters of one GPU's
        device tier give a DevicePlan (GPU arrays)."""
        adapters = list(adapters)
        slices = [tuple(s) for s in slices]
        factors = None if factors is None else [float(f) for f in factors]
        # The extension modules take the Adapter objects (their leases keep the memory).
        args = ([a._a for a in adapters], int(in_features), slices, factors)
        if {a.tier for a in adapters} == {"device"}:
            try:
                from . import _cuda
            except ImportError as e:
                raise DeviceError(f"device apply is not available here: {e}") from None
            return DevicePlan(_cuda.plan_create(*args))
        return Plan(_c.plan_create(*args))


def _batch(token_adapter, segments, gpu_indices: bool):
    """The batch's index arrays: int32 token indices (left as they are when they
    are already on the GPU and gpu_indices allows it) or (start, len, adapter) rows."""
    import numpy as np

    tok = seg = None
    if token_adapter is not None:
        on_gpu = gpu_indices and hasattr(token_adapter, "__dlpack_device__") and \
            token_adapter.__dlpack_device__()[0] == 2
        tok = token_adapter if on_gpu else np.ascontiguousarray(token_adapter, dtype=np.int32)
    if segments is not None:
        seg = np.ascontiguousarray(segments, dtype=np.int32).reshape(-1, 3)
    return tok, seg


def _is_numpy_bf16(a) -> bool:
    return type(a).__module__ == "numpy" and getattr(a.dtype, "name", "") == "bfloat16"


class Plan:
    """Held adapters prepared for one layer: every (adapter, module) tensor looked up
    and checked once.  The plan keeps the adapters' leases while it lives."""

    __slots__ = ("_p",)

    def __init__(self, p):
        self._p = p

    def apply(self, x, y, token_adapter=None, segments=None, threads: int = 1) -> None:
        """y[t, slice columns] += scale * (x[t] A^T) B^T for each token's adapter, in place.

        x [n_tokens, in] and y [n_tokens, width]: C-contiguous arrays that export DLPack
        (numpy arrays, torch tensors) of one dtype, float32, float16 or bfloat16.  Give
        token_adapter (one index per token, -1: none) or segments ((start, len,
        adapter) rows).  y is unchanged when the call raises."""
        import numpy as np

        tok, seg = _batch(token_adapter, segments, gpu_indices=False)
        bits = [_is_numpy_bf16(x), _is_numpy_bf16(y)]
        if bits[0] != bits[1]:
            raise InvalidArgument("x and y must share one dtype")
        if bits[0]:
            # numpy's bfloat16 (ml_dtypes) cannot export DLPack: pass the bits.
            x, y = x.view(np.uint16), y.view(np.uint16)
        self._p.apply(x, y, tok, seg, int(threads), bits[0])

    def workspace_size(self, n_tokens: int) -> int:
        """Bytes of scratch memory a batch of n_tokens uses (allocated per call)."""
        return self._p.workspace_size(n_tokens)


def _stream_handle(stream):
    """A cudaStream_t as an int: from an int, or an object with .cuda_stream (torch)."""
    if stream is None:
        return None
    return int(getattr(stream, "cuda_stream", stream))


class DevicePlan:
    """Adapters of a GPU's device tier prepared for one layer (liblorastore_cuda).
    The plan keeps the adapters' leases while it lives."""

    __slots__ = ("_p",)

    def __init__(self, p):
        self._p = p

    @property
    def device(self) -> int:
        """The CUDA ordinal of the adapters' GPU."""
        return self._p.device

    def apply(self, x, y, token_adapter=None, segments=None, threads: int = 1, stream=None,
              cublas=None) -> None:
        """Enqueue y[t, slice columns] += scale * (x[t] A^T) B^T on stream and return.

        x and y: C-contiguous 2-D arrays in the GPU's memory that export DLPack (torch
        CUDA tensors) of one dtype, float32, float16 or bfloat16.  token_adapter: a
        GPU int32 array, or host indices (copied); segments: host (start, len,
        adapter) rows.  stream: a cudaStream_t as an int, or a torch.cuda.Stream
        (None: the legacy default stream); cublas: a cublasHandle_t as an int (its
        stream and pointer mode are put back).  threads is ignored (the CPU's)."""
        tok, seg = _batch(token_adapter, segments, gpu_indices=True)
        self._p.apply(x, y, tok, seg, _stream_handle(stream),
                      None if cublas is None else int(cublas), False)

    def bad_indices(self, stream=None, reset: bool = False) -> int:
        """Batch indices the GPU found out of range so far (waits for stream)."""
        return self._p.bad_indices(_stream_handle(stream), bool(reset))


def connect(socket: str | None = None, connect_timeout_ms: int = 0) -> Connection:
    """Connect to lorastored at socket, or $LORASTORE_SOCKET, or DEFAULT_SOCKET.

    The connect and handshake give up (lorastore.Timeout) after
    connect_timeout_ms milliseconds: 0 takes $LORASTORE_CONNECT_TIMEOUT_MS,
    else 10,000; a negative value waits as long as it takes.
    """
    return Connection(socket, connect_timeout_ms)
