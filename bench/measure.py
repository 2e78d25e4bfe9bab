"""Measurement helpers shared by the benchmarks: the device, its matrix-multiply peak measured in
the same run, FLOPs counted with torch.utils.flop_counter, and an S3 API server on loopback."""

from __future__ import annotations

import logging
import os
import platform
import socket
import statistics
import time
from typing import Callable

import torch


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: torch.device, repeats: int = 10, n: int | None = None) -> dict:
    """FLOP/s of a large square matrix product on this device, median of `repeats` timed products
    after warm-up: bf16 8192^3 on a GPU, fp32 1024^3 on a CPU (the precision each trains in), or n^3."""
    n_default, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    n = n or n_default
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    seconds = timed(lambda: a @ b, device, repeats, warmup=3)
    return {
        "n": n,
        "dtype": str(dtype).removeprefix("torch."),
        "seconds": seconds,
        "flops_per_second": 2 * n**3 / seconds,
    }


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median seconds of fn() over `repeats` calls after `warmup` calls (synchronised on a GPU)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def start_s3(bucket: str = "bench") -> tuple[object, str]:
    """A moto S3 server on a free loopback port, the environment pointing s3fs at it (here and in
    subprocesses), and `bucket` made; returns (server, endpoint). server.stop() ends it."""
    import fsspec
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,
        AWS_ENDPOINT_URL_S3=endpoint,
    )
    fsspec.filesystem("s3").mkdir(bucket)
    return server, endpoint
