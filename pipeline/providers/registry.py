"""The providers by `[api] format`: the one table from a format's name to its Provider.
(job/load.py checks the names a job file may give, and may import no provider.)"""

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
)
PROVIDERS = {provider.name: provider for provider in (ANTHROPIC, OPENAI)}


def provider_for(format_name: str) -> Provider:
    return PROVIDERS[format_name]  # the job file's check allows only these names
