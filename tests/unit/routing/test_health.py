"""Passive ejection, probes, and reading vLLM's load gauges."""

from __future__ import annotations

import pytest

from router.config import HealthSettings
from router.routing.health import BackendState, Load, parse_load

# vLLM's exposition, as documented in vLLM's metrics design doc (docs/design/v1/metrics.md)
# and exposed by vLLM 0.8+ (V1 engine: kv_cache_usage_perc, labels engine + model_name).
VLLM_V1 = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 5.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.42
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="m"} 0.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 12.0
"""

# The V0 engine (to 0.7): no engine label, KV cache as gpu_cache_usage_perc, swapped gauge.
VLLM_V0 = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 2.0
# TYPE vllm:num_requests_swapped gauge
vllm:num_requests_swapped{model_name="m"} 0.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 7.0
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="m"} 0.9
"""


def test_parse_v1_names() -> None:
    assert parse_load(VLLM_V1) == Load(running=5.0, waiting=3.0, kv_cache=0.42)


def test_parse_v0_names() -> None:
    assert parse_load(VLLM_V0) == Load(running=2.0, waiting=7.0, kv_cache=0.9)


def test_current_kv_name_wins_over_the_older_one() -> None:
    text = 'vllm:kv_cache_usage_perc{engine="0"} 0.25\nvllm:gpu_cache_usage_perc 0.75\n'
    load = parse_load(text)
    assert load is not None and load.kv_cache == 0.25


def test_data_parallel_engines_are_summed_and_kv_averaged() -> None:
    text = (
        'vllm:num_requests_waiting{engine="0",model_name="m"} 2.0\n'
        'vllm:num_requests_waiting{engine="1",model_name="m"} 4.0\n'
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.2\n'
        'vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.6\n'
    )
    load = parse_load(text)
    assert load is not None
    assert load.waiting == 6.0 and load.running == 0.0
    assert load.kv_cache == pytest.approx(0.4)


def test_timestamps_labels_with_braces_and_junk() -> None:
    text = (
        'vllm:num_requests_waiting{model_name="a}b c"} 9 1700000000000\n'
        "vllm:num_requests_running NaN\n"
        'vllm:num_requests_running{x="1"} notanumber\n'
        "vllm:num_requests_running_total 99\n"
        "process_cpu_seconds_total 3.0\n"
    )
    assert parse_load(text) == Load(running=0.0, waiting=9.0, kv_cache=0.0)


def test_nothing_known_is_none() -> None:
    assert parse_load("") is None
    assert parse_load("# HELP x\nprocess_cpu_seconds_total 3.0\n") is None
    assert parse_load("<html>not metrics</html>") is None


POLICY = HealthSettings(failure_threshold=3, ejection_seconds=5, max_ejection_seconds=30)


def test_threshold_ejects_and_cooldown_doubles_to_a_cap() -> None:
    s = BackendState("gpu")
    assert not s.record_failure(0.0, POLICY)
    assert not s.record_failure(0.0, POLICY)
    assert s.record_failure(0.0, POLICY)
    assert not s.healthy and s.ejected_until == 5.0
    assert not s.probe_due(4.9) and s.probe_due(5.0)
    # the probe fails: out again for twice as long, then 4x, then capped
    s.probe_result(False, 5.0, POLICY)
    assert s.ejected_until == 15.0
    s.probe_result(False, 15.0, POLICY)
    assert s.ejected_until == 35.0
    s.probe_result(False, 35.0, POLICY)
    assert s.ejected_until == 65.0  # 30 s cap


def test_probe_brings_back_on_probation_and_success_clears() -> None:
    s = BackendState("gpu")
    for _ in range(3):
        s.record_failure(0.0, POLICY)
    s.probe_result(True, 5.0, POLICY)
    assert s.healthy
    # one more failure ejects again, for longer: it kept failing
    assert s.record_failure(6.0, POLICY)
    assert s.ejected_until == 6.0 + 10.0
    s.probe_result(True, 16.0, POLICY)
    s.record_success(0.1)
    assert s.healthy and s.consecutive_failures == 0 and s.ejections == 0
    for _ in range(2):
        assert not s.record_failure(20.0, POLICY)  # a fresh record: full threshold again


def test_success_resets_the_failure_streak() -> None:
    s = BackendState("gpu")
    s.record_failure(0.0, POLICY)
    s.record_failure(0.0, POLICY)
    s.record_success(None)
    assert not s.record_failure(0.0, POLICY)
    assert s.healthy


def test_latency_moving_average() -> None:
    s = BackendState("gpu")
    s.record_success(1.0)
    assert s.ttft_ewma == 1.0
    s.record_success(2.0)
    assert s.ttft_ewma == pytest.approx(1.2)


def test_queue_corrects_the_scrape_with_own_inflight() -> None:
    s = BackendState("gpu", max_concurrency=4)
    s.inflight = 2
    assert s.queue() == 2.0  # nothing scraped: in-flight only
    s.update_load(Load(running=10, waiting=5, kv_cache=0.5))
    assert s.queue() == 15.0
    s.inflight = 4  # sent two more since the scrape
    assert s.queue() == 17.0 and s.saturated
    s.inflight = 0
    assert s.queue() == 13.0
    s.update_load(None)  # the scrape failed: stale numbers are not used
    assert not s.load_known and s.queue() == 0.0
