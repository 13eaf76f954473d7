"""Per-user low-rank adapters over the one frozen base generator, and their batched serving."""

from pstyle.adapters.bank import AdapterBank, choose_path
from pstyle.adapters.inject import (
    adapter_config,
    adapter_parameters,
    adapter_state_dict,
    enable_adapters,
    inject_adapter,
    load_adapter_state,
    lora_layers,
    merge_adapter,
    remove_adapter,
    set_active_adapter,
    strip_adapters,
    style_code,
    unmerge_adapter,
)
from pstyle.adapters.io import AdapterFile, adapter_nbytes, load_adapter, read_adapter, save_adapter
from pstyle.adapters.lora import AdapterError, LoRAConv2d, LoRALayer, LoRALinear
from pstyle.config import DEFAULT_TARGETS, AdapterConfig

__all__ = [
    "DEFAULT_TARGETS",
    "AdapterBank",
    "AdapterConfig",
    "AdapterError",
    "AdapterFile",
    "LoRAConv2d",
    "LoRALayer",
    "LoRALinear",
    "adapter_config",
    "adapter_nbytes",
    "adapter_parameters",
    "adapter_state_dict",
    "choose_path",
    "enable_adapters",
    "inject_adapter",
    "load_adapter",
    "load_adapter_state",
    "lora_layers",
    "merge_adapter",
    "read_adapter",
    "remove_adapter",
    "save_adapter",
    "set_active_adapter",
    "strip_adapters",
    "style_code",
    "unmerge_adapter",
]
