"""Orchestrations in Flower: ``/orchestrations`` (recent runs), ``/orchestrations/<run_id>`` (a
run's tree, timeline, ROI and subagents) and ``/api/orchestrations[/<run_id>]`` as JSON, served
by the Flower that ``orchestrator flower`` starts, behind Flower's own auth."""

from orchestrator.flower.data import (
    SECRET_SHOWN,
    RunFilter,
    RunList,
    RunPage,
    RunRow,
    list_runs,
    redact,
    run_page,
    tree_of,
)
from orchestrator.flower.handlers import install
from orchestrator.flower.render import Links, runs_page, tree_html
from orchestrator.flower.run_view import run_page_html
from orchestrator.flower.server import flower_with_orchestrations, use_orchestrations_flower
from orchestrator.flower.templates import TemplateLoader, navbar_source, run_of_path

__all__ = [
    "SECRET_SHOWN",
    "Links",
    "RunFilter",
    "RunList",
    "RunPage",
    "RunRow",
    "TemplateLoader",
    "flower_with_orchestrations",
    "install",
    "list_runs",
    "navbar_source",
    "redact",
    "run_of_path",
    "run_page",
    "run_page_html",
    "runs_page",
    "tree_html",
    "tree_of",
    "use_orchestrations_flower",
]
