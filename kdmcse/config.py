"""Validate the pipeline configuration: JSON Schema plus the cross-references a schema cannot express.

Every problem becomes one `ConfigError` line that names the key, so a typo is reported at DAG build
rather than hours into a training job. Defaults from the schema are filled in.
"""

from __future__ import annotations

import copy
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import yaml

from kdmcse.errors import KdmcseError
from kdmcse.grid import BASELINE_FORCES, ablation_cells, all_cells, cell_teacher, is_quantile, quantile_level, resolve_model

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(KdmcseError):
    """An invalid configuration value; the message starts with the offending key."""


def load_schema(path: str | Path | None = None) -> dict[str, Any]:
    return yaml.safe_load(Path(path or SCHEMA_PATH).read_text(encoding="utf-8"))


def key_name(path: Iterable[Any]) -> str:
    """Render a JSON path as `a.b[2].c`."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def _looks_like_number(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


def _message(err: jsonschema.ValidationError) -> str:
    """Turn a jsonschema error into one readable line that starts with the key."""
    key = key_name(err.absolute_path)
    inst = err.instance
    if err.validator == "additionalProperties":
        allowed = sorted((err.schema.get("properties") or {}).keys())
        extra = sorted(set(inst) - set(allowed)) if isinstance(inst, dict) else []
        where = f" in '{key}'" if err.absolute_path else ""
        hint = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
        return f"unknown config key '{extra[0] if extra else '?'}'{where}{hint}"
    if _looks_like_number(inst):
        if err.schema.get("type") == "integer" or "integer" in (err.schema.get("type") or []):
            return f"config key '{key}': {inst!r} is a string, not an integer; write it without quotes"
        return (
            f"config key '{key}': {inst!r} is a string, not a number — YAML reads floats such as 3e-5 as text; "
            f"write it with a dot, e.g. {float(inst):.1e}".replace("e-0", "e-")
        )
    if inst is False or inst is True:
        if "threshold" in key:
            return (
                f"config key '{key}': got the boolean {inst} — YAML reads a bare off/no as false; "
                'write the threshold as "off" in quotes, or a number'
            )
    if err.validator in {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}:
        return f"config key '{key}': {inst!r} is out of range ({err.message.split(' is ', 1)[-1]})"
    if err.validator == "oneOf" and "threshold" in key:
        return f"config key '{key}': {inst!r} is not \"off\", a number or a quantile such as \"q0.99\""
    if err.validator == "oneOf" and "margin" in key:
        return f"config key '{key}': {inst!r} must be a margin in radians within [0, pi/2] (or \"tied\" for margin1)"
    if err.validator == "minItems" and not inst:
        return f"config key '{key}': the list is empty; give at least one value"
    if err.validator == "enum":
        return f"config key '{key}': {inst!r} is not one of {', '.join(map(str, err.validator_value))}"
    if err.validator == "required":
        return f"config key '{key}': {err.message}"
    if err.validator == "pattern":
        return (f"config key '{key}': {inst!r} may hold only the characters of {err.validator_value} (names and "
                "keys become parts of file paths and shell arguments)")
    if err.validator == "uniqueItems":
        return f"config key '{key}': the list repeats a value ({inst}); give each value once"
    return f"config key '{key}': {err.message}"


def _best_errors(errors: list[jsonschema.ValidationError]) -> jsonschema.ValidationError:
    # Prefer the deepest error: it names the most specific key. For oneOf, descend into the alternative whose
    # failure is most telling (a range violation beats a "not the constant off").
    def depth(e: jsonschema.ValidationError) -> int:
        return len(e.absolute_path)

    best = max(errors, key=depth)
    if best.validator == "oneOf" and best.context:
        ranged = [c for c in best.context if c.validator in {"minimum", "maximum"}]
        if ranged:
            return ranged[0]
    return best


def _fill_defaults(node: Any, schema: dict[str, Any], defs: dict[str, Any]) -> Any:
    if "$ref" in schema:
        schema = defs[schema["$ref"].split("/")[-1]]
    if not isinstance(node, dict) or schema.get("type") != "object":
        return node
    for name, sub in (schema.get("properties") or {}).items():
        if name not in node and "default" in sub:
            node[name] = copy.deepcopy(sub["default"])
        if name in node:
            node[name] = _fill_defaults(node[name], sub, defs)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for name in node:
            if name not in (schema.get("properties") or {}):
                node[name] = _fill_defaults(node[name], extra, defs)
    return node


def _check_threshold(key: str, value: Any, space: str) -> None:
    if value == "off":
        return
    if is_quantile(value):
        if not 0.0 < quantile_level(value) < 1.0:
            raise ConfigError(f"config key '{key}': {value!r} is not a quantile level strictly between 0 and 1 "
                              "(q0 would mask every negative, q1 none); write e.g. q0.99")
        return
    if not math.isfinite(value):
        raise ConfigError(f"config key '{key}': {value!r} is not a finite number")
    if space == "cosine" and not -1.0 <= value <= 1.0:
        raise ConfigError(
            f"config key '{key}': {value} is outside the cosine range [-1, 1] of train.threshold_space=cosine; "
            "use a cosine threshold such as 0.85, or set train.threshold_space: raw_dot"
        )


def _need(kind: str, key: str, value: Any, known: Iterable[str]) -> None:
    known = list(known)
    if value not in known:
        raise ConfigError(f"config key '{key}': unknown {kind} {value!r}; known: {', '.join(known) or 'none'}")


def _check_references(cfg: dict[str, Any]) -> None:
    backbones, datasets, objectives = cfg["backbones"], cfg["datasets"], ("simcse", "mcse", "kdmcse")
    captions, teachers = cfg.get("captions", {}), cfg["teachers"]
    need = _need

    need("teacher", "teacher", cfg["teacher"], teachers)
    clash = sorted(set(teachers) & set(cfg.get("image_features", {})))
    if clash:
        raise ConfigError(f"config key 'image_features.{clash[0]}': the alias is also a CLIP teacher (teachers."
                          f"{clash[0]}); feature caches share one folder per alias, so give it another name")
    for name, ds in datasets.items():
        if ds["pairs"] is not None:
            need("caption corpus", f"datasets.{name}.pairs", ds["pairs"], captions)
    for name, cap in captions.items():
        if cap["format"] == "shards":
            if not cap.get("shards_dir") and "annotations" not in cap:
                raise ConfigError(f"config key 'captions.{name}.annotations': format shards needs the URL-caption "
                                  "list to fetch (a registry artifact), or shards_dir with ready shards")
        elif cap["format"] != "demo":
            for field in ("annotations", "images"):
                if field not in cap:
                    raise ConfigError(f"config key 'captions.{name}.{field}': required for format {cap['format']}")
    main = cfg["grid"]["main"]
    for i, d in enumerate(main["datasets"]):
        need("dataset", f"grid.main.datasets[{i}]", d, datasets)
    for i, b in enumerate(main["backbones"]):
        need("backbone alias", f"grid.main.backbones[{i}]", b, backbones)
    for i, o in enumerate(main["objectives"]):
        need("objective", f"grid.main.objectives[{i}]", o, objectives)
    space = cfg["train"]["threshold_space"]
    _check_threshold("grid.main.threshold", main["threshold"], space)
    for axis, abl in cfg["grid"].get("ablations", {}).items():
        need("dataset", f"grid.ablations.{axis}.dataset", abl["dataset"], datasets)
        need("backbone alias", f"grid.ablations.{axis}.backbone", abl["backbone"], backbones)
        if axis == "threshold":
            for i, v in enumerate(abl["values"]):
                _check_threshold(f"grid.ablations.threshold.values[{i}]", v, space)
    scale = cfg["grid"].get("scale")
    if scale:
        need("backbone alias", "grid.scale.backbone", scale["backbone"], backbones)
        for i, d in enumerate(scale["datasets"]):
            need("dataset", f"grid.scale.datasets[{i}]", d, datasets)
            if datasets[d]["pairs"] is None:
                raise ConfigError(f"config key 'grid.scale.datasets[{i}]': dataset {d!r} has no caption corpus "
                                  "(pairs: null); the scale experiment compares image-caption sets")
    for obj, override in cfg.get("objectives", {}).items():
        if "dataset" in override:
            need("dataset", f"objectives.{obj}.dataset", override["dataset"], datasets)
        if "threshold" in override:
            _check_threshold(f"objectives.{obj}.threshold", override["threshold"], space)
    if any(c.objective == "mcse" for c in all_cells(cfg)) and cfg.get("baselines", {}).get("mcse") == "released":
        need("image-feature extractor", "baselines.mcse_features", cfg["baselines"]["mcse_features"],
             cfg.get("image_features", {}))
    # Objectives that distil from the teacher need a caption corpus to pair with.
    for obj in main["objectives"]:
        forced = cfg.get("objectives", {}).get(obj, {}).get("dataset")
        for d in [forced] if forced else main["datasets"]:
            if obj != "simcse" and datasets[d]["pairs"] is None:
                raise ConfigError(
                    f"config key 'grid.main.objectives': {obj} needs image-caption pairs, but dataset {d!r} "
                    "has pairs: null; pick a dataset with a caption corpus"
                )


def _check_finite(node: Any, path: list[Any]) -> None:
    """JSON Schema has no "finite": NaN passes every bound (nan < 0 is false) and inf every lower bound."""
    if isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"config key '{key_name(path)}': {node} is not a finite number; write a number")
    if isinstance(node, dict):
        for k, v in node.items():
            _check_finite(v, [*path, k])
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _check_finite(v, [*path, i])


def _registry_keys(cfg: dict[str, Any]) -> tuple[str, list[str]]:
    """The artifact keys of the source registry (the registry itself is checked in full by the data stage)."""
    path = Path(cfg["sources"]["registry"])
    if not path.is_file():
        raise ConfigError(f"config key 'sources.registry': {path} does not exist (relative paths are read from "
                          f"{os.getcwd()}); point it at the source registry, e.g. config/sources.yaml")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"config key 'sources.registry': {path} is not readable YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"config key 'sources.registry': {path} must map artifact keys to entries")
    return str(path), [str(k) for k in raw]


def _check_artifacts(cfg: dict[str, Any]) -> None:
    registry, keys = _registry_keys(cfg)
    kind = f"artifact of {registry}"
    _need(kind, "wiki.source", cfg["wiki"]["source"], keys)
    _need(kind, "evaluate.senteval", cfg["evaluate"]["senteval"], keys)
    for name, cap in cfg.get("captions", {}).items():
        for field in ("annotations", "images"):
            if field in cap:
                _need(kind, f"captions.{name}.{field}", cap[field], keys)
    for key in cfg["sources"].get("overrides", {}):
        _need(kind, f"sources.overrides.{key}", key, keys)


def _is_url(value: str) -> bool:
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", value))


def _looks_like_path(value: str) -> bool:
    """A local path rather than a hub id (`name` or `org/name`): absolute, ./ or ../, ~, or deeper than one /."""
    return value.startswith(("/", "./", "../", "~")) or value.count("/") > 1 or "\\" in value


def _looks_like_checkpoint(value: str) -> bool:
    """A local checkpoint file rather than an open_clip tag (tags hold no / and no file extension)."""
    return value.lower() not in ("", "none") and (
        "/" in value or "\\" in value or value.startswith("~")
        or value.lower().endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))
    )


def _missing(key: str, value: str, what: str, hint: str = "") -> ConfigError:
    return ConfigError(f"config key '{key}': {what} {value!r} does not exist (relative paths are read from "
                       f"{os.getcwd()}){hint}; fix the path or stage the files there")


def _check_paths(cfg: dict[str, Any]) -> None:
    """Local files and folders the run will read must exist before any job starts (only those it uses)."""
    src = cfg["sources"]
    mirror = src.get("mirror")
    if mirror and not _is_url(mirror) and not Path(mirror).is_dir():
        raise _missing("sources.mirror", mirror, "mirror folder")
    for key, over in src.get("overrides", {}).items():
        if over.get("path") and not Path(over["path"]).is_file():
            raise _missing(f"sources.overrides.{key}.path", over["path"], "file")
    cells = all_cells(cfg)
    for alias in sorted({c.backbone for c in cells}):
        model, key = cfg["backbones"][alias]["model"], f"backbones.{alias}.model"
        if model.startswith("pkg://"):
            try:
                resolve_model(model)
            except KdmcseError as exc:
                raise ConfigError(f"config key '{key}': {exc}") from exc
        elif (_looks_like_path(model) or Path(model).exists()) and not Path(model).is_dir():
            raise _missing(key, model, "model folder", " (a hub id has the form name or org/name)")
    for alias in sorted({cell_teacher(cfg, c) for c in cells} - {None}):
        if alias in cfg.get("image_features", {}):
            weights = cfg["image_features"][alias]["weights"]
            if _looks_like_checkpoint(weights) and not Path(weights).is_file():
                raise _missing(f"image_features.{alias}.weights", weights, "state-dict file")
            continue
        teacher = cfg["teachers"][alias]
        if _looks_like_checkpoint(teacher["pretrained"]) and not Path(teacher["pretrained"]).is_file():
            raise _missing(f"teachers.{alias}.pretrained", teacher["pretrained"], "checkpoint file")
        if teacher.get("model_config") and not Path(teacher["model_config"]).is_file():
            raise _missing(f"teachers.{alias}.model_config", teacher["model_config"], "model-config file")


def _check_ablations(cfg: dict[str, Any]) -> None:
    """An ablation whose values collapse into fewer cells (an objective forcing that axis) is never intended."""
    for axis, abl in cfg["grid"].get("ablations", {}).items():
        n, cells = len(abl["values"]), ablation_cells(cfg, axis)
        if len(cells) >= n:
            continue
        obj = abl["objective"]
        choice = cfg.get("baselines", {}).get(obj)
        # what forces the axis: an `objectives` override, or the baseline choice (`baselines.simcse: wiki`)
        forced = {f"objectives.{obj}.{k}": v for k, v in cfg.get("objectives", {}).get(obj, {}).items() if k == axis}
        forced |= {f"baselines.{obj}: {choice}": v for k, v in BASELINE_FORCES.get((obj, choice), {}).items() if k == axis}
        got = f"{len(cells)} cell{'s' if len(cells) != 1 else ''}"
        for key, value in forced.items():
            raise ConfigError(
                f"config key 'grid.ablations.{axis}': objective {obj} forces {axis} {value!r} (config key "
                f"{key}), so the {n} values give {got}; ablate an objective the {axis} applies to (kdmcse), or "
                "change that setting"
            )
        raise ConfigError(f"config key 'grid.ablations.{axis}.values': the {n} values give only {got}; "
                          "give each value once")


def validate_config(cfg: dict[str, Any], schema_path: str | Path | None = None) -> dict[str, Any]:
    """Check `cfg` against the schema and its cross-references; return a copy with defaults filled in.

    Relative paths (the registry, local models, mirror folders) are read from the working directory.
    """
    _check_finite(cfg, [])
    schema = load_schema(schema_path)
    validator = jsonschema.Draft202012Validator(schema)
    errors = list(validator.iter_errors(cfg))
    if errors:
        raise ConfigError(_message(_best_errors(errors)))
    filled = _fill_defaults(copy.deepcopy(cfg), schema, schema.get("definitions", {}))
    _check_references(filled)
    _check_artifacts(filled)
    _check_ablations(filled)
    _check_paths(filled)
    return filled


def load_config(paths: list[str | Path]) -> dict[str, Any]:
    """Merge YAML files left to right (later files override keys of earlier ones, recursively)."""
    merged: dict[str, Any] = {}
    for p in paths:
        data = yaml.safe_load(Path(p).read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p}: expected a mapping at the top level")
        merge_into(merged, data)
    return merged


def _coerce(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _coerce(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_coerce(v) for v in value]
    if isinstance(value, str):
        if value in ("true", "false"):
            return value == "true"
        if value in ("null", "~"):
            return None
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        if isinstance(parsed, (int, float)) and not isinstance(parsed, bool):
            return parsed
    return value


def coerce_cli_values(overrides: dict[str, Any]) -> dict[str, Any]:
    """Re-type the leaves of `snakemake --config` values.

    Snakemake parses nested `--config key={...}` values with YAML's BaseLoader, so every leaf arrives as a
    string ('0', '0.15'). Numbers, booleans and null are restored here; config *files* are not coerced, so a
    float that YAML reads as text there is still reported.
    """
    return _coerce(dict(overrides))


def merge_into(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge_into(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base
