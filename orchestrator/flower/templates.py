"""Flower's own templates, with ours beside them: the run pages extend Flower's ``base.html``
(its stylesheet, scripts, theme and navigation bar), and the navigation bar of every page,
Flower's included, gets an "Orchestrations" link (and, on a run's task page, a link to the run).

One loader for the whole application serves both: a template named here comes from this module,
any other from Flower's template directory, as Flower would load it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import tornado.template

from workers.names import merge_id, parse_batch_id, parse_subtask_id, run_of_coordinator_id

log = logging.getLogger(__name__)

#: Our one page template: Flower's page around a body rendered by ``render``/``run_view``.
PAGE = "orchestrations.html"

_PAGE_SOURCE = """{% extends "base.html" %}
{% block title %}{{ title }} · Flower{% end %}
{% block navbar %}{% module Template("navbar.html", active_tab="orchestrations") %}{% end %}
{% block container %}{% raw body %}{% end %}
{% block extra_scripts %}{% raw script %}{% end %}
"""

#: What the navigation bar gets after Flower's own tabs.
_NAV_ITEMS = """
{% from orchestrator.flower.templates import run_of_path %}
<li class="nav-item">
  <a class="nav-link{% if active_tab == 'orchestrations' %} active{% end %}"
    href="{{ reverse_url('orchestrations') }}"
    {% if active_tab == 'orchestrations' %}aria-current="page"{% end %}>Orchestrations</a>
</li>
{% set orch_run = run_of_path(request.path) %}
{% if orch_run %}
<li class="nav-item">
  <a class="nav-link" id="orchestration-of-task"
    href="{{ reverse_url('orchestration', orch_run) }}">Run {{ orch_run }}</a>
</li>
{% end %}
"""

#: Where the items go: the end of Flower's list of tabs (the first list in its navbar).
_TABS = '<ul class="app-nav navbar-nav">'


def run_of_path(path: str) -> str | None:
    """The run a Flower task page belongs to (its coordinator, a subagent, a batch or its
    merger), from the page's path; None on any other page."""
    _, found, task_id = path.rpartition("/task/")
    if not found or not task_id:
        return None
    if (run := run_of_coordinator_id(task_id)) is not None:
        return run
    parsed = parse_subtask_id(task_id) or parse_batch_id(task_id)
    if parsed is not None:
        return parsed[0]
    run_id = task_id.rpartition(".")[0]
    return run_id if run_id and merge_id(run_id) == task_id else None


def navbar_source(flower_navbar: str) -> str:
    """Flower's navbar with our items at the end of its tabs (unchanged if its markup is not
    the one we know: the pages still work, reached by URL)."""
    start = flower_navbar.find(_TABS)
    end = flower_navbar.find("</ul>", start)
    if start < 0 or end < 0:
        log.warning("Flower's navbar.html has no %r: no Orchestrations link in it", _TABS)
        return flower_navbar
    return flower_navbar[:end] + _NAV_ITEMS + flower_navbar[end:]


class TemplateLoader(tornado.template.Loader):
    """Flower's template directory, plus our page and our navbar."""

    def __init__(self, flower_templates: str, **kwargs: Any) -> None:
        super().__init__(flower_templates, **kwargs)
        navbar = Path(flower_templates, "navbar.html").read_text(encoding="utf-8")
        self._ours = {PAGE: _PAGE_SOURCE, "navbar.html": navbar_source(navbar)}

    def _create_template(self, name: str) -> tornado.template.Template:
        source = self._ours.get(name)
        if source is None:
            return super()._create_template(name)
        return tornado.template.Template(source, name=name, loader=self)
