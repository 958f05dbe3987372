"""Adapters of lorastore attached to a transformers model through PEFT, in place.

    import lorastore, lorastore.peft
    conn = lorastore.connect()
    model = lorastore.peft.attach(base_model, conn.acquire("acme/support"), "support")
    model.set_adapter("support")          # or model(..., adapter_names=[...])
    lorastore.peft.detach(model, "support")

attach() goes through PEFT's public API: the adapter's LoRA layers are made
without weights (``low_cpu_mem_usage=True``, on the meta device), then
``set_peft_model_state_dict(..., low_cpu_mem_usage=True)`` assigns lorastore's
tensors to them.  Where an adapter tensor has the dtype and device of its base
layer, the parameter *is* lorastore's tensor (the same ``data_ptr``: nothing
copied, one copy per machine however many processes attach it); where they
differ, PEFT converts it to the base layer's dtype and device, a copy of this
process, and attach() says so (``attached(model)[name].converted`` and a log
line).

The parameters are the daemon's read-only memory: they come with
``requires_grad=False``, and a gradient reaching one (after someone set
``requires_grad``) raises lorastore.InvalidArgument before any optimizer can
write into shared memory.  detach() removes the adapter from the model and
ends its lease.  Importing this module imports neither torch nor PEFT.
"""
from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field

from . import Adapter, InvalidAdapter, InvalidArgument

__all__ = ["attach", "detach", "attached", "Attachment"]

log = logging.getLogger("lorastore.peft")

# The PEFT config fields attach() passes on (Adapter.peft_config() gives them
# with PEFT's names); base_model_name_or_path is informative only.
_CONFIG_FIELDS = ("r", "lora_alpha", "target_modules", "use_rslora", "rank_pattern",
                  "alpha_pattern", "fan_in_fan_out", "bias", "use_dora", "modules_to_save",
                  "task_type", "base_model_name_or_path")


@dataclass
class Attachment:
    """One adapter attached to a model: its lease and what PEFT had to convert."""

    adapter: Adapter
    shared: list = field(default_factory=list)
    """Parameter names that are lorastore's tensors themselves."""
    converted: list = field(default_factory=list)
    """Parameter names that are copies of this process, made because the base
    layer's (or saved module's) dtype or device differs from the adapter's."""


# model -> {adapter name: Attachment}; weak, so a model that is freed frees its
# attachments (and their leases) with it.
_attached: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def attached(model) -> dict:
    """The adapters attach() put into model: {adapter_name: Attachment}."""
    return dict(_attached.get(model, {}))


def _lora_config(adapter: Adapter):
    from peft import LoraConfig

    cfg = {k: v for k, v in adapter.peft_config().items()
           if k in _CONFIG_FIELDS and v not in (None, "")}
    for k in ("rank_pattern", "alpha_pattern"):
        if not cfg.get(k):
            cfg.pop(k, None)
    # Serving, not training: PEFT makes the layers with requires_grad=False.
    return LoraConfig(inference_mode=True, **cfg)


def _refuse_gradients(name: str, ref: str):
    def hook(param):
        # The error's traceback keeps this frame: without the parameter in it,
        # so that a failed backward does not hold the adapter's lease.
        del param
        raise InvalidArgument(
            f"lorastore.peft: {name} of {ref} is the daemon's read-only shared memory and cannot "
            "be trained; train a copy of the adapter instead (peft.get_peft_model on the model "
            "without lorastore.peft.attach, then set_peft_model_state_dict with copied tensors)")
    return hook


def attach(model, adapter: Adapter, adapter_name: str = "default"):
    """Put adapter (from Connection.acquire) into model as adapter_name and
    return the PeftModel: model wrapped with get_peft_model when it is a plain
    transformers model, or model itself (one adapter more) when it is a
    PeftModel already.  The new adapter is not made active: use
    set_adapter(adapter_name), or adapter_names= in a forward pass for a
    mixed batch, as PEFT does.

    Raises lorastore.InvalidAdapter when a tensor of the adapter has no place
    in the model, or a LoRA parameter of the model gets no tensor (the
    adapter was made for another model), or the adapter carries weights of
    the base model itself (PEFT saves the embedding layers it adapted) that
    differ from the model's: the model is shared by its adapters and attach()
    does not change it (such weights equal to the model's are left out).
    Raises InvalidArgument for a released adapter or a name already attached.
    The model's parameters view the adapter's tensors, and the views keep its
    lease: the caller may release the Adapter (or leave its with block) at
    once; detach() ends the lease."""
    import torch
    from peft import PeftModel, get_peft_model, set_peft_model_state_dict

    if adapter.released:
        raise InvalidArgument(f"lorastore.peft.attach: {adapter!r} is released")
    ref = f"{adapter.name}@{adapter.version}"
    config = _lora_config(adapter)
    training = model.training
    # What is on the meta device already is not the new adapter's.
    meta_before = {id(p) for p in model.parameters() if p.is_meta}
    if isinstance(model, PeftModel):
        if adapter_name in model.peft_config:
            raise InvalidArgument(f"lorastore.peft.attach: the model has an adapter named "
                                  f"{adapter_name!r} already")
        model.add_adapter(adapter_name, config, low_cpu_mem_usage=True)
        peft_model = model
    else:
        # autocast_adapter_dtype=False: the layers take the tensors' dtype as
        # they are instead of float32 copies of float16/bfloat16 adapters.
        peft_model = get_peft_model(model, config, adapter_name=adapter_name,
                                    low_cpu_mem_usage=True, autocast_adapter_dtype=False)
    # PEFT switches to training mode; the caller's mode (eval for serving) stays.
    peft_model.train(training)

    # The adapter's own parameters: its LoRA layers' (made on the meta device
    # just now) and its copies of modules_to_save.  Not a match on the name,
    # which may be that of a module of the model too.
    own = {n for n, p in peft_model.named_parameters() if p.is_meta and id(p) not in meta_before}
    own |= {n for n, _ in peft_model.named_parameters()
            if f".modules_to_save.{adapter_name}." in n}

    state = {}
    for key, t in adapter.state_dict().items():
        state[key] = torch.from_dlpack(t)
    ptrs = {t.data_ptr(): key for key, t in state.items()}
    try:
        state = _peft_names(peft_model, adapter_name, state)
        _drop_base_weights(peft_model, ref, state)
        result = set_peft_model_state_dict(peft_model, state, adapter_name=adapter_name,
                                           low_cpu_mem_usage=True)
        _match_saved_modules(peft_model, adapter_name)
        mine = [(n, p) for n, p in peft_model.named_parameters() if n in own]
        unset = [n for n, p in mine if p.is_meta]
        if result.unexpected_keys or unset:
            raise InvalidAdapter(
                f"lorastore.peft.attach: {ref} does not fit this model: "
                + (f"tensors without a place in it: {sorted(result.unexpected_keys)[:8]}"
                   if result.unexpected_keys else "")
                + ("; " if result.unexpected_keys and unset else "")
                + (f"parameters it leaves without weights: {sorted(unset)[:8]}" if unset else ""))
    except BaseException:
        _remove(peft_model, adapter_name)
        raise

    att = Attachment(adapter=adapter)
    for n, p in mine:
        if p.data_ptr() in ptrs:
            att.shared.append(n)
        else:
            att.converted.append(n)
        # The hook stays when requires_grad is switched off again, and runs if
        # anyone switches it on and a gradient arrives: before any optimizer.
        p.requires_grad_(True)
        p.register_post_accumulate_grad_hook(_refuse_gradients(n, ref))
        p.requires_grad_(False)
    if att.converted:
        first = dict(mine)[att.converted[0]]
        log.info("lorastore.peft: %d of %d tensors of %s converted to the model's %s on %s "
                 "(a copy in this process): the adapter is %s on %s", len(att.converted),
                 len(mine), ref, first.dtype, first.device, adapter.dtype,
                 "the host" if adapter.device < 0 else f"cuda:{adapter.device}")
    # The parameters hold the lease; the Adapter is kept for detach() to release.
    _attached.setdefault(peft_model, {})[adapter_name] = att
    return peft_model


def _peft_names(peft_model, adapter_name: str, state: dict) -> dict:
    """state with PEFT's names for the LoRA of embedding layers: the adapter's
    table calls their tensors A and B, which Adapter.state_dict() names like a
    linear layer's (lora_A.weight), where PEFT has lora_embedding_A."""
    embeddings = {n for n, m in peft_model.named_modules()
                  if adapter_name in getattr(m, "lora_embedding_A", {})}
    out = {}
    for key, t in state.items():
        for kind in ("A", "B"):
            suffix = f".lora_{kind}.weight"
            if key.endswith(suffix) and key[: -len(suffix)] in embeddings:
                key = key[: -len(suffix)] + f".lora_embedding_{kind}"
        out[key] = t
    return out


def _drop_base_weights(peft_model, ref: str, state: dict) -> None:
    """Take out of state the tensors that name weights of the base model itself
    (an adapter's keys name its own parameters without the adapter's name, so
    no key of a LoRA tensor is in the model's state dict as it is): PEFT saves
    the embedding layers it adapted as <module>.base_layer.weight.  Equal to
    the model's, they change nothing; different, they would change the model
    under every adapter and stay in it after detach: refused."""
    import torch

    model_state = peft_model.state_dict()
    differ = []
    for key in [k for k in state if k in model_state]:
        have, t = model_state[key], state.pop(key)
        if have.shape != t.shape or not torch.equal(have, t.to(have.device, have.dtype)):
            differ.append(key)
    if differ:
        raise InvalidAdapter(
            f"lorastore.peft.attach: {ref} replaces weights of the base model with others: "
            f"{sorted(differ)[:8]}; attach() shares the model between adapters and does not "
            "change it (load the model with these weights, e.g. its resized embeddings)")


def _match_saved_modules(peft_model, adapter_name: str) -> None:
    """Give the adapter's copies of modules_to_save the dtype and device of the
    modules they replace: PEFT does so for LoRA layers, but assigns these as
    they come.  A converted parameter is a copy of this process."""
    from peft.utils import ModulesToSaveWrapper

    for wrapper in peft_model.modules():
        if not isinstance(wrapper, ModulesToSaveWrapper) or \
                adapter_name not in wrapper.modules_to_save:
            continue
        originals = dict(wrapper.original_module.named_parameters())
        for name, p in wrapper.modules_to_save[adapter_name].named_parameters():
            want = originals.get(name)
            if want is not None and (p.dtype, p.device) != (want.dtype, want.device):
                p.data = p.data.to(want.device, want.dtype)


def _remove(peft_model, adapter_name: str) -> None:
    """Take adapter_name out of peft_model, whatever state it is in."""
    if adapter_name not in getattr(peft_model, "peft_config", {}):
        return
    others = [n for n in peft_model.peft_config if n != adapter_name]
    if peft_model.active_adapter == adapter_name and others:
        peft_model.set_adapter(others[0])
    peft_model.base_model.delete_adapter(adapter_name)
    peft_model.peft_config.pop(adapter_name, None)


def detach(model, adapter_name: str = "default") -> None:
    """Remove adapter_name, which attach() put into model, and end its lease
    once nothing else views its tensors.  Raises InvalidArgument when attach()
    did not put it there."""
    atts = _attached.get(model, {})
    att = atts.pop(adapter_name, None)
    if att is None:
        raise InvalidArgument(f"lorastore.peft.detach: no adapter {adapter_name!r} attached "
                              "to this model by lorastore.peft.attach")
    _remove(model, adapter_name)
    att.adapter.release()
