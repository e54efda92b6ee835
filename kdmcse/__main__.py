"""`python -m kdmcse <stage> …`: dispatch to the `main(argv)` of the stage's module (see STAGES)."""

from __future__ import annotations

import importlib
import logging
import sys

from kdmcse.errors import KdmcseError

# stage name -> module; each module exposes main(argv) -> int
STAGES = {
    "download": "kdmcse.data.download",
    "extract": "kdmcse.data.archive",
    "shards": "kdmcse.data.fetch_shards",
    "prepare": "kdmcse.data.prepare",
    "teacher": "kdmcse.teacher.run",
    "train": "kdmcse.train.loop",
    "evaluate": "kdmcse.evaluate.cli",
    "mteb": "kdmcse.evaluate.mteb_run",  # optional: MTEB tasks (extra [mteb])
    "report": "kdmcse.report.cli",
    "config": "kdmcse.config",
    "gpus": "kdmcse.gpus",  # not a stage: the launcher that gives each GPU job its own devices
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in STAGES:
        names = ", ".join(STAGES)
        print(f"usage: python -m kdmcse <stage> [options]\nstages: {names}", file=sys.stderr)
        return 0 if argv and argv[0] in {"-h", "--help"} else 2
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    module = importlib.import_module(STAGES[argv[0]])
    try:
        return int(module.main(argv[1:]) or 0)
    except KdmcseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
