"""Shared by the simulator's tests: the model and prompt they use, and a bare HTTP client."""

from __future__ import annotations

import random
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.simulator.answers import Prompt, generate, parse_directives
from pipeline.simulator.profiles import Skills

MODEL = "claude-haiku-4-5-20251001"
LABEL_PROMPT = "Review: {review}\nAnswer with one word: positive, negative or neutral."
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    text: str

    @property
    def json(self) -> Any:
        return orjson.loads(self.text)


def post(base_url: str, body: Any, path: str = "/v1/messages", **headers: str) -> Reply:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    request = urllib.request.Request(base_url + path, data=data, method="POST")
    request.add_header("content-type", "application/json")
    for name, value in headers.items():
        request.add_header(name.replace("_", "-"), value)
    try:
        with NO_PROXY.open(request, timeout=10) as response:
            return Reply(response.status, _lower(response.headers), response.read().decode())
    except urllib.error.HTTPError as error:
        return Reply(error.code, _lower(error.headers), error.read().decode())


def _lower(headers: Any) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def message(text: str, max_tokens: int = 64, **fields: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": text}],
        **fields,
    }


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for frame in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in frame.splitlines())
        events.append((lines["event"], orjson.loads(lines["data"])))
    return events


def simulated_label(
    model: str,
    user_text: str,
    seed: int = 0,
    *,
    temperature: float = 0.0,
    skills: Skills = (),
    rng: random.Random | None = None,
) -> str:
    """What the simulator answers `model` for a labelling prompt: its verdict on the text,
    as the model's profile degrades it (see simulator/profiles); above temperature 0, one
    draw of `rng`. `skills` override the profiles, as `--skill` does."""
    prompt = Prompt(
        model=model,
        system=(),
        messages=(("user", user_text),),
        max_tokens=16,
        last_user_text=user_text,
        temperature=temperature,
    )
    answer = generate(prompt, seed, parse_directives(user_text), skills=skills, rng=rng)
    return str(answer.blocks[0]["text"])
