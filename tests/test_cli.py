"""The command line a person meets: top-level help, an unknown stage, progress bars in log files, and the run
config of one cell printed so that `train` can be run by hand."""

from __future__ import annotations

import io
import json
import logging
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from tqdm import tqdm

from kdmcse.__main__ import STAGES, main
from kdmcse.io import LogStream

ROOT = Path(__file__).resolve().parents[1]
CELL = "wiki+flickr/bert/kdmcse/margin~0.15_threshold~off"


def test_help_lists_every_stage_with_what_it_does(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for stage in STAGES:
        assert re.search(rf"^  {stage} +\S.*$", out, re.M), f"no help line for {stage}"


def test_no_stage_prints_the_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage: python -m kdmcse <stage>" in capsys.readouterr().err


def test_unknown_stage_is_one_error_line_with_a_suggestion(capsys):
    assert main(["trian", "--seed", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown stage 'trian'") and "'train'" in err[0], err


def test_a_stage_run_into_a_log_file_writes_no_carriage_returns(tmp_path):
    # `prepare wiki` shows a progress bar over the lines it reads; under a rule its stderr is the log file
    text = tmp_path / "wiki.txt"
    text.write_text("".join(f"sentence number {i} .\n" for i in range(50_000)))
    log = tmp_path / "prepare.log"
    with open(log, "w") as err:
        subprocess.run([sys.executable, "-m", "kdmcse", "prepare", "wiki", "--input", str(text), "--out",
                        str(tmp_path / "wiki.parquet")], stderr=err, cwd=ROOT, check=True, timeout=120)
    assert b"\r" not in log.read_bytes()  # bytes: text mode would turn each \r into a newline
    assert (tmp_path / "wiki.parquet").is_file()


def redraws(stream: LogStream, clock: list[float], steps: int, dt: float, **kw) -> None:
    bar = tqdm(total=steps, file=stream, mininterval=0, miniters=1, desc="train", **kw)
    for _ in range(steps):
        clock[0] += dt
        bar.update(1)
    bar.close()


def test_progress_redraws_become_lines_at_most_every_30_seconds():
    out, clock = io.StringIO(), [0.0]
    stream = LogStream(out, clock=lambda: clock[0])
    redraws(stream, clock, steps=600, dt=1.0)  # 10 minutes, one update per second
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert 20 <= len(lines) <= 22, lines  # one per 30 s, plus the first draw and the final state
    assert lines[-1].startswith("train: 100%") and "600/600" in lines[-1]


def test_plain_writes_pass_through_between_redraws_and_cleared_bars_leave_nothing():
    out, clock = io.StringIO(), [0.0]
    stream = LogStream(out, clock=lambda: clock[0])
    log = logging.getLogger("kdmcse.test_cli")
    handler = logging.StreamHandler(stream)
    log.addHandler(handler)
    try:
        bar = tqdm(total=3, file=stream, mininterval=0, desc="encode", leave=False)
        bar.update(1)
        log.warning("a log record\nover two lines")
        bar.update(2)
        bar.close()
        print("done", file=stream)
    finally:
        log.removeHandler(handler)
    lines = out.getvalue().splitlines()
    assert lines[-3:] == ["a log record", "over two lines", "done"], lines
    assert all(not line.strip() == "" for line in lines), lines


def test_a_terminal_keeps_tqdm_as_it_is(tmp_path):
    # the wrapper is installed only when stderr is not a terminal: main() itself leaves sys.stderr alone
    before = sys.stderr
    assert main(["--help"]) == 0
    assert sys.stderr is before


# ---------------------------------------------------------------- the run config of one cell


def run_config_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdmcse", "config", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_cell_run_config_is_what_the_rule_runs():
    printed = run_config_cli("config/config.yaml", "--cell", CELL, "--seed", "3", "--command")
    assert printed.returncode == 0, printed.stderr
    target = f"results/students/{CELL}/seed~3/run_meta.json"
    plan = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "--cores", "1", target], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert plan.returncode == 0, plan.stderr[-3000:]
    rule_line = next(line for line in plan.stdout.splitlines() if " -m kdmcse train " in line)
    ours = shlex.split(printed.stdout.strip())
    theirs = shlex.split(rule_line[rule_line.index("python -m kdmcse train"):].split(" 2> ")[0])
    assert ours == theirs


def test_cell_run_config_json_loads_as_the_train_run_config():
    from kdmcse.train.run_config import validate_run_config

    printed = run_config_cli("--cell", CELL)  # no files: config/config.yaml
    assert printed.returncode == 0, printed.stderr
    cfg = validate_run_config(json.loads(printed.stdout))
    assert cfg["objective"] == "kdmcse" and cfg["margin2"] == 0.15 and cfg["model"] == "bert-base-uncased"


@pytest.mark.parametrize("cell, words", [
    ("wiki+flickr/bert/kdmcse/margin~0.3_threshold~off", "is not in the grid"),
    ("bert/kdmcse", "is not a cell path of the form"),
])
def test_unknown_cell_is_one_line_naming_known_cells(cell, words):
    printed = run_config_cli("--cell", cell)
    assert printed.returncode == 2
    err = printed.stderr.strip().splitlines()
    assert len(err) == 1 and words in err[0] and CELL in err[0], err


class Trickle(io.BytesIO):
    """A pipe that hands its bytes over a few at a time, cutting redraws and UTF-8 characters apart."""

    def read1(self, n: int = -1) -> bytes:
        return self.read(7)


def test_a_child_process_output_gets_the_same_treatment():
    from kdmcse.io import copy_output

    child = "".join(f"\rfetch: {i}/300 shards ✓" for i in range(1, 301)) + "\nfinished 300 shards\n"
    out, clock = io.StringIO(), [0.0]
    copy_output(Trickle(child.encode("utf-8")), LogStream(out, clock=lambda: clock[0]))
    # the clock stands still: the first redraw is shown, the last one when its line ends, nothing cut in two
    assert out.getvalue() == "fetch: 1/300 shards ✓\nfetch: 300/300 shards ✓\nfinished 300 shards\n"
