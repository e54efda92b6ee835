"""Every interpolation in a rule's shell command is shell-quoted: paths and names come from the config and the
source registry, and a file name such as `x $(touch PWNED).txt` must reach the command as one plain argument.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RULES = sorted((ROOT / "workflow" / "rules").glob("*.smk"))
# params that common.smk builds as finished argument strings, every piece through shlex.quote (they expand to
# several arguments, so `:q` would wrongly make them one); the launcher is built from an integer only.
PREQUOTED = {"params.extra", "params.args", "params.cell", "params.note", "params.pair_args", "params.launcher",
             "params.limit", "params.corpora", "params.curves", "params.thresholds"}


def shell_commands(text: str) -> list[str]:
    """The string literals of every `shell:` block (adjacent literals joined)."""
    out: list[str] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip() != "shell:":
            continue
        pieces = []
        for nxt in lines[i + 1:]:
            stripped = nxt.strip()
            if stripped.startswith("#"):
                continue
            if not stripped.startswith(('"', 'r"', 'f"')):
                break
            pieces += re.findall(r"\"((?:[^\"\\]|\\.)*)\"", stripped)
        out.append("".join(pieces))
    return out


def unquoted_fields(command: str) -> list[str]:
    fields = re.findall(r"(?<!\{)\{([^{}]+)\}(?!\})", command)
    return [f for f in fields if not f.endswith(":q") and f not in PREQUOTED and f != "threads"]


def test_the_checker_sees_unquoted_fields():
    text = 'rule x:\n    shell:\n        "run {input} --n {params.n:q} "\n        "{params.extra} 2> {log}"\n'
    (command,) = shell_commands(text)
    assert unquoted_fields(command) == ["input", "log"]


@pytest.mark.parametrize("rules_file", RULES, ids=lambda p: p.name)
def test_every_shell_interpolation_is_quoted(rules_file):
    commands = shell_commands(rules_file.read_text(encoding="utf-8"))
    problems = [f"{{{f}}}" for c in commands for f in unquoted_fields(c)]
    assert not problems, f"{rules_file.name}: quote these with :q (or build them with shlex_quote): {problems}"


def test_every_rule_with_a_shell_command_was_read():
    for rules_file in RULES:
        text = rules_file.read_text(encoding="utf-8")
        assert len(shell_commands(text)) == len(re.findall(r"^\s*shell:", text, re.M)), rules_file.name


@pytest.mark.slow
def test_hostile_file_name_in_the_registry_stays_a_file_name(tmp_path):
    """A registry file name with a space and a command substitution is downloaded under exactly that name."""
    work = tmp_path / "w"
    work.mkdir()
    for name in ("Snakefile", "workflow", "config", "envs"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
    staged = tmp_path / "staged words.txt"
    staged.write_text("a sentence .\nanother sentence .\n", encoding="utf-8")
    hostile = "x $(touch PWNED).txt"
    registry = yaml.safe_load((work / "config" / "sources.yaml").read_text(encoding="utf-8"))
    registry["wiki1m"]["filename"] = hostile
    (work / "config" / "sources dir").mkdir()
    (work / "config" / "sources dir" / "reg.yaml").write_text(yaml.safe_dump(registry), encoding="utf-8")
    overlay = {"sources": {"registry": "config/sources dir/reg.yaml", "overrides": {"wiki1m": {"path": str(staged)}}}}
    (work / "overlay.yaml").write_text(yaml.safe_dump(overlay), encoding="utf-8")
    target = f"resources/downloads/wiki1m/{hostile}"
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "--configfile", "overlay.yaml",
                           "--", target], cwd=work, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (work / target).read_bytes() == staged.read_bytes()
    assert not list(work.rglob("PWNED"))
