"""The run pages and their JSON as tornado handlers inside Flower, behind Flower's own auth.

Each handler is a subclass of Flower's ``BaseHandler`` (pages) or ``BaseApiHandler`` (JSON) and
decorated with ``tornado.web.authenticated`` as Flower's own are: basic auth, OAuth and
Flower's refusal of an unauthenticated API apply to them unchanged. The reads block (Redis), so
they run in Flower's thread pool, never on its event loop.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import flower
from flower.api import BaseApiHandler
from flower.app import rewrite_handler
from flower.views import BaseHandler
from tornado import web
from tornado.ioloop import IOLoop

from orchestrator.flower.data import RunFilter, list_runs, run_page
from orchestrator.flower.render import Links, runs_page
from orchestrator.flower.run_view import refresh_script, run_page_html
from orchestrator.flower.templates import PAGE, TemplateLoader
from workers.errors import BrokerUnavailable, RunNotFound
from workers.settings import safe_url
from workers.store import CONNECTION_ERRORS

if TYPE_CHECKING:
    from orchestrator.api.client import Orchestrator

T = TypeVar("T")

#: A run id as the pages take it (the store refuses what names no run).
_RUN_ID = r"([A-Za-z0-9_-]{1,64})"
#: How often a page showing a going run reloads itself.
REFRESH_S = 2.0


class _Reads:
    """What the pages and the API share: the client, the blocking reads, the filter."""

    orch: Orchestrator

    def initialize(self, orch: Orchestrator) -> None:
        self.orch = orch

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in Flower's thread pool; a state server that does not answer is a
        503, an unknown run a 404."""
        try:
            return await IOLoop.current().run_in_executor(None, functools.partial(fn, *args))
        except RunNotFound as exc:
            raise web.HTTPError(404, f"Unknown run '{exc.run_id or '?'}'") from exc
        except BrokerUnavailable as exc:
            raise web.HTTPError(503, str(exc)) from exc
        except CONNECTION_ERRORS as exc:
            url = self.orch.settings.redis_url()
            raise web.HTTPError(503, f"state Redis unavailable at {safe_url(url)}") from exc

    def run_filter(self) -> RunFilter:
        """The list's query arguments, checked (400 with what is wrong)."""
        handler: Any = self
        limit = handler.get_argument("limit", "50", escape=False)
        if not str(limit).isdigit():
            raise web.HTTPError(400, f"limit must be a whole number, not {limit!r}")
        flt = RunFilter(
            status=handler.get_argument("status", "", escape=False),
            pattern=handler.get_argument("pattern", "", escape=False),
            search=handler.get_argument("q", "", escape=False),
            limit=int(limit),
        )
        if (problem := flt.problem()) is not None:
            raise web.HTTPError(400, problem)
        return flt


class _Page(_Reads, BaseHandler):  # type: ignore[misc]
    def links(self, run_id: str | None = None) -> Links:
        url: Callable[..., str] = self.reverse_url
        api = url("api_orchestration", run_id) if run_id else url("api_orchestrations")
        return Links(
            runs=url("orchestrations"),
            run=lambda rid: url("orchestration", rid),
            task=lambda tid: url("task", tid),
            api=api,
        )

    def page(self, title: str, body: str, *, going: bool) -> None:
        script = refresh_script(REFRESH_S) if going else ""
        self.render(PAGE, title=title, body=body, script=script)


class RunsView(_Page):
    """``/orchestrations``: recent runs, newest first, filtered by the query."""

    @web.authenticated
    async def get(self) -> None:
        flt = self.run_filter()
        listing = await self.read(list_runs, self.orch, flt)
        going = any(not row.final for row in listing.runs)
        self.page("Orchestrations", runs_page(listing, flt, self.links()), going=going)


class RunView(_Page):
    """``/orchestrations/<run_id>``: one run; reloads itself while it is going."""

    @web.authenticated
    async def get(self, run_id: str) -> None:
        page = await self.read(run_page, self.orch, run_id)
        body = run_page_html(page, self.links(run_id))
        self.page(f"Run {run_id}", body, going=not page.final)


class RunsApi(_Reads, BaseApiHandler):  # type: ignore[misc]
    """``/api/orchestrations``: the list's rows as JSON (same query arguments)."""

    @web.authenticated
    async def get(self) -> None:
        listing = await self.read(list_runs, self.orch, self.run_filter())
        self.write(listing.model_dump(mode="json"))


class RunApi(_Reads, BaseApiHandler):  # type: ignore[misc]
    """``/api/orchestrations/<run_id>``: the RunResult (or progress), and the tree."""

    @web.authenticated
    async def get(self, run_id: str) -> None:
        page = await self.read(run_page, self.orch, run_id)
        self.write(page.model_dump(mode="json"))


def install(app: Any, orch: Orchestrator) -> None:
    """Add the pages to a Flower application before it listens: the handlers (under Flower's
    URL prefix, ahead of its catch-all 404) and the template loader with our page and navbar."""
    kw = {"orch": orch}
    handlers = [
        web.url(r"/orchestrations", RunsView, kw, name="orchestrations"),
        web.url(rf"/orchestrations/{_RUN_ID}", RunView, kw, name="orchestration"),
        web.url(r"/api/orchestrations", RunsApi, kw, name="api_orchestrations"),
        web.url(rf"/api/orchestrations/{_RUN_ID}", RunApi, kw, name="api_orchestration"),
    ]
    prefix = app.options.url_prefix
    if prefix:
        handlers = [rewrite_handler(h, prefix) for h in handlers]
    app.add_handlers(r".*", handlers)
    templates = os.path.join(os.path.dirname(flower.__file__), "templates")
    app.settings["template_loader"] = TemplateLoader(templates)
