"""What was run, as a report shows it: the job's name, model(s), prompt template, system,
extraction, temperature and max_tokens, from job.json (store/manifest.py), so that two
variants' reports (terminal and HTML) can be told apart at a glance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.errors import UsageError
from pipeline.store.manifest import recorded_manifest

MOST_CHARACTERS = 300  # of a prompt or system shown; the rest is elided, its length said


def job_facts(output_dir: Path | None, record: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, text) pairs of what made the output; [] when no job.json says."""
    try:
        manifest = recorded_manifest(output_dir) if output_dir is not None else None
    except UsageError:  # a job.json that cannot be read: the report goes on without it
        manifest = None
    if not manifest:
        return []
    settings, extract = manifest.get("settings", {}), manifest.get("extract") or {}
    request = {k[len("[request] ") :]: v for k, v in settings.items() if k.startswith("[request] ")}
    facts = [("job", str(record.get("job") or output_dir))]
    if request.get("model"):
        facts.append(("model", str(request["model"])))
    facts.append(("prompt", shown(request.get("prompt"))))
    if request.get("system"):
        facts.append(("system", shown(request["system"])))
    tuning = [f"{k} {request[k]}" for k in ("temperature", "max_tokens", "top_p") if k in request]
    if tuning:
        facts.append(("request", ", ".join(tuning)))
    facts.append(("extract", extraction(extract)))
    return facts


def shown(text: object) -> str:
    """A template on one line: its line breaks as ⏎, cut to MOST_CHARACTERS."""
    if not isinstance(text, str):
        return "(none)" if text is None else str(text)
    one_line = text.replace("\r\n", "\n").replace("\n", " \u23ce ")
    if len(one_line) <= MOST_CHARACTERS:
        return one_line
    return f"{one_line[:MOST_CHARACTERS]}\u2026 ({len(text):,} characters)"


def extraction(extract: dict[str, Any]) -> str:
    kind = extract.get("kind") or "text"
    column = extract.get("column")
    into = f" into {column}" if column else ""
    if kind == "choice":
        return f"choice of {', '.join(map(str, extract.get('choices') or []))}{into}"
    if kind in ("json", "tool"):
        fields = extract.get("fields") or {}
        return f"{kind} fields {', '.join(map(str, fields)) or '(none)'}"
    return f"{kind}{into}"


def facts_text(facts: list[tuple[str, str]]) -> str:
    """The terminal's lines of the facts, and a blank line after them."""
    width = max((len(name) for name, _ in facts), default=0)
    lines = "".join(f"{name.ljust(width)}  {text}\n" for name, text in facts)
    return lines + "\n" if lines else ""
