"""`python -m kdmcse config`: validate config files, print config/README.md (generated from the schema), or print
the exact run config (or train command) of one grid cell, so that a student can be trained by hand."""

from __future__ import annotations

import argparse
import json
from typing import Any

import yaml

from kdmcse.config import load_config, load_schema, validate_config
from kdmcse.grid import all_cells, find_cell, run_config, train_command


def schema_docs(schema: dict[str, Any] | None = None) -> str:
    """A Markdown table of every config key with its description and default, generated from the schema."""
    schema = schema or load_schema()
    defs = schema.get("definitions", {})
    rows: list[tuple[str, str, str]] = []

    def walk(node: dict[str, Any], path: str) -> None:
        for name, sub in (node.get("properties") or {}).items():
            ref = defs.get(sub.get("$ref", "").split("/")[-1], {})
            desc = sub.get("description") or ref.get("description", "")
            default = sub.get("default", ref.get("default", ""))
            shown = "" if default == "" and "default" not in sub else f"`{yaml.safe_dump(default, default_flow_style=True).strip().removesuffix('...').strip()}`"
            rows.append((f"`{path}{name}`", " ".join(str(desc).split()), shown))
            walk(sub, f"{path}{name}.")
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) and extra.get("properties"):
            walk(extra, f"{path}<name>.")

    walk(schema, "")
    lines = ["| key | meaning | default |", "|---|---|---|"]
    lines += [f"| {k} | {d} | {v} |" for k, d, v in rows]
    return "\n".join(lines) + "\n"


CONFIG_README_HEAD = """# Configuration

`config/config.yaml` reproduces the paper; `config/demo.yaml` is a small overlay (`--configfile config/demo.yaml`),
and `config/offline.yaml` adds the settings for a machine without internet. Later files override keys of earlier
ones, recursively; `--config key=value` overrides last. Every key is validated at DAG build against
`workflow/schemas/config.schema.yaml`: a mistake stops the run before any job with one line naming the key.
`config/sources.yaml` is the download registry and `config/paper_results.yaml` holds the paper's numbers.

Write floats with a dot (`3.0e-5`, not `3e-5`: YAML reads the latter as text) and quote `"off"` (bare `off` is
the boolean false in YAML).

This table is generated from the schema (`python -m kdmcse config --docs`).

"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kdmcse config", description="Validate config files (merged in order).")
    parser.add_argument("files", nargs="*", help="YAML files, e.g. config/config.yaml config/demo.yaml")
    parser.add_argument("--docs", action="store_true", help="print config/README.md, generated from the schema")
    parser.add_argument("--cell", help="print the run config of this cell (its path under results/students/)")
    parser.add_argument("--seed", type=int, default=0, help="with --cell: the seed (default 0)")
    parser.add_argument("--command", action="store_true", help="with --cell: print the whole train command instead")
    args = parser.parse_args(argv)
    if args.docs:
        print(CONFIG_README_HEAD + schema_docs(), end="")
        return 0
    if not args.files and not args.cell:
        parser.error("give config files to validate, or --docs")
    cfg = validate_config(load_config(args.files or ["config/config.yaml"]))
    if args.cell:  # the rule's run config, exactly: `python -m kdmcse train --run-config @FILE` runs it by hand
        cell = find_cell(cfg, args.cell)
        print(train_command(cfg, cell, args.seed) if args.command else json.dumps(run_config(cfg, cell), indent=2,
                                                                                 sort_keys=True))
        return 0
    print(f"ok: {len(all_cells(cfg))} cells x {len(cfg['grid']['seeds'])} seeds")
    return 0
