"""What of a PEFT `adapter_config.json` Bessemer reads: plain LoRA, and rsLoRA as the alpha that scales the same.

Every key PEFT (up to 0.21) writes is sorted below into those that leave the adapter's forward math alone
(bookkeeping, training-time and init-time options that do not touch the base weights) and those that change it
(a per-module rank, DoRA's magnitude, an init that rewrites the base weights, ...). A key of the second kind
that is set, or a key this list does not know that is set, is refused in one line naming it: loading such an
adapter as plain LoRA would give other logits than PEFT's, silently. The way out offered is PEFT's own merge,
whose output `--from-hf` reads.
"""

from __future__ import annotations

import math
from pathlib import Path

from bessemer.config.schema import LoRASection
from bessemer.errors import ConversionError
from bessemer.json_object import read_json_object

CONFIG_FILE = "adapter_config.json"
MERGE_FIX = (
    "merge it in PEFT (PeftModel.merge_and_unload().save_pretrained(DIR)) and convert DIR with --from-hf"
)

# keys that do not change what a saved adapter computes (r, lora_alpha and use_rslora are read below)
INERT = frozenset(
    {
        "task_type",
        "peft_type",
        "auto_mapping",
        "peft_version",
        "base_model_name_or_path",
        "revision",
        "inference_mode",
        "r",
        "lora_alpha",
        "use_rslora",
        "lora_dropout",  # training only
        "target_modules",  # the tensors in the file say which modules carry adapters
        "exclude_modules",
        "fan_in_fan_out",  # PEFT resets it for nn.Linear, the only layer a LLaMA-layout model adapts
        "modules_to_save",  # the tensors in the file say which
        "layers_pattern",  # only used with layers_to_transform, refused below
        "megatron_config",  # Megatron layers only; a Hugging Face model has none
        "megatron_core",
        "qalora_group_size",  # only used with use_qalora, refused below
        "loftq_config",  # only used with init_lora_weights="loftq", refused below
        "eva_config",  # EVA initialises A and B from data and leaves the base alone
        "corda_config",  # only used with init_lora_weights="corda", refused below
        "lora_ga_config",  # only used with init_lora_weights="lora_ga", refused below
        "velora_config",  # a backward-pass memory saving
        "runtime_config",
        "ensure_weight_tying",  # checked against the tensors by the importer
        "bias",  # checked against the tensors: no bias tensor saved is no bias trained
        "init_lora_weights",  # checked below
    }
)
# keys that change the adapter's math when set (truthy), with why
CHANGES_MATH = {
    "use_dora": "DoRA rescales each weight by a learned magnitude",
    "rank_pattern": "modules have ranks of their own",
    "alpha_pattern": "modules have alphas of their own",
    "layers_to_transform": "only some layers carry adapters",
    "trainable_token_indices": "it trains single embedding rows",
    "layer_replication": "it repeats layers of the base model",
    "lora_bias": "lora_B has a bias",
    "target_parameters": "it adapts parameters, not modules",
    "alora_invocation_tokens": "the adapter is active only after its invocation tokens",
    "use_qalora": "QA-LoRA pools its inputs",
    "monteclora_config": "MonteCLoRA samples its adapters",
    "kasa_config": "KaSA truncates the base weights' singular values",
    "arrow_config": "Arrow routes between several adapters",
    "use_bdlora": "BD-LoRA's adapters are block-diagonal",
}
# inits that rewrite the base weights: the adapter is only right on the rewritten base PEFT does not save
BASE_REWRITING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")


def _set(value) -> bool:
    return value not in (None, False, "", [], {}, 0)


def _number(raw: dict, key: str, where: Path, default, whole: bool) -> float:
    value = raw.get(key, default)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and whole:
        ok = float(value).is_integer() and value >= 1
    if not ok or value < 0:
        kind = "a whole number of at least 1" if whole else "a finite number"
        raise ConversionError(f"{where}: {key}={value!r} must be {kind}; save the adapter again with PEFT")
    return int(value) if whole else float(value)


def read_peft_config(folder: Path) -> tuple[LoRASection, dict]:
    """The LoRA settings an adapter folder's config describes (targets come from its tensors), and the raw
    config; refused in one line where it is not plain LoRA or rsLoRA."""
    where = Path(folder) / CONFIG_FILE
    raw = read_json_object(where, "save the adapter again with PEFT", ConversionError)
    if raw.get("peft_type") != "LORA":
        raise ConversionError(f"{where}: peft_type {raw.get('peft_type')!r}; only LORA adapters are read")
    for key, value in raw.items():
        if key in CHANGES_MATH and _set(value):
            raise ConversionError(
                f"{where}: {key} is set ({CHANGES_MATH[key]}), which plain LoRA cannot express; {MERGE_FIX}"
            )
        if key not in INERT and key not in CHANGES_MATH and _set(value):
            raise ConversionError(
                f"{where}: unknown key {key!r} (from a PEFT newer than 0.21?) is set and may change the "
                f"adapter's math; {MERGE_FIX}, or remove the key if it is only bookkeeping"
            )
    init = raw.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(BASE_REWRITING_INITS):
        raise ConversionError(
            f"{where}: init_lora_weights={init!r} rewrites the base weights, so this adapter is wrong on the "
            "original base; save it with PEFT's save_pretrained(..., path_initial_model_for_weight_conversion=...) "
            f"to make it a plain LoRA, or {MERGE_FIX}"
        )
    if raw.get("bias", "none") not in ("none", "all", "lora_only"):
        raise ConversionError(f"{where}: bias={raw['bias']!r}; PEFT writes none, all or lora_only")
    rank = _number(raw, "r", where, 8, whole=True)
    alpha = _number(raw, "lora_alpha", where, 8, whole=False)
    dropout = _number(raw, "lora_dropout", where, 0.0, whole=False)
    if alpha <= 0 or dropout >= 1:
        key, value = ("lora_alpha", alpha) if alpha <= 0 else ("lora_dropout", dropout)
        raise ConversionError(f"{where}: {key}={value} is out of range; save the adapter again with PEFT")
    if raw.get("use_rslora"):
        alpha = alpha * math.sqrt(rank)  # rsLoRA scales by alpha / sqrt(r): the same as alpha * sqrt(r) / r
    return LoRASection(rank=rank, alpha=alpha, dropout=dropout), raw
