"""Every output column, once: results.parquet's columns in their order and types, and the
groups of them that the pricing, the sink, the reports and the progress bar share.

    id column, keep_columns, gold column   (the input's, as read)
    RESULT_FIELDS                           status ... price_table_version
    label column(s), LABEL_FIELDS           (the [extract]'s, then label_status, label_error)
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

ROW_INDEX = "_row"  # 0-based position in the input: output order and resume key (parts only)
TOKEN_COLUMNS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "cache_creation_5m_tokens",
    "cache_creation_1h_tokens",
)
TOKEN_TOTALS = TOKEN_COLUMNS[:4]  # what reports and the summary add up (the 5m/1h split aside)
COST_COLUMNS = (
    "input_cost_usd",
    "output_cost_usd",
    "cache_write_cost_usd",
    "cache_read_cost_usd",
    "cost_usd",
)
RESULT_FIELDS: tuple[pa.Field, ...] = (
    pa.field("status", pa.string()),
    pa.field("response_text", pa.string()),
    pa.field("content_json", pa.string()),
    pa.field("stop_reason", pa.string()),
    pa.field("model", pa.string()),
    *(pa.field(name, pa.int64()) for name in TOKEN_COLUMNS),
    *(pa.field(name, pa.float64()) for name in COST_COLUMNS),
    pa.field("http_status", pa.int64()),
    pa.field("error_type", pa.string()),
    pa.field("error_message", pa.string()),
    pa.field("attempts", pa.int64()),
    pa.field("request_id", pa.string()),
    pa.field("batch_id", pa.string()),  # the Message Batch the answer came in; null online
    pa.field("latency_ms", pa.float64()),
    pa.field("finished_at", pa.timestamp("us", tz="UTC")),
    pa.field("price_table_version", pa.string()),
)
LABEL_FIELDS: tuple[pa.Field, ...] = (
    pa.field("label_status", pa.string()),  # ok | invalid
    pa.field("label_error", pa.string()),  # why invalid
)


def output_schema(input_fields: Sequence[pa.Field], label_fields: Sequence[pa.Field]) -> pa.Schema:
    """Id and kept input columns, the result columns, then the label columns."""
    return pa.schema([*input_fields, *RESULT_FIELDS, *label_fields, *LABEL_FIELDS])
