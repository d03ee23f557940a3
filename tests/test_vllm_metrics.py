"""The ``vllm:*`` families, the Grafana dashboard and the alert rules that read them.

Dashboards and autoscalers built for vLLM read these names; the test holds our
exposition to vLLM's names, labels and buckets, and holds the shipped dashboard
and alert rules to what a real server exposes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from actors.metrics.state import MetricsState
from actors.metrics.vllm_compat import REQUEST_BUCKETS, TTFT_BUCKETS
from actors.model import LoadedModel
from runtime.clock import ManualClock
from tests.server import REPO, Server, running_server
from tests.test_api import client, model_name
from tests.test_api_metrics import eventually, metrics_text, samples, value
from tests.test_config import check_config
from tests.test_metrics import SOURCES, completed

pytestmark = pytest.mark.timeout(180)

MONITORING = REPO / "docs" / "monitoring"
GAUGES = {"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"}
COUNTERS = {
    "vllm:prompt_tokens",
    "vllm:generation_tokens",
    "vllm:request_success",
    "vllm:prefix_cache_queries",
    "vllm:prefix_cache_hits",
}
HISTOGRAMS = {
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:time_per_output_token_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:request_queue_time_seconds",
    "vllm:request_prompt_tokens",
    "vllm:request_generation_tokens",
}
VLLM_FAMILIES = GAUGES | COUNTERS | HISTOGRAMS
PROMQL_WORDS = set(
    """
    sum avg max min count rate irate increase histogram_quantile by without on ignoring
    group_left group_right and or unless bool clamp_min clamp_max label_values topk
    bottomk abs delta deriv time vector scalar offset le
    """.split()  # noqa: SIM905 - a word list reads better than one quoted line each
)


def render(state: MetricsState) -> str:
    state.refresh(SOURCES)
    return state.registry.render()


def test_the_families_carry_vllms_names_labels_and_buckets() -> None:
    state = MetricsState(ManualClock(), config={"model": "tiny"})
    state.observe(completed(duration=1.2, finish_reason="length"))
    state.observe(completed(duration=2.0, status=503, finish_reason=None))
    state.observe(completed(status=429, admitted=False))  # refused: never reached the engine
    parsed = samples(render(state))
    assert not VLLM_FAMILIES - parsed.keys()
    labels = {"model_name": "tiny", "engine": "0"}
    assert value(parsed, "vllm:num_requests_running", **labels) == 2.0
    assert value(parsed, "vllm:num_requests_waiting", **labels) == 5.0
    assert value(parsed, "vllm:prompt_tokens_total", **labels) == 20.0
    assert value(parsed, "vllm:generation_tokens_total", **labels) == 8.0
    assert value(parsed, "vllm:request_success_total", finished_reason="length") == 1.0
    assert value(parsed, "vllm:request_success_total", finished_reason="abort") == 1.0
    assert value(parsed, "vllm:e2e_request_latency_seconds_count", **labels) == 2.0
    assert value(parsed, "vllm:inter_token_latency_seconds_count", **labels) == 4.0
    assert value(parsed, "vllm:time_per_output_token_seconds_count", **labels) == 4.0
    assert value(parsed, "vllm:prefix_cache_hits_total", **labels) == 96.0

    def bounds(family: str) -> list[float]:
        return [float(row["le"]) for name, row, _ in parsed[family] if name.endswith("_bucket")][
            :-1
        ]  # +Inf last

    assert bounds("vllm:time_to_first_token_seconds") == list(TTFT_BUCKETS)
    assert bounds("vllm:e2e_request_latency_seconds") == list(REQUEST_BUCKETS)
    # The first request's 1.2 s lands in vLLM's 1.5 s bucket, not the 1.0 s one.
    assert value(parsed, "vllm:e2e_request_latency_seconds_bucket", le="1.0") == 0.0
    assert value(parsed, "vllm:e2e_request_latency_seconds_bucket", le="1.5") == 1.0


def test_each_model_is_labelled_by_its_served_name() -> None:
    state = MetricsState(ManualClock(), config={"model": "default"})
    state.observe(completed(model="a"))
    state.observe(completed(model="b"))
    state.observe(completed(model="b"))
    parsed = samples(render(state))
    assert value(parsed, "vllm:request_success_total", model_name="a") == 1.0
    assert value(parsed, "vllm:request_success_total", model_name="b") == 2.0
    # One engine whose reports carry no model name: the server's single model.
    assert value(parsed, "vllm:num_requests_running", model_name="default") == 2.0


def test_the_families_can_be_turned_off() -> None:
    state = MetricsState(ManualClock(), config={"model": "tiny"}, vllm_names=False)
    state.observe(completed())
    text = render(state)
    assert "vllm:" not in text
    assert "troupe_requests_total" in text


# --- a real server ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(model_dir, tmp_path_factory.mktemp("vllm-metrics")) as server:
        yield server


def test_a_real_server_exposes_them_under_traffic(
    served: Server, loaded_model: LoadedModel
) -> None:
    api, model = client(served), model_name(served)
    system = "You are a terse assistant that answers in one word. " * 8
    # Sampling may draw end-of-text early; kept out, every request ends at its length.
    no_eos = {str(token): -100 for token in loaded_model.eos_token_ids}
    for question in ("Sky?", "Grass?", "Snow?"):
        api.chat.completions.create(
            model=model,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
            max_tokens=4,
            logit_bias=no_eos,
        )
    labels = {"model_name": model, "engine": "0"}

    def counted() -> bool:
        parsed = samples(metrics_text(served))
        return value(parsed, "vllm:e2e_request_latency_seconds_count", **labels) == 3.0

    eventually(counted)
    parsed = samples(metrics_text(served))
    assert not VLLM_FAMILIES - parsed.keys()
    # The same requests as the troupe_* families count, under vLLM's names.
    for ours, theirs in (
        ("troupe_prompt_tokens_total", "vllm:prompt_tokens_total"),
        ("troupe_generation_tokens_total", "vllm:generation_tokens_total"),
        ("troupe_time_to_first_token_seconds_count", "vllm:time_to_first_token_seconds_count"),
    ):
        assert value(parsed, theirs, **labels) == value(parsed, ours) > 0, theirs
    assert value(parsed, "vllm:request_success_total", finished_reason="length") == 3.0

    def idle() -> bool:  # the gauges are as of the engine's latest heartbeat
        now = samples(metrics_text(served))
        gauges = ("vllm:num_requests_running", "vllm:num_requests_waiting")
        return all(value(now, gauge, **labels) == 0 for gauge in gauges)

    eventually(idle)
    # The shared system prompt was found in the prefix cache, counted in tokens.
    hits = value(parsed, "vllm:prefix_cache_hits_total", **labels)
    queried = value(parsed, "vllm:prefix_cache_queries_total", **labels)
    assert 0 < hits < queried
    assert value(parsed, "troupe_prompt_tokens_total") >= queried
    assert 0.0 < value(parsed, "vllm:kv_cache_usage_perc", **labels) <= 1.0


def test_a_server_started_without_them_exposes_none(model_dir: Path, tmp_path: Path) -> None:
    with running_server(model_dir, tmp_path, "--no-vllm-metrics") as server:
        text = metrics_text(server)
    assert "vllm:" not in text
    assert "troupe_requests_running" in text


# --- the dashboard and the alert rules ------------------------------------------------------


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (labels, strings and functions left out)."""
    expr = re.sub(r'"[^"]*"', "", expr)  # label values and strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    return {name for name in names if name not in PROMQL_WORDS and not name.startswith("$")}


SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "info": ("_info",)}


def exposed_names(text: str) -> set[str]:
    """Every name a query may read, samples or not yet (a labelled counter before its first)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    assert dashboard["uid"] == "mlx-troupe"
    exprs = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    assert len(exprs) >= 10
    return exprs


def alert_exprs() -> list[str]:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def test_the_dashboard_and_alerts_read_only_what_a_server_exposes(served: Server) -> None:
    client(served).completions.create(model=model_name(served), prompt="dashboards", max_tokens=2)
    exposed = exposed_names(metrics_text(served)) | {"up"}  # ``up`` is Prometheus's own
    for expr in dashboard_exprs() + alert_exprs():
        missing = metric_names(expr) - exposed
        assert not missing, f"{expr!r} reads {sorted(missing)}, which the server does not expose"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):  # CI installs it (.ci/run): missing there is a failure
            pytest.fail("promtool is not installed")
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    return found


def test_promtool_checks_and_unit_tests_the_alert_rules() -> None:
    tool = promtool()
    for command in (("check", "rules", "alerts.yml"), ("test", "rules", "alerts_test.yml")):
        result = subprocess.run(
            [tool, *command],
            cwd=MONITORING,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_runbook_covers_every_alert() -> None:
    runbook = (REPO / "docs" / "operations.md").read_text()
    anchors = {_anchor(line) for line in runbook.splitlines() if line.startswith("## ")}
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    for rule in (rule for group in rules["groups"] for rule in group["rules"]):
        assert rule["alert"] in runbook, rule["alert"]
        page, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert page == "docs/operations.md" and anchor in anchors, rule["alert"]


def _anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = heading.lstrip("#").strip().lower()
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text))


def test_an_unknown_metrics_flag_value_is_refused() -> None:
    result = check_config(env={"TROUPE_VLLM_METRICS": "maybe"})
    assert result.returncode == 2
    assert "vllm_metrics" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
