"""bench.load's ratio table, its load generator and its peer server, without starting headhub
(`--quick` takes about a minute on two cores: too long for the suite)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from bench.load.__main__ import report
from bench.load.generator import CLIENTS, LevelResult, closed_loop
from bench.load.ratios import cpu_facts, measures_table, ratio_table, ratios

# One run's numbers (seconds, per second) in which every ratio holds but the per-head one.
MEASURED = {
    "inproc_p50": 0.003,
    "ext_p50": 0.005,
    "api_p50": 0.006,
    "api8_p50": 0.0072,  # (7.2 - 6) / 7 = 0.171 ms a head = 2.9% of 6 ms
    "ext32_ips": 400.0,
    "api32_ips": 380.0,
    "ext_c8_rps": 150.0,
    "ext_c8_p50": 0.05,
    "ext_c8_p95": 0.09,
    "api_c8_rps": 130.0,
    "api_c8_p50": 0.06,
    "api_c8_p95": 0.12,
    "peer_p50": 0.02,
    "peer_c8_rps": 50.0,
    "peer_c8_p50": 0.15,
    "peer_c8_p95": 0.3,
    "relay_p50": 0.0055,
    "relay_c8_rps": 140.0,
    "relay_c8_p50": 0.055,
    "relay_c8_p95": 0.1,
    "load_errors": 0.0,
}


def test_every_ratio_of_the_issue_is_checked_against_its_target() -> None:
    rows = {r.what: r for r in ratios(MEASURED)}
    assert len(rows) == 9
    assert rows["headhub 1-image p50 / peer's"].value == pytest.approx(0.3)
    assert rows["headhub 8-client req/s / peer's"].value == pytest.approx(2.6)
    assert rows["extractor alone 1-image p50 / in-process"].value == pytest.approx(5 / 3)
    assert rows["API 1-image p50 / extractor alone"].value == pytest.approx(1.2)
    head = rows["each extra head (8 vs 1) / 1-head request time"]
    assert head.value == pytest.approx(1.2 / 7 / 6)
    assert not head.passed
    assert [r.what for r in ratios(MEASURED) if not r.passed] == [head.what]
    assert rows["API 32-image images/s / extractor alone"].value == pytest.approx(0.95)
    assert rows["API 8-client p95 / its p50"].value == pytest.approx(2.0)


def test_a_missing_or_failing_measure_is_a_fail_not_a_pass() -> None:
    partial = {k: v for k, v in MEASURED.items() if k != "peer_p50"} | {"load_errors": 3.0}
    rows = {r.what: r for r in ratios(partial)}
    assert math.isnan(rows["headhub 1-image p50 / peer's"].value)
    assert not rows["headhub 1-image p50 / peer's"].passed
    assert not rows["load table under training: errors"].passed


def test_the_tables_say_pass_or_fail_with_each_target() -> None:
    text = "\n".join(ratio_table(ratios(MEASURED)))
    assert "| API 1-image p50 / extractor alone | 1.2 | <= 1.3 | PASS |" in text
    assert "| each extra head (8 vs 1) / 1-head request time | 0.0286 | <= 0.02 | FAIL |" in text
    assert "| headhub 8-client req/s / peer's | 2.6 | >= 2 | PASS |" in text
    measures = "\n".join(measures_table(MEASURED))
    assert "| API, 32 images per request, 1 head, images/s | 380 img/s |" in measures
    assert "1 image, 1 head, sequential, p50 | 6.00 ms |" in measures


def test_cpu_facts_tell_avx512_vpopcntdq_from_avx2_only() -> None:
    avx512 = "model name\t: Some CPU\nflags\t\t: fpu avx2 avx512f avx512_vpopcntdq\n"
    assert cpu_facts(avx512) == ("Some CPU", "AVX-512 VPOPCNTDQ")
    assert cpu_facts("model name\t: Old\nflags\t\t: fpu avx2\n") == ("Old", "AVX2 only")
    assert cpu_facts("") == ("unknown CPU", "neither AVX2 nor AVX-512")


def test_the_report_holds_the_command_date_cpu_load_and_both_tables() -> None:
    row = LevelResult(1, 2.0, [0.01, 0.02], statuses={"200": 2})  # type: ignore[arg-type]
    meta = {
        "command": "python -m bench.load --quick",
        "seconds": "2",
        "rounds": "2",
        "when": "2026-12-07 06:00 UTC",
        "load_start": "1.0 / 1.0 / 1.0",
        "load": "2.0 / 1.5 / 1.0",
        "neighbours": "none",
        "took": "1.0 min",
        "client": "lean",
        "job": "`mlp` head, status `running` at the end, progress 10%",
    }
    text = report([row], meta, MEASURED)
    model, isa = cpu_facts()
    for part in (meta["command"], meta["when"], meta["load"], model, isa, "| FAIL |", "| 1 | "):
        assert part in text
    assert "LeanTransport" in text  # which HTTP client measured every target
    assert "in 1.1x the extractor alone's p50" in text and "serves 0.933x its" in text


async def _requests(reader: asyncio.StreamReader) -> AsyncIterator[tuple[bytes, bytes]]:
    """(head, body) of each HTTP/1.1 request a test's stand-in server reads, until the client
    closes: just enough HTTP for a Content-Length body."""
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            yield head, await reader.readexactly(length)


async def test_the_relay_passes_the_body_on_and_the_answer_back() -> None:
    """bench/load/relay.py under uvicorn, in front of a stand-in extractor that echoes."""
    import uvicorn

    from bench.load.relay import create_app
    from tests.fixtures.processes import free_port

    seen: list[bytes] = []

    async def extractor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async for head, body in _requests(reader):
            seen.append(head.split(b"\r\n")[0] + b" " + body)
            answer = b"features of " + body
            writer.write(b"HTTP/1.1 201 Created\r\ncontent-length: %d\r\n\r\n" % len(answer))
            writer.write(answer)
        writer.close()

    srv = await asyncio.start_server(extractor, "127.0.0.1", 0)
    port = free_port()
    relay = uvicorn.Server(
        uvicorn.Config(
            create_app(f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"),
            port=port,
            log_level="warning",
        )
    )
    serving = asyncio.create_task(relay.serve())
    try:
        while not relay.started:
            await asyncio.sleep(0.02)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/healthz")).status_code == 200
            for body in (b"one", b"two"):
                r = await client.post("/anything", content=body)
                assert (r.status_code, r.content) == (201, b"features of " + body)
    finally:
        relay.should_exit = True
        await serving
        srv.close()
    assert seen == [b"POST /v1/features HTTP/1.1 one", b"POST /v1/features HTTP/1.1 two"]


async def test_the_load_generator_counts_answers_with_either_client() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async for _, body in _requests(reader):
            status = b"200 OK" if body == b"good" else b"429 Too Many"
            writer.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: 2\r\n\r\nok")
        writer.close()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
    async with srv:
        for client in CLIENTS:
            good = await closed_loop(
                base, lambda http, rng: http.post("/", content=b"good"), 1, 30, requests=5,
                client=client,
            )  # fmt: skip
            assert (good.ok, dict(good.statuses), len(good.latencies)) == (5, {"200": 5}, 5)
            bad = await closed_loop(
                base, lambda http, rng: http.post("/", content=b"bad"), 1, 30, requests=2,
                client=client,
            )  # fmt: skip
            assert (bad.ok, bad.errors, dict(bad.statuses)) == (0, 2, {"429": 2})
    with pytest.raises(ValueError, match="client must be one of"):
        await closed_loop(base, lambda http, rng: http.get("/"), 1, 1, client="curl")


def test_the_peer_serves_multipart_images_through_onnxruntime(tmp_path: Path) -> None:
    """bench/load/peer.py's app on a stand-in ONNX model of the same input and output names."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from fastapi.testclient import TestClient

    from bench.load.peer import SIZE, create_app

    model = torch.nn.Sequential(
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 3)
    )
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(
        model.eval(),
        (torch.zeros(1, 3, SIZE, SIZE),),
        str(path),
        dynamo=False,
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "N"}, "logits": {0: "N"}},
    )
    buf = io.BytesIO()
    Image.fromarray(np.full((300, 200, 3), 128, np.uint8)).save(buf, "JPEG")
    with TestClient(create_app(path)) as client:
        files = [("files", (f"{i}.jpg", buf.getvalue(), "image/jpeg")) for i in range(2)]
        r = client.post("/predict", files=files, params={"top_k": 2})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["filename"] for x in results] == ["0.jpg", "1.jpg"]
    assert all(len(x["scores"]) == 2 for x in results)
    assert sum(s["score"] for s in results[0]["scores"]) <= 1.0 + 1e-6
