"""The key is scrubbed from what a server sends back, and answers never are mangled by it:
a key too short to be a secret is refused at start, and never scrubbed."""

from __future__ import annotations

from pathlib import Path

import orjson
import polars as pl
import pytest

from pipeline.cli import main
from pipeline.errors import UsageError
from pipeline.providers.anthropic import parse_answer
from pipeline.run.plan import api_key_from_env
from pipeline.send.scrub import MARK, Scrubber
from tests.e2e import label_job

ANSWER = {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
    "content": [{"type": "text", "text": "none of the above"}], "stop_reason": "end_turn",
    "usage": {"input_tokens": 12, "output_tokens": 4},
}  # fmt: skip


@pytest.mark.parametrize("key", ["none", "e", "k", "above"])
def test_a_short_key_never_rewrites_an_answer_or_its_usage(key: str) -> None:
    scrub = Scrubber(key)
    raw = orjson.dumps(ANSWER)
    assert scrub.raw(raw) == raw  # the JSON parses, usage and all
    answer = scrub.answer(parse_answer(raw))
    assert answer.text == "none of the above"
    assert answer.usage is not None and answer.usage.output_tokens == 4
    assert scrub.text("none of the above") == "none of the above"


def test_a_real_key_is_still_scrubbed_wherever_a_server_echoes_it() -> None:
    key = "sk-ant-api03-abcdefgh"
    echoed = {**ANSWER, "content": [{"type": "text", "text": f"none of the above, {key}"}]}
    answer = Scrubber(key).answer(parse_answer(orjson.dumps(echoed)))
    assert answer.text == f"none of the above, {MARK}"


@pytest.mark.parametrize("key", ["none", "k", "sk-test"])
def test_a_key_too_short_to_be_one_is_refused_without_saying_it(
    key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AISA_API_KEY", key)
    with pytest.raises(UsageError) as refused:
        api_key_from_env("AISA_API_KEY")
    message = str(refused.value)
    assert "$AISA_API_KEY" in message and f"{len(key)} character" in message
    assert "\n" not in message and f" {key} " not in f" {message} "
    monkeypatch.setenv("AISA_API_KEY", "sk-12345")  # 8 characters: accepted
    assert api_key_from_env("AISA_API_KEY") == "sk-12345"


def test_run_with_a_short_key_exits_2_before_sending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = tmp_path / "in.csv"
    pl.DataFrame({"id": ["r0"], "text": ["great"]}).write_csv(inputs)
    # were the key taken, the unreachable address would end the run soon, not hang it
    job = label_job(tmp_path, inputs, limits={"max_retries": 0, "rate_limit_patience_s": 5})
    monkeypatch.setenv("AISA_API_KEY", "none")
    code = main(["run", str(job), "--base-url", "http://127.0.0.1:9"])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "$AISA_API_KEY is 4 character(s)" in line
    assert not (tmp_path / "out" / "results.parquet").exists()
