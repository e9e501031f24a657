"""The command line: `pipeline run | estimate | report | status | models | cancel | simulate`.
Exit codes:

0 every row finished; 1 internal error (a bug); 2 bad input or usage, nothing sent;
3 stopped at the budget; 4 the API rejects every request; 5 batches still in progress;
6 stopped by a local write error (disk full): paid answers kept; 130 / 143 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.commands.native import (
    collect_nothing_at_exit,
    leave_numpy_unloaded,
    set_native_libraries,
)
from pipeline.commands.outputs import OUTPUT_HELP, output_arg
from pipeline.errors import JobStopped, LocalWriteError, PipelineError
from pipeline.store.durable import describe, is_write_error, remedy

if TYPE_CHECKING:
    from pipeline.job.options import RunOptions

MAX_COUNT = 10**15  # --limit / --pilot: more than any input; larger ones overflow polars


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number (got {text!r})") from None
    if not 1 <= value <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"must be >= 1 and <= {MAX_COUNT} (got {value})")
    return value


def _integer(text: str) -> int:
    """A whole number; its range is the [limits] key's, checked with the job's (with_options)."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number (got {text!r})") from None


def _number(text: str) -> float:
    """A number; its range is the [limits] key's, checked with the job's (with_options)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number (got {text!r})") from None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def version() -> str:
    """The installed version and the price table it prices with (every row records it)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    from pipeline.pricing import load_price_table

    try:
        number = installed("pipeline")
    except PackageNotFoundError:  # run from a source tree that was never installed
        number = "(not installed)"
    return f"pipeline {number} (price table {load_price_table().version})"


class _Version(argparse.Action):
    """--version, worked out only when asked for (it reads the price table)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help=kwargs.get("help"))

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(version())  # stdout, as argparse's own version action prints
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pipeline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action=_Version, help="show the version and exit")
    commands = parser.add_subparsers(
        dest="command", required=True, parser_class=_Parser,
        help="the command (`pipeline COMMAND --help` says more)",
    )  # fmt: skip
    _add_run(commands.add_parser("run", help="run (or resume) a job"))
    estimate = commands.add_parser("estimate", help="tokens, cost and time before spending")
    add = estimate.add_argument
    add("job", metavar="JOB.toml", help="the job file")
    add(
        "--pilot",
        type=_positive_int,
        metavar="N",
        help="send N sampled rows for real and extrapolate (kept: the run won't pay again)",
    )
    add("--input", metavar="PATH", help="input file instead of [job] input")
    add("--output", metavar="DIR", help="output directory instead of [job] output")
    add("--base-url", metavar="URL", help="API base URL for the pilot")
    add("--simulate", action="store_true", help="pilot against the built-in simulator")
    add("--limit", type=_positive_int, metavar="N", help="price only the first N input rows")
    _add_sample(add)
    _add_compare(commands.add_parser("compare", help="outputs side by side: accuracy, cost"))
    report = commands.add_parser("report", help="cost and usage report of an output")
    report.add_argument(
        "output_dir", type=output_arg, metavar="OUTPUT_DIR",
        help="a job's output; or usage files of another tool (.parquet, .csv, .jsonl, or a "
        "directory of them): model and token columns, priced here",
    )  # fmt: skip
    report.add_argument(
        "--by", default="model", metavar="COL[,COL...]",
        help="group by these columns (default: model)",
    )  # fmt: skip
    report.add_argument(
        "--format", default="table", choices=("table", "csv", "json", "markdown"),
        help="how the report is printed (default: table)",
    )  # fmt: skip
    report.add_argument(
        "--html",
        metavar="FILE",
        type=Path,
        help="also write one self-contained HTML page with charts",
    )
    report.add_argument(
        "--prices", metavar="FILE", type=Path,
        help="usage files: prices (TOML, as a job's [pricing]) on top of the built-in table",
    )  # fmt: skip
    _add_status(
        commands.add_parser("status", help="how far a job got (asks the API only with --refresh)")
    )
    _add_models(commands.add_parser("models", help="the models of the price table, their prices"))
    cancel = commands.add_parser("cancel", help="cancel the job's batches in progress (batch mode)")
    cancel.add_argument("output_dir", type=output_arg, metavar="OUTPUT_DIR", help=OUTPUT_HELP)
    _add_batch_api(cancel.add_argument)
    commands.add_parser(
        "simulate", help="serve the local API simulator (see --help)", add_help=False
    )
    return parser


def _add_status(status: argparse.ArgumentParser) -> None:
    add = status.add_argument
    add("output_dir", type=output_arg, metavar="OUTPUT_DIR", help=OUTPUT_HELP)
    add(
        "--format", default="text", choices=("text", "json"),
        help="text, or one JSON object with the same fields (default: text)",
    )  # fmt: skip
    add(
        "--refresh", action="store_true",
        help="ask the API for the state of the batches not yet collected, instead of showing "
        "them as a run last saw them (needs the key)",
    )  # fmt: skip
    _add_batch_api(add)


def _add_batch_api(add: Callable[..., Any]) -> None:
    """--base-url and --api-key-env of the commands that ask about an output's batches."""
    add(
        "--base-url", metavar="URL",
        help="the API host the batches were made on, if not the default",
    )  # fmt: skip
    add(
        "--api-key-env", metavar="NAME",
        help="the key's variable (default AISA_API_KEY, then ANTHROPIC_API_KEY)",
    )  # fmt: skip


def _add_models(models: argparse.ArgumentParser) -> None:
    models.add_argument(
        "models", nargs="*", metavar="MODEL",
        help="only these models (ids or aliases; default: every model of the table)",
    )  # fmt: skip
    models.add_argument(
        "--format", default="table", choices=("table", "json"),
        help="how the prices are printed (default: table)",
    )  # fmt: skip


def _add_compare(compare: argparse.ArgumentParser) -> None:
    compare.add_argument(
        "outputs", nargs="+", type=Path, metavar="OUTPUT_DIR",
        help="two or more outputs of jobs over the same input",
    )  # fmt: skip
    compare.add_argument(
        "--format", default="table", choices=("table", "json", "markdown"),
        help="how the comparison is printed (default: table)",
    )  # fmt: skip
    compare.add_argument(
        "--html", metavar="FILE", type=Path, help="also write one self-contained HTML page"
    )


def _add_run(run: argparse.ArgumentParser) -> None:
    add = run.add_argument
    add("job", metavar="JOB.toml", help="the job file")
    add("--input", metavar="PATH", help="input file instead of [job] input")
    add("--output", metavar="DIR", help="output directory instead of [job] output")
    add("--base-url", metavar="URL", help="API base URL instead of [api] base_url")
    add("--limit", type=_positive_int, metavar="N", help="only the first N input rows")
    _add_sample(add)
    add("--concurrency", type=_integer, metavar="N", help="requests in flight at most")
    add("--rpm", type=_number, metavar="N", help="requests a minute at most")
    add("--max-cost", type=_number, metavar="USD", help="budget in USD")
    add(
        "--simulate",
        action="store_true",
        help="run against the built-in simulator on loopback (no key, no cost)",
    )
    add(
        "--retry-errors",
        action="store_true",
        help="re-send only rows whose recorded outcome is an error",
    )
    add(
        "--fresh",
        action="store_true",
        help="start over; earlier results are moved aside, never deleted",
    )
    add(
        "--reparse",
        action="store_true",
        help="apply a changed [extract] to the stored answers; sends nothing",
    )
    add(
        "--set-aside-damaged",
        action="store_true",
        help="move damaged part files to OUTPUT/damaged/ (kept) and send only their rows again",
    )
    add(
        "--batch",
        action="store_true",
        help="send through the Message Batches API (half price; answers within 24 h)",
    )
    add(
        "--detach",
        action="store_true",
        help="batch mode: submit and exit 5 at once; a later run collects",
    )
    add(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="run on a Ray cluster (no ADDRESS: a local one for the run)",
    )
    add(
        "--workers",
        type=_positive_int,
        metavar="N",
        help="--ray: worker actors (default: CPUs, at most concurrency)",
    )
    add("--no-progress", action="store_true", help="no progress bar")


def _add_sample(add: Callable[..., Any]) -> None:
    add(
        "--sample",
        type=_positive_int,
        metavar="N",
        help="N rows chosen at random by their ids alone (the same for every prompt or model; "
        "a larger N holds a smaller one's rows; stratified by [job] gold_column)",
    )
    add("--seed", type=_integer, default=0, metavar="S", help="--sample's seed (default 0)")


NEVER_ON_RAY = ("report", "compare", "status", "models", "cancel")  # commands that run no rows


def main(argv: Sequence[str] | None = None) -> int:
    whole_process = argv is None  # not a test's or a notebook's call: may leave numpy out
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:  # no command: what the commands are, not argparse's one-line complaint
        build_parser().print_help(sys.stderr)
        return 2
    if argv[:1] == ["simulate"]:  # its flags are the simulator's own parser's
        from pipeline.commands.simulate import simulate

        return simulate(argv[1:])
    set_native_libraries()  # before pyarrow is imported: an output URL is fetched as parsed
    if whole_process and argv[0] in NEVER_ON_RAY:
        leave_numpy_unloaded()
    args = build_parser().parse_args(argv)
    collect_nothing_at_exit()
    try:
        return _dispatch(args, whole_process)
    except PipelineError as e:
        print(f"pipeline: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("pipeline: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if not is_write_error(e):
            return _internal_error(e)
        where = describe(e, Path(e.filename or "the output directory"))
        print(f"pipeline: {where}: {remedy(e)}", file=sys.stderr)
        return LocalWriteError.exit_code
    except Exception as e:
        return _internal_error(e)


def _internal_error(error: Exception) -> int:
    """A bug: one line, the traceback only on request."""
    if os.environ.get("PIPELINE_DEBUG"):
        traceback.print_exception(error)
    line = (str(error).strip().splitlines() or [""])[0]
    print(
        f"pipeline: internal error: {error.__class__.__name__}: {line} (a bug: please "
        "report it; PIPELINE_DEBUG=1 shows the traceback)",
        file=sys.stderr,
    )
    return 1


def _dispatch(args: argparse.Namespace, whole_process: bool) -> int:
    if args.command == "run":  # first: its parts' check starts before asyncio's import
        return _run(args, whole_process)
    if whole_process and args.command == "estimate" and args.pilot is None:
        leave_numpy_unloaded()  # (a pilot runs rows: on Ray, if the job says so)
    from pipeline.commands import reports

    if args.command in ("status", "models"):
        _print_status_or_models(args)
        return 0
    command = {
        "estimate": reports.estimate_command,
        "report": reports.report_command,
        "compare": reports.compare_command,
        "cancel": reports.cancel_command,
    }[args.command]
    return command(args)


def _print_status_or_models(args: argparse.Namespace) -> None:
    if args.command == "models":
        from pipeline.commands.models import models_output

        sys.stdout.write(models_output(args.models, args.format))
        return
    from pipeline.commands.status import status_output

    batch_api = {"base_url": args.base_url, "api_key_env": args.api_key_env}
    sys.stdout.write(status_output(args.output_dir, args.format, ask_api=args.refresh, **batch_api))


RUN_ONLY_FLAGS = ("job", "reparse", "no_progress")  # `run`'s own; the rest are RunOptions


def run_options(args: argparse.Namespace) -> RunOptions:
    """`pipeline run`'s flags as the RunOptions they are (--no-progress: show_progress)."""
    from pipeline.job.options import RunOptions

    given = {f.name: getattr(args, f.name) for f in fields(RunOptions) if f.name != "show_progress"}
    return RunOptions(**given, show_progress=False if args.no_progress else None)


def _run(args: argparse.Namespace, whole_process: bool) -> int:
    if args.reparse:
        from pipeline.api import reparse_job

        print(reparse_job(args.job, input=args.input, output=args.output), file=sys.stderr)
        return 0
    from pipeline.commands.checks import check_run, start_ahead
    from pipeline.job.load import load_job
    from pipeline.job.options import runs_on_ray

    job, options = load_job(args.job), run_options(args)  # the job file read once
    check_run(job, options)  # before a simulator starts or a row is read
    if whole_process and not runs_on_ray(job, options):
        leave_numpy_unloaded()
    start_ahead(job, options)  # before the run's imports: they take as long
    from pipeline.api import run_job_async, run_to_the_end
    from pipeline.run.progress import RunSummary

    try:
        summary = run_to_the_end(run_job_async(job, options))
    except JobStopped as e:
        if isinstance(e.summary, RunSummary):
            print(e.summary.line(), file=sys.stderr)
        print(f"pipeline: {e}", file=sys.stderr)
        return e.exit_code
    print(summary.line(), file=sys.stderr)
    if summary.results:
        print(f"results: {summary.results}", file=sys.stderr)
    return 0
