"""`pipeline run --reparse`: apply a changed [extract] to the stored answers, sending
nothing. The answers, usage and costs stay as they were paid for; only the label columns
are recomputed, into one new part file that replaces the old ones (written first, so a
crash leaves the old parts, which the newest part overrides). A --ray run's shards are
taken into the parts first (run.plan.prepare), so their answers are relabelled too."""

from __future__ import annotations

import functools
import json
from typing import Any

import orjson
import pyarrow as pa

from pipeline.job.model import Job
from pipeline.labels.extract import Extractor
from pipeline.schema import LABEL_FIELDS
from pipeline.store import checkpoint, durable
from pipeline.store.layout import part_name
from pipeline.store.parts import MANIFEST_KEY, read_part, write_part
from pipeline.store.sink import ResultSink, Transform, merge_in_order


def relabel(sink: ResultSink, job: Job, input_rows: int) -> str:
    """Relabel every stored answer; a line saying what came of it."""
    new_labels = label_transform(job, sink.part_schema.names)
    manifest = checkpoint.relabelled_manifest(job.output, checkpoint.labelling(job))
    # the new part carries the new [extract]: a job.json rebuilt from it says what it holds
    schema = sink.part_schema.with_metadata({MANIFEST_KEY: json.dumps(manifest).encode()})
    parts = sink.part_files()
    if parts:
        merged = sink.parts_dir / part_name(sink.next_part_number())
        write_part(merged, lambda path: merge_in_order(parts, path, schema, transform=new_labels))
        # job.json follows before the old parts go: from here on every label is the new
        # extraction's (a crash before this line leaves the newest part saying so)
        checkpoint.record_labelling(job.output, manifest)
        for part in parts:
            part.unlink()
        durable.sync_directory(sink.parts_dir)
    else:
        checkpoint.record_labelling(job.output, manifest)
    statuses = read_part(sink.finalize(), ["label_status"]).column(0).to_pylist()
    ok, invalid = statuses.count("ok"), statuses.count("invalid")
    text = (
        f"{job.name}: relabelled {ok + invalid:,} stored answers ({ok:,} ok, "
        f"{invalid:,} invalid), nothing sent"
    )
    remaining = input_rows - len(statuses)
    if remaining:
        text += f"; {remaining:,} rows not yet sent: run without --reparse to continue"
    return text


def label_transform(job: Job, keep: list[str]) -> Transform:
    """A part's rows relabelled by the job's [extract], as columns `keep` (with the new
    label columns): for --reparse, and for a --ray shard merged under another's labels."""
    extractor = Extractor(job.extract)
    label_fields = [*extractor.fields(), *LABEL_FIELDS]
    return functools.partial(_relabelled, extractor=extractor, label_fields=label_fields, keep=keep)


def _relabelled(
    table: pa.Table, *, extractor: Extractor, label_fields: list[pa.Field], keep: list[str]
) -> pa.Table:
    """A part's rows with the label columns of the earlier extraction replaced."""
    rows = table.select(["status", "response_text", "content_json"]).to_pylist()
    records = [_labels(extractor, row) for row in rows]
    new = {f.name for f in label_fields}
    table = table.drop_columns([n for n in table.column_names if n not in keep or n in new])
    for field in label_fields:
        table = table.append_column(
            field, pa.array([r.get(field.name) for r in records], field.type)
        )
    return table


def _labels(extractor: Extractor, row: dict[str, Any]) -> dict[str, Any]:
    if row["status"] != "ok":
        return {}  # never answered: no label
    content = orjson.loads(row["content_json"]) if row["content_json"] else []
    return extractor.record(row["response_text"] or "", content)
