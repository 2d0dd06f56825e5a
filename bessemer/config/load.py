"""Read a TOML config, apply dotted overrides (--optim.lr=3e-4), and check every key and type."""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from pathlib import Path
from typing import Any

import tomllib

from bessemer.config.schema import JobConfig
from bessemer.config.validate import check_finite, check_ranges
from bessemer.errors import ConfigError


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> JobConfig:
    """Build a JobConfig from an optional TOML file and `section.key=value` overrides, in that order."""
    raw: dict[str, Any] = {}
    where = "<defaults>"
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found; pass an existing TOML file (see configs/)")
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc}); fix the line it names") from exc
        except (UnicodeDecodeError, RecursionError) as exc:
            raise ConfigError(
                f"{path}: not a readable TOML file ({type(exc).__name__}); save it as UTF-8"
            ) from exc
    for item in overrides or []:
        key, value = parse_override(item)
        section, _, name = key.partition(".")
        if not name:
            raise ConfigError(f"override {item!r}: write it as section.key=value, e.g. optim.lr=3e-4")
        raw.setdefault(section, {})[name] = value
    cfg = from_dict(JobConfig, raw, where)
    check_ranges(cfg, where)
    return cfg


def parse_override(item: str) -> tuple[str, Any]:
    """`optim.lr=3e-4` -> ("optim.lr", 0.0003); values parse as TOML when they can, else stay text."""
    item = item.removeprefix("--")
    if "=" not in item:
        raise ConfigError(f"override {item!r}: missing '='; write it as section.key=value")
    key, value = item.split("=", 1)
    try:
        return key.strip(), tomllib.loads(f"v = {value}")["v"]
    except (tomllib.TOMLDecodeError, RecursionError):
        return key.strip(), value


def from_dict(cls, raw: dict, where: str, prefix: str = ""):
    """Build dataclass `cls` from `raw`, naming the bad key and the nearest valid one on error."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: [{prefix.rstrip('.')}] must be a table of keys")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        if cls.__name__ == "ModelSection" and key not in fields:
            kwargs.setdefault("overrides", {})[key] = value  # model overrides are checked against ModelConfig
            continue
        if key not in fields:
            raise ConfigError(f"{where}: unknown key {prefix + key!r}{_suggest(key, fields)}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = from_dict(hint, value, where, f"{prefix}{key}.")
        else:
            kwargs[key] = coerce(value, hint, f"{where}: {prefix}{key}")
    return cls(**kwargs)


def coerce(value: Any, hint: Any, name: str) -> Any:
    """Check `value` against a simple type hint (int, float, bool, str, list[T], dict), converting int->float."""
    origin = typing.get_origin(hint)
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        (inner,) = typing.get_args(hint) or (Any,)
        return [coerce(v, inner, name) for v in value]
    if hint is Any or hint is dict or origin is dict:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return check_finite(float(value), name)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"{name}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def to_dict(cfg) -> dict:
    """The config as plain data (for JSON logs and checkpoints)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _suggest(key: str, valid) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} valid keys: {', '.join(sorted(valid))}"
