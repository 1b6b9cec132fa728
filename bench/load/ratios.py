"""The ratios asked of the service path, from one run's measurements, and their table.

Every check is a ratio of two numbers measured in the same run on the same host and images, so
a slower or busier machine moves both sides; there are no absolute thresholds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

# What `bench.load` measures (seconds for latencies, per second for rates):
MEASURES = {
    "inproc_p50": "in-process forward + decode, 1 image (extractor package's inference path), "
    "p50, the faster of:",
    "inproc_default_p50": "in-process, torch's default intra-op threads",
    "inproc_threads": "torch's default intra-op threads here",
    "inproc_1t_p50": "in-process, 1 intra-op thread",
    "ext_p50": "extractor process alone over HTTP, 1 image, sequential, p50",
    "api_p50": "API `POST /v1/predict`, 1 image, 1 head, sequential, p50",
    "api8_p50": "API `POST /v1/predict`, 1 image, 8 heads, sequential, p50",
    "ext32_ips": "extractor alone, 32 images per request, images/s",
    "api32_ips": "API, 32 images per request, 1 head, images/s",
    "ext_c8_rps": "extractor alone, 8 concurrent single-image clients, requests/s",
    "ext_c8_p50": "extractor alone, 8 clients, p50",
    "ext_c8_p95": "extractor alone, 8 clients, p95",
    "api_c8_rps": "API, 8 concurrent single-image clients, requests/s",
    "api_c8_p50": "API, 8 clients, p50",
    "api_c8_p95": "API, 8 clients, p95",
    "peer_p50": "peer (FastAPI + onnxruntime teacher at 224 px, 1 head), 1 image, sequential, p50",
    "peer_c8_rps": "peer, 8 concurrent single-image clients, requests/s",
    "peer_c8_p50": "peer, 8 clients, p50",
    "peer_c8_p95": "peer, 8 clients, p95",
    "relay_p50": "relay (bench/load/relay.py: passes the framed body to the extractor, nothing "
    "else), 1 image, sequential, p50",
    "relay_c8_rps": "relay, 8 concurrent single-image clients, requests/s",
    "relay_c8_p50": "relay, 8 clients, p50",
    "relay_c8_p95": "relay, 8 clients, p95",
    "load_errors": "load table under a training job: requests that were not 200",
}


@dataclass(frozen=True)
class Ratio:
    what: str
    value: float
    target: float
    at_most: bool  # value <= target passes; else value >= target

    @property
    def passed(self) -> bool:
        if math.isnan(self.value):
            return False
        return self.value <= self.target if self.at_most else self.value >= self.target


def ratios(m: dict[str, float]) -> list[Ratio]:
    """The targets of the service path (bench/results/load.md), in order."""

    def div(a: str, b: str) -> float:
        return _div(m, a, b)

    per_head = (m.get("api8_p50", math.nan) - m.get("api_p50", math.nan)) / 7
    return [
        Ratio("headhub 1-image p50 / peer's", div("api_p50", "peer_p50"), 0.5, True),
        Ratio("headhub 8-client req/s / peer's", div("api_c8_rps", "peer_c8_rps"), 2.0, False),
        Ratio("extractor alone 1-image p50 / in-process", div("ext_p50", "inproc_p50"), 2.0, True),
        Ratio("API 1-image p50 / extractor alone", div("api_p50", "ext_p50"), 1.3, True),
        Ratio(
            "each extra head (8 vs 1) / 1-head request time",
            per_head / m["api_p50"] if m.get("api_p50") else math.nan,
            0.02,
            True,
        ),
        Ratio("API 32-image images/s / extractor alone", div("api32_ips", "ext32_ips"), 0.9, False),
        Ratio("API 8-client req/s / extractor alone", div("api_c8_rps", "ext_c8_rps"), 0.8, False),
        Ratio("API 8-client p95 / its p50", div("api_c8_p95", "api_c8_p50"), 3.0, True),
        Ratio("load table under training: errors", m.get("load_errors", math.nan), 0, True),
    ]


def floor_lines(m: dict[str, float]) -> list[str]:
    """What a second process costs on this host whatever it does (the relay), beside the
    API-over-extractor ratios it bounds."""

    def div(a: str, b: str) -> str:
        return _fmt(_div(m, a, b))

    return [
        "The floor of any second process on this host, measured in the same rounds: a relay "
        "(`bench/load/relay.py`, a bare ASGI app under uvicorn that passes the framed body to "
        "the extractor through the API's own client transport, and nothing else) answers one "
        f"image in {div('relay_p50', 'ext_p50')}x the extractor alone's p50 (the API's target: "
        f"1.3) and serves {div('relay_c8_rps', 'ext_c8_rps')}x its requests/s under 8 clients "
        "(target: 0.8). Whatever the API spends beyond the relay is its own work: keys, heads, "
        "multipart, JSON.",
    ]


def _div(m: dict[str, float], a: str, b: str) -> float:
    x, y = m.get(a, math.nan), m.get(b, math.nan)
    return x / y if y else math.nan


def _fmt(x: float) -> str:
    if math.isnan(x):
        return "-"
    return f"{x:.3g}"


def ratio_table(rows: list[Ratio]) -> list[str]:
    lines = ["| ratio | measured | target | |", "|---|---:|---:|---|"]
    for r in rows:
        op = "<=" if r.at_most else ">="
        lines.append(
            f"| {r.what} | {_fmt(r.value)} | {op} {_fmt(r.target)} "
            f"| {'PASS' if r.passed else 'FAIL'} |"
        )
    return lines


def measures_table(m: dict[str, float]) -> list[str]:
    lines = ["| measured | value |", "|---|---:|"]
    for key, what in MEASURES.items():
        if key not in m:
            continue
        x = m[key]
        if key.endswith(("_p50", "_p95")):
            shown = f"{1000 * x:.2f} ms"
        elif key.endswith("_ips"):
            shown = f"{x:.0f} img/s"
        elif key.endswith("_rps"):
            shown = f"{x:.1f} req/s"
        else:
            shown = f"{x:g}"
        lines.append(f"| {what} | {shown} |")
    return lines


def cpu_facts(cpuinfo: str | None = None) -> tuple[str, str]:
    """(model name, "AVX-512 VPOPCNTDQ" | "AVX2 only" | "neither AVX2 nor AVX-512") from
    /proc/cpuinfo (or the text given)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    model, flags = "unknown CPU", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == "unknown CPU":
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    if "avx512_vpopcntdq" in flags:
        isa = "AVX-512 VPOPCNTDQ"
    elif "avx2" in flags:
        isa = "AVX2 only"
    else:
        isa = "neither AVX2 nor AVX-512"
    return model, isa
