"""lorastore as vLLM's source of LoRA adapters: a vLLM plugin.

Installed with the package under the entry-point group ``vllm.general_plugins``
(name ``lorastore``), so vLLM calls register() in each of its processes (the
API server, the engine core, the workers).  It does nothing unless
``LORASTORE_VLLM=1``; the daemon is ``$LORASTORE_SOCKET`` as everywhere.  With
it switched on:

- **Paths**: ``lorastore://NAME`` (the latest version when the worker loads
  it) and ``lorastore://NAME@VERSION`` are LoRA paths wherever vLLM takes one:
  ``LoRARequest(name, id, "lorastore://tenant/a@3")``, ``--lora-modules
  name=lorastore://tenant/a``, ``POST /v1/load_lora_adapter``.
- **Worker load**: for those paths the worker's adapter load acquires the
  version from the daemon and builds vLLM's LoRA model from the daemon's
  tensors (DLPack, no file opened, nothing parsed).  vLLM scales B in place
  (``LoRALayerWeights.optimize``), so B is copied, once, in vLLM's LoRA dtype;
  A (and any full classifier weight) is the daemon's read-only memory itself
  when vLLM's LoRA dtype is the adapter's (else vLLM converts it: a copy).
  The lease lasts as long as vLLM's LoRA model: vLLM's removal or LRU eviction
  frees the tensors, and the lease ends with them.
- **Resolver**: with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=1``, a request whose
  ``model`` is a name in lorastore (``tenant/a`` or ``tenant/a@3``) is served
  without a load call.  It resolves to a fixed version, and its
  ``lora_int_id`` is derived from the version's generation (unique across
  the store), so every vLLM process gives one version one id and a new
  version a new id.  A plain name follows the latest version: each request
  naming it checks the daemon (one round trip) and a new import is a new
  adapter for vLLM, never the old one under the new name.

The base model: an adapter whose ``base_model_name_or_path`` differs from
vLLM's model is still served (the log says so once per version): names of
base models are paths or hub ids that rarely agree between the machine that
trained and the one that serves.  What must agree is checked instead: every
module of the adapter must be one vLLM can put a LoRA on (as vLLM's own
loader refuses an unexpected module), and vLLM checks the shapes when it
places the adapter.

Only private parts of vLLM give these seams (its worker load and the OpenAI
server's adapter table): they are wrapped here, in one place each, for the
vLLM versions in _SUPPORTED, and register() fails loudly on any other.
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading

SCHEME = "lorastore://"
# vLLM versions whose private seams this module wraps (checked in register()).
_SUPPORTED = ("0.32.", "0.33.")
# lora_int_id = _ID_BASE + generation: above the small ids vLLM's own counters
# give adapters loaded from directories in the same server.
_ID_BASE = 1 << 30

log = logging.getLogger("lorastore.vllm")

_conn_lock = threading.Lock()
_conn = None
# (lora_int_id, ref without a version) -> "name@N" the worker loaded first: a
# plain name (or an alias) loaded under one id stays that version when vLLM
# loads it again.
_pinned: dict = {}
_warned_base: set = set()


def lora_int_id(generation: int) -> int:
    """The lora_int_id of the version with this generation (≥ 1, the same in
    every process, distinct between versions)."""
    return _ID_BASE + int(generation)


def parse(path: str) -> str:
    """The lorastore reference ("name", "name@N" or an alias "name:tag") of a
    lorastore:// path."""
    if not path.startswith(SCHEME):
        raise ValueError(f"not a lorastore path: {path!r}")
    ref = path[len(SCHEME):]
    if not ref:
        raise ValueError(f"a lorastore path names an adapter: {path!r}")
    return ref


def connection():
    """This process's connection to the daemon ($LORASTORE_SOCKET), opened at
    first use and opened again after the daemon went away."""
    global _conn
    import lorastore

    with _conn_lock:
        if _conn is None or _conn.closed:
            _conn = lorastore.connect()
        return _conn


def _call(fn):
    """fn(connection), once more on a fresh connection when the daemon
    restarted under the old one."""
    import lorastore

    global _conn
    try:
        return fn(connection())
    except lorastore.ConnectionClosed:
        with _conn_lock:
            _conn = None
        return fn(connection())


def register() -> None:
    """The entry point (vllm.general_plugins): wraps vLLM's seams when
    LORASTORE_VLLM=1; does nothing otherwise."""
    if os.environ.get("LORASTORE_VLLM") != "1":
        return
    import vllm

    if not vllm.__version__.startswith(_SUPPORTED):
        raise RuntimeError(
            f"lorastore.vllm wraps vLLM's worker adapter load and its OpenAI server's adapter "
            f"table as vLLM {' and '.join(v + 'x' for v in _SUPPORTED)} have them; this is "
            f"vLLM {vllm.__version__}: install one of those, or unset LORASTORE_VLLM")
    _wrap_worker_load()
    _register_resolver()
    _wrap_serving_models()


# ---------------------------------------------------------------- worker side

def _expected_modules(manager) -> set:
    """The module names (last components) vLLM can put a LoRA on: packed
    modules (qkv_proj) stand for their parts (q_proj, k_proj, v_proj)."""
    packed = manager.packed_modules_mapping
    out = set()
    for m in manager.supported_lora_modules:
        out.update(packed.get(m, [m]))
        if m == "experts":
            out.add(m)
    return out


def _check_modules(keys, expected, peft_helper, weights_mapper, skip_prefixes, ref):
    from vllm.lora.lora_model import LoRAModel
    from vllm.lora.utils import is_base_embedding_weights, parse_fine_tuned_lora_name

    keep = set(peft_helper.modules_to_save or ())
    unexpected = []
    for key in keys:
        if is_base_embedding_weights(key) or "base_layer" in key:
            continue
        if skip_prefixes and LoRAModel._should_skip_module(key, skip_prefixes):
            continue
        module, _ = parse_fine_tuned_lora_name(key, weights_mapper)
        if ".experts" in module:
            last = module[module.find(".experts") + 1:]
        else:
            last = module.rsplit(".", 1)[-1]
        if last not in expected and last not in keep:
            unexpected.append(module)
    if unexpected:
        raise ValueError(f"lorastore: {ref} has LoRA modules this model does not have: "
                         f"{sorted(set(unexpected))[:8]}; the model takes LoRA on "
                         f"{sorted(expected)}")


def _acquire(ref: str, device):
    """A lease on ref: the device tier of the worker's GPU when the daemon
    serves that GPU, else the host tier."""
    import lorastore

    if device is not None and getattr(device, "type", str(device)) == "cuda":
        try:
            return _call(lambda c: c.acquire(ref, tier="device"))
        except lorastore.NotFound:
            raise
        except lorastore.Error as e:
            log.info("lorastore: %s from the host tier: no device tier for this GPU (%s)", ref, e)
    return _call(lambda c: c.acquire(ref))


def load_lora_model(manager_owner, lora_request):
    """vLLM's LoRAModel for a lorastore:// request, built from the daemon's
    tensors; manager_owner is vLLM's WorkerLoRAManager."""
    import torch
    from vllm.exceptions import LoRAAdapterNotFoundError
    from vllm.lora.peft_helper import PEFTHelper

    import lorastore

    self = manager_owner
    ref = parse(lora_request.lora_path)
    pin_key = (lora_request.lora_int_id, ref)
    if "@" not in ref and pin_key in _pinned:
        ref = _pinned[pin_key]
    try:
        ad = _acquire(ref, self.device)
    except lorastore.NotFound as e:
        log.warning("lorastore: %s: %s", lora_request.lora_path, e)
        raise LoRAAdapterNotFoundError(lora_request.lora_name, lora_request.lora_path) from e
    try:
        if "@" not in ref:
            # "name@N" of what "name" or an alias ("name:tag") gave the first time.
            _pinned[pin_key] = f"{ad.name}@{ad.version}"
        vref = f"{ad.name}@{ad.version}"
        cfg = dict(ad.peft_config())
        for k in ("rank_pattern", "alpha_pattern"):
            cfg[k] = cfg.get(k) or {}
        cfg["modules_to_save"] = cfg.get("modules_to_save") or None
        cfg["vllm_max_position_embeddings"] = self.max_position_embeddings
        peft_helper = PEFTHelper.from_dict(cfg)
        peft_helper.validate_legal(self.lora_config)

        model = self._adapter_manager.model
        mapper = getattr(model, "hf_to_vllm_mapper", None)
        if mapper is not None:
            mapper = mapper.get_rename_mapper()
        skip = getattr(model, "lora_skip_prefixes", None)
        base = cfg.get("base_model_name_or_path")
        served = getattr(getattr(model, "config", None), "name_or_path", None)
        if base and served and base != served and vref not in _warned_base:
            _warned_base.add(vref)
            log.warning("lorastore: %s was trained on %r; serving it on %r (its modules fit)",
                        vref, base, served)

        views = ad.state_dict()
        _check_modules(views, _expected_modules(self._adapter_manager), peft_helper, mapper, skip,
                       vref)
        dtype = self.lora_config.lora_dtype
        on_gpu = ad.device >= 0
        tensors = {}
        for key, view in views.items():
            t = torch.from_dlpack(view)
            if key.endswith(".lora_B.weight") or key.endswith("lora_embedding_B"):
                # vLLM multiplies B by the scale in place: its own copy, made
                # once, in its LoRA dtype.
                t = t.to(dtype=dtype if isinstance(dtype, torch.dtype) else t.dtype, copy=True)
            tensors[key] = t
        lora = self._lora_model_cls.from_lora_tensors(
            lora_model_id=lora_request.lora_int_id,
            tensors=tensors,
            peft_helper=peft_helper,
            device=f"cuda:{ad.device}" if on_gpu else "cpu",
            dtype=dtype,
            model_vocab_size=self.vocab_size,
            weights_mapper=mapper,
            skip_prefixes=skip,
        )
        lora.is_3d_lora_weight = lora_request.is_3d_lora_weight
        self._adapter_manager._validate_moe_lora_format(lora)
        self._adapter_manager._validate_modules_to_save(lora)
        self._adapter_manager._validate_token_classification_lora(lora)
        log.info("lorastore: loaded %s as LoRA %d from the %s tier", vref,
                 lora_request.lora_int_id, ad.tier)
        return lora
    finally:
        # The tensors hold the lease from here on: it ends when vLLM drops them.
        ad.release()


def _wrap_worker_load() -> None:
    from vllm.lora.worker_manager import WorkerLoRAManager

    original = WorkerLoRAManager._load_adapter
    if getattr(original, "_lorastore", False):
        return

    def _load_adapter(self, lora_request):
        if lora_request.lora_path.startswith(SCHEME):
            return load_lora_model(self, lora_request)
        return original(self, lora_request)

    _load_adapter._lorastore = True
    _load_adapter.__wrapped__ = original
    WorkerLoRAManager._load_adapter = _load_adapter


# ---------------------------------------------------------------- server side

def _lookup(name: str):
    """The version record of name (latest) or name@N, or (None, reason)."""
    import lorastore

    try:
        return _call(lambda c: c.show(name)), None
    except (lorastore.NotFound, lorastore.InvalidArgument) as e:
        return None, str(e)


def _request_for(rec):
    from vllm.lora.request import LoRARequest

    vref = f"{rec['name']}@{rec['version']}"
    # Named by version: vLLM keys its prefix cache and batch sets by the
    # LoRA's name, and the answer's "model" says which version served it.
    return LoRARequest(lora_name=vref, lora_int_id=lora_int_id(rec["generation"]),
                       lora_path=SCHEME + vref)


def _make_resolver_class():
    from vllm.lora.resolver import LoRAResolver

    class LorastoreResolver(LoRAResolver):
        """Resolves a model name that lorastore has to a fixed version."""

        async def resolve_lora(self, base_model_name, lora_name):
            rec, _ = await asyncio.to_thread(_lookup, lora_name)
            return None if rec is None else _request_for(rec)

    return LorastoreResolver


_resolver = None
# model name -> why lorastore does not have it, from the resolve to the answer.
_reasons: dict = {}


def _register_resolver() -> None:
    global _resolver
    from vllm.lora.resolver import LoRAResolverRegistry

    if _resolver is None:
        _resolver = _make_resolver_class()()
    LoRAResolverRegistry.register_resolver("lorastore", _resolver)


class _Tracked(dict):
    """The OpenAI server's adapter table (model name -> LoRARequest), where
    names the plugin resolved without a version follow the latest version:
    vLLM looks a request's model up here (`in`, then `[]`) before anything
    else, so the check happens on `in`."""

    def __init__(self, base):
        super().__init__(base)
        self.latest = set()

    def __contains__(self, key):
        if key in self.latest:
            import lorastore

            try:
                rec, _ = _lookup(key)
            except lorastore.Error as e:
                # The daemon is away: the version known last serves on.
                log.warning("lorastore: cannot check the latest version of %r: %s", key, e)
                return super().__contains__(key)
            if rec is None:
                self.latest.discard(key)
                super().pop(key, None)
                return False
            cur = super().get(key)
            if cur is None or cur.lora_int_id != lora_int_id(rec["generation"]):
                super().__setitem__(key, _request_for(rec))
        return super().__contains__(key)

    def __delitem__(self, key):
        self.latest.discard(key)
        super().__delitem__(key)


def _wrap_serving_models() -> None:
    try:
        from vllm.entrypoints.openai.models.serving import OpenAIServingModels
    except ImportError:
        return
    original = OpenAIServingModels.resolve_lora
    if getattr(original, "_lorastore", False):
        return

    async def resolve_lora(self, lora_name):
        from http import HTTPStatus

        from vllm.entrypoints.serve import create_error_response

        if not isinstance(self.lora_requests, _Tracked):
            self.lora_requests = _Tracked(self.lora_requests)
        rec, reason = await asyncio.to_thread(_lookup, lora_name)
        if rec is None:
            if len(_reasons) > 1024:  # names resolved outside _check_model
                _reasons.clear()
            _reasons[lora_name] = reason
            return await original(self, lora_name)
        # vLLM's own resolve would number the adapter from a counter of this
        # process; the id must be the version's in every process.
        async with self.lora_resolver_lock[lora_name]:
            if lora_name in self.lora_requests:
                return self.lora_requests[lora_name]
            req = _request_for(rec)
            try:
                await self.engine_client.add_lora(req)
            except Exception as e:  # noqa: BLE001 (the engine's error, as vLLM answers it)
                return create_error_response(
                    message=f"LoRA adapter '{lora_name}' was found in lorastore but could not "
                            f"be loaded: {e}",
                    err_type="BadRequestError", status_code=HTTPStatus.BAD_REQUEST)
            self.lora_requests[lora_name] = req
            if "@" not in lora_name:
                self.lora_requests.latest.add(lora_name)
            log.info("lorastore: resolved %r to %s (LoRA %d)", lora_name, req.lora_name,
                     req.lora_int_id)
            return req

    resolve_lora._lorastore = True
    resolve_lora.__wrapped__ = original
    OpenAIServingModels.resolve_lora = resolve_lora

    # vLLM answers a model it cannot resolve with its own not-found message
    # (in _check_model); lorastore's reason is added to it.
    from vllm.entrypoints.serve.engine.serving import BaseServing

    check = BaseServing._check_model

    async def _check_model(self, request):
        result = await check(self, request)
        reason = _reasons.pop(getattr(request, "model", None), None)
        if result is not None and reason and getattr(result.error, "code", None) == 404:
            result.error.message += f" lorastore: {reason}."
        return result

    _check_model.__wrapped__ = check
    BaseServing._check_model = _check_model
