"""What the gateway counts: Prometheus metrics for scraping, and live figures for /admin.

One `Metrics` per app, with its own `CollectorRegistry`, so several apps in
one process (tests, embedding) never share or clash. The hot path pays one
integer increment per token (`tokens_out`); Prometheus counters are updated
once per reply. `sample()` is called once a second by the admin broadcaster
and keeps 15 minutes of one-second samples.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import quantiles
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]

_HISTORY = 900  # one-second samples: 15 minutes
_TTFT_WINDOW = 1000  # recent first-token times kept for the admin percentiles


@dataclass(slots=True)
class _ModelUsage:
    replies: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated_replies: int = 0  # whose usage the upstream did not report


@dataclass
class _Totals:
    tokens: int = 0
    starts: int = 0
    errors: int = 0


@dataclass
class Metrics:
    connections: Callable[[], int] = lambda: 0
    streaming: Callable[[], int] = lambda: 0
    live_tokens: Callable[[], int] = lambda: 0
    queued: Callable[[], int] = lambda: 0
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        Gauge(
            "tokenwire_connections", "Open Socket.IO connections on /ai", registry=r
        ).set_function(lambda: self.connections())
        Gauge(
            "tokenwire_replies_streaming", "Replies streaming right now", registry=r
        ).set_function(lambda: self.streaming())
        Gauge(
            "tokenwire_replies_queued",
            "Replies waiting for the upstream (UPSTREAM_MAX_CONCURRENCY)",
            registry=r,
        ).set_function(lambda: self.queued())
        self._started = Counter(
            "tokenwire_replies_started", "Replies started", ["model"], registry=r
        )
        self._finished = Counter(
            "tokenwire_replies_finished",
            "Replies finished, by status and finish reason",
            ["status", "finish_reason"],
            registry=r,
        )
        self._tokens = Counter(
            "tokenwire_tokens_out",
            "Completion tokens streamed to clients (upstream usage, else tiktoken)",
            registry=r,
        )
        self._tokens_by_source = Counter(
            "tokenwire_completion_tokens",
            "Completion tokens of finished replies, by where the count came from: "
            "upstream (reported by the model server) or estimated (counted with tiktoken)",
            ["source"],
            registry=r,
        )
        self._errors = Counter(
            "tokenwire_errors", "chat:error events, by code", ["code"], registry=r
        )
        self._ttft = Histogram(
            "tokenwire_upstream_ttft_seconds",
            "Upstream time to first token",
            registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
        )
        self._duration = Histogram(
            "tokenwire_reply_duration_seconds",
            "Reply duration, start to final event",
            registry=r,
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300),
        )
        self._event = Histogram(
            "tokenwire_event_handling_seconds",
            "Time to handle a client event",
            ["event"],
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
        )
        self.tokens_finished = 0
        self._totals = _Totals()
        self._errors_by_code: Tally[str] = Tally()
        self._usage: dict[str, _ModelUsage] = {}
        self._recent_ttft: deque[float] = deque(maxlen=_TTFT_WINDOW)
        self._history: deque[dict[str, Any]] = deque(maxlen=_HISTORY)
        self._last: tuple[float, int, int, int] | None = None

    # --- recording (called by the chat service and the gateway)

    def reply_started(self, model: str) -> None:
        self._started.labels(model).inc()
        self._totals.starts += 1

    def first_token(self, seconds: float) -> None:
        self._ttft.observe(seconds)
        self._recent_ttft.append(seconds)

    def reply_finished(
        self,
        *,
        status: str,
        finish_reason: str,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        seconds: float,
        usage_source: str = "upstream",
    ) -> None:
        self._finished.labels(status, finish_reason).inc()
        self._tokens.inc(completion_tokens)
        self._tokens_by_source.labels(usage_source).inc(completion_tokens)
        self.tokens_finished += completion_tokens
        self._duration.observe(seconds)
        usage = self._usage.setdefault(model, _ModelUsage())
        usage.replies += 1
        usage.prompt_tokens += prompt_tokens
        usage.completion_tokens += completion_tokens
        if usage_source == "estimated":
            usage.estimated_replies += 1

    def error(self, code: str) -> None:
        self._errors.labels(code).inc()
        self._errors_by_code[code] += 1
        self._totals.errors += 1

    def event_handled(self, event: str, seconds: float) -> None:
        self._event.labels(event).observe(seconds)

    # --- reading

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def sample(self) -> dict[str, Any]:
        """One second's figures (rates since the previous call), added to the history."""
        now = time.monotonic()
        tokens = self.tokens_finished + self.live_tokens()
        current = (now, tokens, self._totals.starts, self._totals.errors)
        previous = self._last or current
        elapsed = max(now - previous[0], 1e-9) if self._last else 1.0
        self._last = current
        sample = {
            "ts": int(time.time() * 1000),
            "connections": self.connections(),
            "streaming": self.streaming(),
            "tokensPerS": round((tokens - previous[1]) / elapsed, 2),
            "startsPerS": round((current[2] - previous[2]) / elapsed, 2),
            "errorsPerS": round((current[3] - previous[3]) / elapsed, 2),
        }
        self._history.append(sample)
        return sample

    def history(self) -> list[dict[str, Any]]:
        return list(self._history)

    def snapshot(self, sample: dict[str, Any]) -> dict[str, Any]:
        """A sample plus the totals the dashboard shows next to it."""
        p50 = p95 = None
        if len(self._recent_ttft) >= 2:
            cuts = quantiles(self._recent_ttft, n=100, method="inclusive")
            p50, p95 = round(cuts[49] * 1000, 1), round(cuts[94] * 1000, 1)
        elif self._recent_ttft:
            p50 = p95 = round(self._recent_ttft[0] * 1000, 1)
        return {
            **sample,
            "errorsByCode": dict(self._errors_by_code),
            "ttftP50Ms": p50,
            "ttftP95Ms": p95,
            "usageByModel": {
                model: {
                    "replies": u.replies,
                    "promptTokens": u.prompt_tokens,
                    "completionTokens": u.completion_tokens,
                    "estimatedReplies": u.estimated_replies,
                }
                for model, u in self._usage.items()
            },
        }
