"""The metrics seam: each task's rounds and the servicer report what happens to an
Observer. The default does nothing; a Prometheus observer plugs in here
(``Coordinator(..., observer=...)``; bytes per RPC belong in a server interceptor) without touching the round logic.
"""

from __future__ import annotations


class Observer:
    def submission(self, task_id: str, outcome: str) -> None:
        """outcome: 'accepted', 'identical' or a refusal reason ('late', 'duplicate', ...)."""

    def round_opened(self, task_id: str, round_no: int, attempt: int, clients: int) -> None: ...

    def round_committed(
        self, task_id: str, round_no: int, seconds_open: float, commit_seconds: float, submissions: int
    ) -> None: ...

    def round_abandoned(self, task_id: str, round_no: int, attempt: int, submissions: int) -> None: ...

    def clients_online(self, task_id: str, count: int) -> None: ...


NULL_OBSERVER = Observer()
