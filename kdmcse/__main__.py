"""`python -m kdmcse <stage> …`: dispatch to the `main(argv)` of the stage's module (see STAGES)."""

from __future__ import annotations

import difflib
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
    "config": "kdmcse.config_cli",
    "gpus": "kdmcse.gpus",  # not a stage: the launcher that gives each GPU job its own devices
}
# one line each for the top-level help, in the order of the data flow
SUMMARIES = {
    "download": "fetch one registry artifact (config/sources.yaml), checked against its sha256 and size",
    "extract": "unpack a downloaded archive safely",
    "shards": "build webdataset shards of image-caption pairs with img2dataset",
    "prepare": "write the Wiki1M and caption corpora as Parquet tables",
    "teacher": "encode every image and caption with the frozen CLIP teacher (Parquet cache)",
    "train": "train one student (SimCSE, MCSE or KDMCSE) for one seed",
    "evaluate": "score one student: STS, alignment/uniformity, SentEval transfer",
    "mteb": "score one student on MTEB tasks (optional, extra [mteb]; a local STS-B task works offline)",
    "report": "tables, plots, training curves and model cards from the metrics files",
    "config": "validate config files, print config/README.md, or print the run config of one cell",
    "gpus": "run a command on GPUs of its own (the rules put it in front of every GPU stage)",
}

HELP = """usage: python -m kdmcse <stage> [options]      (python -m kdmcse <stage> --help for its options)

The stages of the kdmcse pipeline, each a plain command; the Snakemake rules call them in this order:

{stages}

Most users run the whole pipeline instead: snakemake --cores all --configfile config/demo.yaml
To train one cell by hand: python -m kdmcse config --cell CELL --seed N prints its run config and command.
"""


def usage() -> str:
    width = max(map(len, STAGES))
    return HELP.format(stages="\n".join(f"  {name:<{width}}  {SUMMARIES[name]}" for name in STAGES))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(usage(), end="", file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] not in STAGES:
        close = difflib.get_close_matches(argv[0], STAGES, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        print(f"error: unknown stage {argv[0]!r}; {hint}stages: {', '.join(STAGES)} "
              "(python -m kdmcse --help describes them)", file=sys.stderr)
        return 2
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
    # A rule's log file is not a terminal: progress bars there redraw at most every 30 s, one line each, instead
    # of thousands of carriage-return updates (kdmcse.io.LogStream). Only for the command line, not for main().
    if not sys.stderr.isatty():
        from kdmcse.io import LogStream

        sys.stderr = LogStream(sys.stderr)
    sys.exit(main())
