"""Encrypted inference as a service under load: throughput and latency of ``fheprune serve``
with 1, 4 and 16 concurrent clients (each with its own keys) on the main job's pruned MLP,
against the in-process executor running the same batches with the same concurrency.

    python benchmarks/serving.py [--quick] [--out FILE] [--bundle DIR] [--repeats R]

The bundle defaults to the main job's (``results/runtime/bundles/pruned``; made here from the
cached pruning if ``fheprune run`` has not run). Every request is one group of input
ciphertexts (as many MNIST-sized samples as the program packs), encrypted once per client:
the measured time is serialization, transfer, the server's checks and run, and the answer's
way back; decryption is not included (nor is it in the in-process baseline). Each
configuration is measured ``--repeats`` times, network and in-process interleaved; the JSON
has every repeat, the medians and the spread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from fheprune import _core
from fheprune.client import RemoteSession
from fheprune.reporting import machine_info, write_json_atomic
from fheprune.runtime import Client, load_bundle
from fheprune.runtime.pipeline import MainJobConfig, main_job_bundles

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BUNDLE = ROOT / "results" / "runtime" / "bundles" / "pruned"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few requests (a smoke run)")
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=None, help="per client (default 63)")
    parser.add_argument("--workers", type=int, default=2, help="server worker pool")
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (quick: 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None, help="to build the bundle if missing")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "serving.json"
    )
    args = parser.parse_args()
    per_client = args.requests or (4 if args.quick else 63)
    repeats = args.repeats or (1 if args.quick else 3)

    if not (args.bundle / "program.bin").is_file():
        if args.bundle != DEFAULT_BUNDLE:
            raise SystemExit(f"{args.bundle} holds no bundle (program.bin, client.json)")
        print("building the main job's bundles (the pruning is cached after the first time)")
        config = MainJobConfig(
            tile=8, data_dir=args.data_dir, work_dir=ROOT / "results" / "runtime"
        )
        main_job_bundles(config)
    bundle = load_bundle(args.bundle)
    rng = np.random.default_rng(args.seed)
    group = int(bundle.spec.shape_program().samples_per_group)
    x = rng.uniform(0.0, 1.0, (group, bundle.spec.in_features))

    print(f"starting the server ({args.workers} workers)")
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(args.bundle, Path(tmp), args.workers, max(args.clients) * 2)
        try:
            runs = []
            for clients in args.clients:
                rows = []
                for r in range(repeats):
                    local = in_process(bundle.program, bundle.spec, x, clients, per_client)
                    remote = over_network(server["url"], bundle.spec, x, clients, per_client)
                    remote["inprocess_throughput_rps"] = local["throughput_rps"]
                    remote["ratio_to_inprocess"] = (
                        remote["throughput_rps"] / local["throughput_rps"]
                    )
                    print(
                        f"{clients:2d} clients, repeat {r + 1}/{repeats}: "
                        f"{remote['throughput_rps']:.2f} req/s over the network, "
                        f"{local['throughput_rps']:.2f} in process "
                        f"(ratio {remote['ratio_to_inprocess']:.3f}), "
                        f"p50 {remote['p50_s'] * 1e3:.0f} ms, p99 {remote['p99_s'] * 1e3:.0f} ms, "
                        f"{remote['errors']} errors, server RSS "
                        f"{remote['server_rss_bytes'] / 2**20:.0f} MiB"
                    )
                    rows.append(remote)
                runs.append(summarize(rows, clients))
        finally:
            server["process"].terminate()
            server["process"].wait(timeout=120)
    write_json_atomic(
        args.out,
        {
            "benchmark": "serving",
            "parameters": {
                "bundle": str(args.bundle),
                "program_fingerprint": bundle.program_fingerprint,
                "poly_degree": int(bundle.spec.parameters.poly_degree),
                "samples_per_request": group,
                "requests_per_client": per_client,
                "server_workers": args.workers,
                "engine_threads_per_run": 1,
                "repeats": repeats,
                "quick": args.quick,
                "seed": args.seed,
            },
            "runs": runs,
            "machine": machine_info(threads=args.workers),
        },
    )
    print(f"wrote {args.out}")


def start_server(bundle: Path, tmp: Path, workers: int, sessions: int) -> dict[str, Any]:
    ready = tmp / "ready.json"
    command = [
        sys.executable, "-m", "fheprune", "serve", str(bundle), "--port", "0",
        "--ready-file", str(ready), "--workers", str(workers),
        "--max-sessions", str(sessions), "--log-level", "WARNING",
    ]  # fmt: skip
    process = subprocess.Popen(command)
    deadline = time.monotonic() + 600
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the server did not start")
        time.sleep(0.1)
    return {"process": process, "url": json.loads(ready.read_text())["url"]}


def in_process(
    program: bytes, spec: Any, x: np.ndarray, clients: int, per_client: int
) -> dict[str, Any]:
    """The same requests on the C++ executor in this process: one session per client on one
    ProgramHost, ``clients`` threads running concurrently (the GIL is released in runs)."""
    host = _core.ProgramHost(program, threads=1)
    sessions = []
    for _ in range(clients):
        client = Client(spec)
        sessions.append((host.serve(client.evaluation_keys_bytes()), client.encrypt(x)))
    for server, inputs in sessions:  # warm-up
        server.run(inputs)
    latencies: list[float] = []

    def work(server: Any, inputs: list[Any]) -> None:
        for _ in range(per_client):
            start = time.perf_counter()
            server.run(inputs)
            latencies.append(time.perf_counter() - start)

    wall = run_threads([(work, session) for session in sessions])
    return {"throughput_rps": clients * per_client / wall, "p50_s": pct(latencies, 0.5)}


def over_network(
    url: str, spec: Any, x: np.ndarray, clients: int, per_client: int
) -> dict[str, Any]:
    remotes = []
    for _ in range(clients):
        client = Client(spec)
        remote = RemoteSession.open(url, client, retries=0)
        inputs = client.encrypt(x)
        remote.infer(inputs)  # warm-up, and a check that the session works
        remotes.append((remote, inputs))
    rss_start = metrics(url)["server_rss_bytes"]
    latencies: list[float] = []
    errors: list[str] = []

    def work(remote: RemoteSession, inputs: list[Any]) -> None:
        for _ in range(per_client):
            start = time.perf_counter()
            try:
                remote.infer(inputs)
            except Exception as error:  # counted, not fatal: the benchmark reports errors
                errors.append(f"{type(error).__name__}: {error}")
                continue
            latencies.append(time.perf_counter() - start)

    # The server's resident memory through the run, sampled twice a second.
    trace: list[tuple[float, int]] = []
    done = threading.Event()

    def sample() -> None:
        origin = time.perf_counter()
        while not done.wait(0.5):
            trace.append((time.perf_counter() - origin, metrics(url)["server_rss_bytes"]))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        wall = run_threads([(work, pair) for pair in remotes])
    finally:
        done.set()
        sampler.join()
    after = metrics(url)
    rss_end = after["server_rss_bytes"]
    # Where a request's time goes: the client's serialization of one batch, and the server's
    # stages (median over its recent requests).
    client, inputs = remotes[0][0].client, remotes[0][1]
    start = time.perf_counter()
    batch_bytes = sum(len(_core.save(client.context, c)) for c in inputs)
    client_save_s = time.perf_counter() - start
    for remote, _ in remotes:
        remote.close()
    return {
        "model": "main job pruned MLP (784-128-10, P4E, 8x8 tiles)",
        "clients": clients,
        "requests": clients * per_client,
        "throughput_rps": len(latencies) / wall,
        "p50_s": pct(latencies, 0.5),
        "p99_s": pct(latencies, 0.99),
        "errors": len(errors),
        "error_samples": errors[:3],
        "server_rss_bytes": rss_end,
        "server_rss_start_bytes": rss_start,
        # Growth is what the second half of the run adds over the first half's peak (the
        # first requests at full concurrency set up the buffers a steady state reuses).
        "server_rss_growth_second_half_bytes": halves_growth(trace),
        "server_rss_trace": trace[:: max(1, len(trace) // 20)],
        "wall_s": wall,
        "request_bytes": batch_bytes,
        "profile_s": {
            "client_serialize": client_save_s,
            **{f"server_{k}": v["p50"] for k, v in after["infer_stages_s"].items()},
        },
    }


def run_threads(jobs: list[tuple[Any, tuple[Any, ...]]]) -> float:
    """Starts every job at once; returns the wall time until the last one finished."""
    start_line = threading.Barrier(len(jobs) + 1)

    def wrapped(function: Any, arguments: tuple[Any, ...]) -> None:
        start_line.wait()
        function(*arguments)

    threads = [threading.Thread(target=wrapped, args=job) for job in jobs]
    for t in threads:
        t.start()
    start_line.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def halves_growth(trace: list[tuple[float, int]]) -> int | None:
    if len(trace) < 4:
        return None
    half = len(trace) // 2
    return max(r for _, r in trace[half:]) - max(r for _, r in trace[:half])


def metrics(url: str) -> dict[str, Any]:
    result: dict[str, Any] = httpx.get(url + "/v1/metrics", timeout=30).json()
    return result


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def summarize(rows: list[dict[str, Any]], clients: int) -> dict[str, Any]:
    """The median repeat's numbers (by throughput), with every repeat's ratio for the spread."""
    ordered = sorted(rows, key=lambda r: r["throughput_rps"])
    median = dict(ordered[len(ordered) // 2])
    ratios = [r["ratio_to_inprocess"] for r in rows]
    median["ratio_to_inprocess"] = statistics.median(ratios)
    median["repeats"] = [
        {k: r[k] for k in ("throughput_rps", "inprocess_throughput_rps", "ratio_to_inprocess",
                           "p50_s", "p99_s", "errors", "server_rss_bytes",
                           "server_rss_growth_second_half_bytes")}
        for r in rows
    ]  # fmt: skip
    median["ratio_spread"] = [min(ratios), max(ratios)]
    median["errors"] = sum(r["errors"] for r in rows)
    median["clients"] = clients
    return median


if __name__ == "__main__":
    main()
