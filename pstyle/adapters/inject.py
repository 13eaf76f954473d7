"""Putting named adapters into a generator, switching between them, and taking them out again.

Adapters live in the generator itself: matching Linear/Conv2d layers are replaced in place by
LoRA wrappers (`lora.py`), and an `AdapterRegistry` submodule records each adapter's config and
its learned per-user style code. Keeping the style code there (a Parameter, not a side dict)
means it moves with `.to(device)`, trains with the LoRA weights and is saved with them.

An adapter's state dict has keys "<layer>.lora_down", "<layer>.lora_up" and "style_code": no
adapter name in them, so a state saved as one name loads under any other (or into AdapterBank).
"""

from __future__ import annotations

from fnmatch import fnmatch

import torch
from torch import Tensor, nn

from pstyle.adapters.lora import AdapterError, LoRALayer, wrapper_type
from pstyle.config import AdapterConfig

REGISTRY = "adapter_registry"  # attribute name of the AdapterRegistry on the generator


class AdapterRegistry(nn.Module):
    """Per-generator record of injected adapters: their configs and learned style codes (D,)."""

    def __init__(self) -> None:
        super().__init__()
        self.style_codes = nn.ParameterDict()
        self.configs: dict[str, AdapterConfig] = {}


def lora_layers(generator: nn.Module) -> dict[str, LoRALayer]:
    """Every LoRA wrapper in the generator, by module name, in module order."""
    return {name: m for name, m in generator.named_modules() if isinstance(m, LoRALayer)}


def wrap_modules(generator: nn.Module, patterns: tuple[str, ...]) -> dict[str, LoRALayer]:
    """Wrap the Linear/Conv2d layers whose names match any glob (reusing existing wrappers).

    Every pattern must match at least one layer, checked before anything is wrapped: a typo must not
    give an adapter that silently adapts nothing.
    """
    wrappers = lora_layers(generator)
    candidates = {
        name: m
        for name, m in generator.named_modules()
        if (isinstance(m, LoRALayer) or wrapper_type(m) is not None)
        and not any(name.startswith(w + ".") for w in wrappers)  # a wrapper's own base/down/up layers
    }
    for pattern in patterns:
        if not any(fnmatch(name, pattern) for name in candidates):
            raise AdapterError(f"target pattern {pattern!r} matches no Linear/Conv2d layer of the generator")
    matched = {}
    for name, module in candidates.items():
        if not any(fnmatch(name, pattern) for pattern in patterns):
            continue
        if not isinstance(module, LoRALayer):
            module = wrapper_type(module)(module).train(module.training)
            parent, _, child = name.rpartition(".")
            setattr(generator.get_submodule(parent), child, module)
        matched[name] = module
    return matched


def inject_adapter(
    generator: nn.Module,
    name: str,
    cfg: AdapterConfig,
    style_code: Tensor | None = None,
    rng: torch.Generator | None = None,
) -> list[str]:
    """Add adapter `name` to every layer matched by cfg.target_modules; returns those layers' names.

    The new adapter is an exact no-op (zero up weights); its style code starts as `style_code`
    (the style encoder's code for the user's images) or zeros. `rng` draws the down weights' initial
    values (default: the global RNG). As in PEFT, every parameter that is not an adapter's is
    frozen: adapter training never computes gradients for the shared base.
    """
    if not name or "." in name or hasattr(nn.ModuleDict, name) or hasattr(nn.ParameterDict, name):
        raise AdapterError(f"adapter name {name!r} cannot be a module key (empty, dotted or reserved)")
    registry = _registry(generator, create=True)
    if name in registry.configs:
        raise AdapterError(f"adapter {name!r} already exists; remove it first")
    layers = wrap_modules(generator, cfg.target_modules)
    for layer in layers.values():
        layer.add_adapter(name, cfg.rank, cfg.alpha, cfg.dropout, rng)
    weight = next(iter(layers.values())).base_layer.weight
    code = torch.zeros(style_dim(generator)) if style_code is None else style_code.detach().clone()
    registry.style_codes[name] = nn.Parameter(code.to(weight.device, weight.dtype))
    registry.configs[name] = cfg
    trainable = {id(p) for n in registry.configs for p in adapter_parameters(generator, n)}
    for p in generator.parameters():
        if id(p) not in trainable:
            p.requires_grad_(False)
    return list(layers)


def remove_adapter(generator: nn.Module, name: str) -> None:
    """Delete adapter `name` everywhere (unmerging it first); the wrappers stay, as pass-throughs."""
    registry = _registry(generator)
    _check_known(registry, name)
    for layer in lora_layers(generator).values():
        if name in layer.adapter_names:
            layer.remove_adapter(name)
    del registry.style_codes[name]
    del registry.configs[name]


def strip_adapters(generator: nn.Module) -> None:
    """Unmerge and unwrap everything: the generator holds its original plain layers again.

    Base parameters stay frozen (requires_grad False), as adapter injection left them.
    """
    for name, layer in lora_layers(generator).items():
        layer.unmerge()
        parent, _, child = name.rpartition(".")
        setattr(generator.get_submodule(parent), child, layer.base_layer)
    if hasattr(generator, REGISTRY):
        delattr(generator, REGISTRY)


def set_active_adapter(generator: nn.Module, name: str | None) -> None:
    """Make `name` the adapter every wrapper applies (None: the base model alone)."""
    if name is not None:
        _check_known(_registry(generator), name)
    for layer in lora_layers(generator).values():
        layer.active_adapter = name


def enable_adapters(generator: nn.Module, enabled: bool) -> None:
    """Switch all adapters on or off without forgetting which is active; disabling unmerges."""
    for layer in lora_layers(generator).values():
        if not enabled:
            layer.unmerge()
        layer.disabled = not enabled


def merge_adapter(generator: nn.Module, name: str, safe: bool = True) -> None:
    """Fold adapter `name` into the base weights (single-user serving): all layers or, on error, none."""
    _check_known(_registry(generator), name)
    layers = [
        m for m in lora_layers(generator).values() if name in m.adapter_names and m.merged_adapter != name
    ]
    for layer in layers:
        layer.merged_weight(name, safe)  # every check passes before any weight is written
    for layer in layers:
        layer.merge(name, safe=False)


def unmerge_adapter(generator: nn.Module) -> None:
    for layer in lora_layers(generator).values():
        layer.unmerge()


def adapter_parameters(generator: nn.Module, name: str) -> list[nn.Parameter]:
    """What an optimizer trains for one user: its down/up weights and its style code."""
    return list(_adapter_tensors(generator, name).values())


def adapter_state_dict(generator: nn.Module, name: str) -> dict[str, Tensor]:
    """Adapter `name`'s tensors (detached, on their device) under name-independent keys."""
    return {key: p.detach() for key, p in _adapter_tensors(generator, name).items()}


def load_adapter_state(generator: nn.Module, name: str, state: dict[str, Tensor]) -> None:
    """Copy `state` into the existing adapter `name`; refuses missing, unexpected or mis-shaped tensors."""
    own = _adapter_tensors(generator, name)
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    if missing or unexpected:
        raise AdapterError(f"adapter state does not fit: missing {missing}, unexpected {unexpected}")
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(p.shape)}"
        for k, p in own.items()
        if state[k].shape != p.shape
    ]
    if wrong:
        raise AdapterError(f"adapter state has mis-shaped tensors: {wrong}")
    if any(layer.merged_adapter == name for layer in lora_layers(generator).values()):
        raise AdapterError(f"adapter {name!r} is merged; unmerge before loading new weights into it")
    with torch.no_grad():
        for key, p in own.items():
            p.copy_(state[key])


def style_code(generator: nn.Module, name: str) -> nn.Parameter:
    """Adapter `name`'s learned style code (D,): pass it (expanded to (B, D)) as the generator's code."""
    registry = _registry(generator)
    _check_known(registry, name)
    return registry.style_codes[name]


def adapter_config(generator: nn.Module, name: str) -> AdapterConfig:
    registry = _registry(generator)
    _check_known(registry, name)
    return registry.configs[name]


def style_dim(generator: nn.Module) -> int:
    """D, the style code size: the input width of the generator's mapping network."""
    first = generator.mapping[0]
    return getattr(first, "base_layer", first).in_features


def _adapter_tensors(generator: nn.Module, name: str) -> dict[str, nn.Parameter]:
    tensors = {}
    for layer_name, layer in lora_layers(generator).items():
        if name in layer.adapter_names:
            tensors[f"{layer_name}.lora_down"] = layer.lora_down[name].weight
            tensors[f"{layer_name}.lora_up"] = layer.lora_up[name].weight
    tensors["style_code"] = style_code(generator, name)
    return tensors


def _registry(generator: nn.Module, create: bool = False) -> AdapterRegistry:
    if not hasattr(generator, REGISTRY):
        if not create:
            raise AdapterError("the generator has no adapters")
        setattr(generator, REGISTRY, AdapterRegistry())
    return getattr(generator, REGISTRY)


def _check_known(registry: AdapterRegistry, name: str) -> None:
    if name not in registry.configs:
        raise AdapterError(f"no adapter named {name!r} (have {sorted(registry.configs)})")
