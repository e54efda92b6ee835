"""The run config of one student: every key required, each checked with a message that says what it must be.

The Snakefile resolves it from `config/config.yaml` (`kdmcse.grid.run_config`); docs/architecture.md §4 lists
the keys.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

from kdmcse.embedding import POOLINGS
from kdmcse.errors import KdmcseError
from kdmcse.grid import is_quantile, quantile_level
from kdmcse.train.precision import PRECISIONS

OBJECTIVES = ("simcse", "mcse", "kdmcse")
# Keys that change how a run is watched and saved, not what it computes: they stay out of the checkpoint
# fingerprint, so a requeued job may resume with another checkpoint interval, logging interval or check mode.
RESULT_NEUTRAL_KEYS = ("checkpoint_minutes", "log_every", "threshold_check")
# key -> (check, what it must be); every key is required (docs/architecture.md §4)
_NUM = (int, float)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, _NUM) and not isinstance(v, bool) and math.isfinite(v)


RUN_CONFIG_KEYS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model": (lambda v: isinstance(v, str) and bool(v), "an HF model id or a local model folder"),
    "objective": (lambda v: v in OBJECTIVES, f"one of {', '.join(OBJECTIVES)}"),
    "lr": (lambda v: _is_num(v) and v > 0, "a number > 0"),
    "batch_size": (lambda v: _is_int(v) and v >= 2, "an integer >= 2 (in-batch negatives need two rows)"),
    "epochs": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "max_steps": (lambda v: v is None or (_is_int(v) and v >= 1), "null (from epochs) or an integer >= 1"),
    "lambda": (lambda v: _is_num(v) and v >= 0, "a number >= 0"),
    "temperature": (lambda v: _is_num(v) and v > 0, "a number > 0"),
    "temperature_vl": (lambda v: _is_num(v) and v > 0, "a number > 0"),
    "margin1": (lambda v: _is_num(v) and 0 <= v <= math.pi, "an angle in radians in [0, pi]"),
    "margin2": (lambda v: _is_num(v) and 0 <= v <= math.pi, "an angle in radians in [0, pi]"),
    "threshold": (lambda v: v is None or _is_num(v) or (is_quantile(v) and 0 < quantile_level(v) < 1),
                  'null (off), a number, or a quantile "qL" with 0 < L < 1 (e.g. "q0.99")'),
    "threshold_space": (lambda v: v in ("raw_dot", "cosine"), "raw_dot or cosine"),
    "threshold_check": (lambda v: v in ("warn", "error"), "warn or error"),
    "inter_reduction": (lambda v: v in ("sum", "mean"), "sum or mean"),
    "proj_dim": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "max_seq_length": (lambda v: _is_int(v) and v >= 3, "an integer >= 3"),
    "eval_steps": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "pooling": (lambda v: v in POOLINGS, f"one of {', '.join(POOLINGS)}"),
    "precision": (lambda v: v in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
    "head_init": (lambda v: v in ("hf", "torch"), "hf (normal(0, initializer_range), zero bias) or torch"),
    "teacher": (
        lambda v: isinstance(v, dict) and {"model", "pretrained"} <= set(v) <= {"model", "pretrained",
                                                                                "model_config_sha256"}
        and all(isinstance(x, str) and x for x in v.values()),
        'an object {"model": …, "pretrained": …} naming the CLIP teacher of the cache (plus "model_config_sha256" '
        "for a custom architecture)",
    ),
    "checkpoint_minutes": (lambda v: v is None or (_is_num(v) and v > 0),
                           "null (no periodic checkpoints) or a number of minutes > 0"),
    "log_every": (lambda v: _is_int(v) and v >= 1, "an integer >= 1 (steps between loss reads and log lines)"),
}


def result_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The run config without the keys that cannot change the result (what a checkpoint must agree on)."""
    return {k: v for k, v in cfg.items() if k not in RESULT_NEUTRAL_KEYS}


def load_run_config(arg: str) -> dict[str, Any]:
    """Parse `--run-config`: inline JSON, or `@path` to a JSON file."""
    if arg.startswith("@"):
        path = Path(arg[1:])
        if not path.is_file():
            raise KdmcseError(f"--run-config file {path} does not exist")
        text, where = path.read_text(encoding="utf-8"), str(path)
    else:
        text, where = arg, "--run-config"
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KdmcseError(f"{where} is not valid JSON ({exc}); pass a JSON object or @file.json") from exc
    return validate_run_config(cfg)


def validate_run_config(cfg: Any) -> dict[str, Any]:
    """Check every key of a run config (all required, none unknown); return it unchanged."""
    if not isinstance(cfg, dict):
        raise KdmcseError("the run config must be a JSON object with the keys of docs/architecture.md §4")
    unknown = sorted(set(cfg) - set(RUN_CONFIG_KEYS))
    if unknown:
        raise KdmcseError(f"unknown run config key(s) {', '.join(map(repr, unknown))}; allowed: "
                          f"{', '.join(RUN_CONFIG_KEYS)}")
    missing = [k for k in RUN_CONFIG_KEYS if k not in cfg]
    if missing:
        raise KdmcseError(f"run config lacks key(s) {', '.join(map(repr, missing))}; every key of "
                          "docs/architecture.md §4 is required (use null where a key allows it)")
    for key, (ok, what) in RUN_CONFIG_KEYS.items():
        if not ok(cfg[key]):
            raise KdmcseError(f"run config key '{key}' is {cfg[key]!r}; it must be {what}")
    return cfg
