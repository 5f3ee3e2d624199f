"""A message prepared now and sent later by whoever is due to (a gather's merger).

The coordinator stores it on the run record as JSON (``then``); the member whose envelope
completes the run sends it, or a coordinator does when that member's worker died first.
"""

from __future__ import annotations

import json

from celery import Celery
from celery.canvas import Signature


def deferred_message(sig: Signature) -> str:
    """The JSON to store for ``sig``."""
    return json.dumps({"task": sig.task, "kwargs": sig.kwargs, "options": sig.options})


def send_deferred(app: Celery, message: str) -> None:
    """Send a stored message. Its first argument (a chord's results, if it were one) is None."""
    spec = json.loads(message)
    app.send_task(spec["task"], args=[None], kwargs=spec["kwargs"], **spec["options"])
