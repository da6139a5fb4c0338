"""A closed-loop load generator for Ray Serve's multiplexing (benches/many-models/ray.sh),
reporting what `sluice bench --variants` reports: CLIENTS concurrent clients for DURATION
seconds, each request to model m<rank> with rank drawn from a Zipf distribution over 1..N
(`serve_multiplexed_model_id` header), one digits row per request; throughput, latency
percentiles, and latency by popularity rank (1-10, 11-100, ...).

    python zipf.py URL N ZIPF CLIENTS DURATION
"""

import asyncio
import bisect
import itertools
import json
import random
import sys
import time

import aiohttp

url, n, exponent, clients, duration = (
    sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
pixels = open("sample-models/data/digits.csv").read().splitlines()[1].split(",")[:64]
body = json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64],
                               "data": [float(p) for p in pixels]}]})
cumulative = list(itertools.accumulate(r ** -exponent for r in range(1, n + 1)))


def decade(rank):
    return 0 if rank <= 10 else len(str(rank - 1)) - 1


async def client(session, seed, stop_at, results, failures):
    rng = random.Random(seed)
    while time.perf_counter() < stop_at:
        rank = bisect.bisect(cumulative, rng.random() * cumulative[-1]) + 1
        began = time.perf_counter()
        async with session.post(url, data=body, headers={
                "content-type": "application/json",
                "serve_multiplexed_model_id": f"m{rank}"}) as response:
            await response.read()
            if response.status == 200:
                results.append((rank, (time.perf_counter() - began) * 1000))
            else:
                failures[response.status] = failures.get(response.status, 0) + 1


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))] if values else float("nan")


async def main():
    results, failures = [], {}
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        began = time.perf_counter()
        stop_at = began + duration
        await asyncio.gather(*(client(session, seed, stop_at, results, failures)
                               for seed in range(clients)))
        elapsed = time.perf_counter() - began
    latencies = [ms for _, ms in results]
    print(f"{len(results)} ok in {elapsed:.1f}s: {len(results) / elapsed:.0f} req/s; "
          f"failed: {failures or 0}")
    print(f"latency ms: p50 {pct(latencies, 50):.3f}  p99 {pct(latencies, 99):.3f}")
    for d in sorted({decade(r) for r, _ in results}):
        values = [ms for r, ms in results if decade(r) == d]
        first = 1 if d == 0 else 10 ** d + 1
        print(f"ranks {first}-{10 ** (d + 1):<9} {len(values):>8} ok, latency ms: "
              f"p50 {pct(values, 50):.3f}  p99 {pct(values, 99):.3f}")


asyncio.run(main())
