"""Request formats behind one seam: `base` (Answer, Usage, Provider), `anthropic`,
`openai`, `sse` (streamed answers), `usage_fields`, `registry` (one Provider per `[api]
format`).

May import: errors, input (tokens).
"""
