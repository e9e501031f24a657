"""The bodies of `estimate`, `report`, `compare` and `cancel` (cli.py parses, these print)."""

from __future__ import annotations

import argparse
import asyncio
import sys


def estimate_command(args: argparse.Namespace) -> int:
    from pipeline.input.sample import Sample
    from pipeline.job.load import load_job, with_options
    from pipeline.job.options import RunOptions
    from pipeline.reports.estimate import estimate

    job = with_options(load_job(args.job), RunOptions(input=args.input, output=args.output))
    if job.output_url is not None:  # what earlier runs put there counts as done
        from pipeline.run.replicate import local_copy

        local_copy(job.output_url)
    options = {"simulate": args.simulate, "base_url": args.base_url}
    sample = Sample(args.sample, args.seed) if args.sample else None
    scope = {"limit": args.limit, "sample": sample, "seed": args.seed}
    sys.stdout.write(estimate(job, pilot=args.pilot or 0, **scope, **options))
    return 0


def report_command(args: argparse.Namespace) -> int:
    from pipeline.reports.report import open_report, report_text

    by, opened = args.by.split(","), open_report(args.output_dir, args.prices)
    sys.stdout.write(report_text(opened, by, args.format, args.output_dir))
    if args.html:
        from pipeline.reports.html_report import write_html

        title, prices = f"{args.output_dir}", opened.prices
        write_html(opened.results, by, args.html, title, opened.output_dir, prices)
        print(f"wrote {args.html}", file=sys.stderr)
    return 0


def compare_command(args: argparse.Namespace) -> int:
    from pipeline.reports.compare import compare, comparison_json, comparison_text
    from pipeline.reports.tables import exact_json

    comparison = compare(args.outputs)
    if args.format == "json":
        sys.stdout.write(exact_json(comparison_json(comparison)))
    else:
        sys.stdout.write(comparison_text(comparison, as_markdown=args.format == "markdown"))
    if args.html:
        from pipeline.reports.compare_html import write_comparison_html

        write_comparison_html(comparison, args.html)
        sys.stdout.flush()  # the comparison before the note, in a terminal shared by both
        print(f"wrote {args.html}", file=sys.stderr)
    return 0


def cancel_command(args: argparse.Namespace) -> int:
    from pipeline.batch.cancel import cancel_batches

    text, canceled, refused = asyncio.run(
        cancel_batches(args.output_dir, args.base_url, args.api_key_env)
    )
    sys.stdout.write(text)
    if refused:
        return 4
    if not canceled:
        print("pipeline: cancel: no batch in progress was canceled", file=sys.stderr)
        return 2
    return 0
