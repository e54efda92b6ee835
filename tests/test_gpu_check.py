"""`python benchmarks/gpu_check.py --quick` runs the GPU check's code on CPU at tiny sizes, so it cannot rot
before a GPU runs it. Its numbers are not checked (timing stays out of tests); its table's form is: every time is a
number printed with enough digits to be non-zero however fast the machine."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_quick_gpu_check_prints_the_whole_table(tmp_path):
    out = tmp_path / "table.md"
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    table = out.read_text()
    assert table == proc.stdout
    assert table.startswith("gpu_check (quick): CPU")
    rows = [_cells(line) for line in table.splitlines() if line.startswith("| ") and not line.startswith("|---")]

    steps = {(r[0], r[2], r[3]): r for r in rows if r[0] in ("tiny-bert", "tiny-roberta")}
    for model in ("tiny-bert", "tiny-roberta"):
        for precision in ("fp32", "tf32", "bf16"):
            for step in ("text", "paired"):
                r = steps[(model, precision, step)]
                assert float(r[4]) > 0 and float(r[5].replace(",", "")) > 0  # ms/step, tokens/s
                assert r[6] == "-"  # no GPU memory on CPU
    assert ("tiny-bert", "tf32, read every step", "text") in steps

    by_name = {r[0]: r for r in rows}
    stage = next(r for name, r in by_name.items() if name.startswith("stage:"))
    loop = next(r for name, r in by_name.items() if name.startswith("released loop"))
    assert all(float(x.replace(",", "")) > 0 for x in stage[1:] + loop[1:])
    assert re.fullmatch(r"[\d.]+x", by_name["stage / released loop"][1])
    assert float(by_name["STS12-16, STS-B, SICK-R + alignment/uniformity"][1].replace(",", "")) > 0
    paper = by_name["one paper run (wiki+flickr, bert, kdmcse)"]
    grid = next(r for name, r in by_name.items() if name.startswith("whole grid (100 students"))
    # the grid holds the paper run 5 times over (5 seeds) and much more besides
    assert all(float(g.replace(",", "")) > 5 * float(p.replace(",", "")) > 0 for p, g in zip(paper[1:], grid[1:]))


def test_times_keep_three_significant_digits_however_small():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    assert [gpu_check._num(v) for v in (0.0000412, 0.0412, 4.12, 41.25, 412.5, 41250.0)] == [
        "4.12e-05", "0.0412", "4.12", "41.2", "412.5", "41,250.0"]
