"""``/healthz`` (the process answers) and ``/readyz`` (its dependencies answer).

Readiness runs named checks, each a callable that returns nothing or raises;
a failing check makes ``/readyz`` answer 503 and say which one failed and why.
"""

from __future__ import annotations

import json
from typing import Callable, Mapping

import falcon

from .errors import PROBLEM_JSON, problem_body

__all__ = ["Healthz", "Readyz", "Check"]

Check = Callable[[], None]


class Healthz:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}


class Readyz:
    def __init__(self, checks: Mapping[str, Check]) -> None:
        self.checks = dict(checks)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        results: dict[str, str] = {}
        for name, check in self.checks.items():
            try:
                check()
                results[name] = "ok"
            except Exception as exc:  # a check's failure is the answer, not an error
                results[name] = f"{type(exc).__name__}: {exc}"
        failed = {name: why for name, why in results.items() if why != "ok"}
        if not failed:
            resp.media = {"status": "ready", "checks": results}
            return
        resp.status = falcon.HTTP_503
        resp.content_type = PROBLEM_JSON
        detail = "; ".join(f"{name}: {why}" for name, why in failed.items())
        resp.text = json.dumps(
            problem_body(status=503, title="Not Ready", detail=detail, checks=results, instance=req.path)
        )
