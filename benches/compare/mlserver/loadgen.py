"""A small closed-loop gRPC load generator, only to sanity-check MLServer's scale (the real
comparison uses the Rust load generator).

    python benches/compare/mlserver/loadgen.py [--concurrency 16] [--duration 5] [--rows 1]

CONCURRENCY asyncio tasks on one tritonclient.grpc.aio channel each send ModelInfer requests
of ROWS held-out digits rows (`pixels`, FP32 [ROWS, 64]) back to back for DURATION seconds
after a 1 s warm-up; prints req/s and p50/p99 latency. The load generator shares the CPUs
with the server, so on a 2-core machine it depresses the numbers.
"""

import argparse
import asyncio
import pathlib
import sys
import time

import numpy as np
import tritonclient.grpc.aio as grpcclient

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from train import MODEL_NAME, load_split  # noqa: E402


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="127.0.0.1:18081")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rows", type=int, default=1)
    args = parser.parse_args()
    _, _, x_test, _ = load_split()
    client = grpcclient.InferenceServerClient(args.url)
    outputs = [grpcclient.InferRequestedOutput("predict")]
    latencies, errors = [], 0
    start = time.perf_counter()
    measure_from = start + args.warmup
    stop = measure_from + args.duration

    async def worker(k):
        nonlocal errors
        i = k
        while True:
            now = time.perf_counter()
            if now >= stop:
                return
            rows = np.take(x_test, range(i, i + args.rows), axis=0, mode="wrap")
            i += args.rows
            request = grpcclient.InferInput("pixels", list(rows.shape), "FP32")
            request.set_data_from_numpy(rows)
            try:
                await client.infer(MODEL_NAME, [request], outputs=outputs)
            except Exception:  # noqa: BLE001 - counted, not fatal
                errors += 1
                continue
            done = time.perf_counter()
            if now >= measure_from and done <= stop:
                latencies.append(done - now)

    await asyncio.gather(*(worker(k) for k in range(args.concurrency)))
    await client.close()
    lat = np.array(latencies) * 1e3
    print(f"concurrency {args.concurrency} rows {args.rows}: {len(lat) / args.duration:.0f} req/s, "
          f"p50 {np.percentile(lat, 50):.2f} ms, p99 {np.percentile(lat, 99):.2f} ms, "
          f"errors {errors}")


if __name__ == "__main__":
    asyncio.run(main())
