"""The providers by `[api] format`: the one table from a format's name to its Provider.
job/load.py accepts the names in it, and asks it what a format supports (batches)."""

from __future__ import annotations

from pipeline.providers import anthropic, openai, sse
from pipeline.providers.base import Provider

ANTHROPIC = Provider(
    name="anthropic",
    endpoint=anthropic.endpoint,
    request_headers=anthropic.request_headers,
    body=anthropic.body,
    streamed=anthropic.streamed,
    parse_answer=anthropic.parse_answer,
    parse_error=anthropic.parse_error,
    parse_stream=sse.parse_stream,
    estimate_input_tokens=anthropic.estimate_input_tokens,
    supports_batches=True,
    supports_prompt_cache=True,
)
OPENAI = Provider(
    name="openai",
    endpoint=openai.endpoint,
    request_headers=anthropic.request_headers,  # the gateway takes the same auth for both
    body=openai.body,
    streamed=openai.streamed,
    parse_answer=openai.parse_answer,
    parse_error=anthropic.parse_error,  # reads the OpenAI error shape too
    parse_stream=sse.parse_stream,  # never used: chat answers are not streamed here
    estimate_input_tokens=anthropic.estimate_input_tokens,  # the rendered Messages body
    supports_batches=False,  # the Message Batches API is the Messages API's
    supports_prompt_cache=False,  # `auto` marks breakpoints in Messages bodies only
)
PROVIDERS = {provider.name: provider for provider in (ANTHROPIC, OPENAI)}


def provider_for(format_name: str) -> Provider:
    return PROVIDERS[format_name]  # the job file's check allows only these names


def batch_formats() -> str:
    """The formats batch mode accepts, as a message names them: `"anthropic"`."""
    return " or ".join(f'"{p.name}"' for p in PROVIDERS.values() if p.supports_batches)


def prompt_cache_formats() -> str:
    """The formats `cache = "auto"` marks, as a message names them: `anthropic`."""
    return " or ".join(p.name for p in PROVIDERS.values() if p.supports_prompt_cache)
