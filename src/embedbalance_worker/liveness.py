"""Is this worker able to embed right now? A pure verdict over the batcher's progress.

Why not just "the model loaded": a batcher whose task died, a forward pass that never
returns, or a model that fails every pass all leave the process up and the port open.
A balancer keeps sending work to such a worker until ``/health`` says otherwise, so it
must say so from what the batcher actually does.
"""

from __future__ import annotations

import attrs

from embedbalance_worker.batcher import Progress


@attrs.frozen(kw_only=True)
class Liveness:
    """The rules: ``stuck_after_s`` for a pass or waiting work; failures in a row."""

    stuck_after_s: float = 60.0
    failures_to_unhealthy: int = 3
    failure_window_s: float = 30.0

    def verdict(self, progress: Progress, now: float) -> tuple[str, str] | None:
        """``None`` when healthy, else ``(error_type, message)`` for a 503."""
        if not progress.alive:
            return "batcher_stopped", "the batching task is not running"
        if (
            progress.running_since is not None
            and self.stuck_after_s > 0
            and now - progress.running_since > self.stuck_after_s
        ):
            return (
                "stuck",
                f"a forward pass has run for {now - progress.running_since:.1f}s "
                f"(limit {self.stuck_after_s:g}s)",
            )
        if (
            progress.running_since is None
            and progress.waiting_since is not None
            and self.stuck_after_s > 0
            and now - progress.waiting_since > self.stuck_after_s
        ):
            return (
                "stuck",
                f"queued work has waited {now - progress.waiting_since:.1f}s with no pass running",
            )
        if (
            progress.consecutive_failures >= self.failures_to_unhealthy
            and progress.last_failure_at is not None
            and now - progress.last_failure_at <= self.failure_window_s
        ):
            return (
                "failing",
                f"the last {progress.consecutive_failures} forward passes failed",
            )
        return None
