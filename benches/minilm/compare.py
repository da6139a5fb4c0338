"""MiniLM served by sluice against ONNX Runtime in process, side by side, same graph, same
threads (docs/benchmarks.md, "Real models at native speed").

    python3 benches/minilm/compare.py ASSETS GRPC_ADDR [--threads N] [--graphs] [--encoder]

ASSETS is what sample-models/minilm/fetch.py wrote (the server serves ASSETS as its
repository, with minilm.wasm copied in). Needs numpy, onnxruntime==1.22.1, tokenizers and
tritonclient[grpc]. Measures, over the texts of sample-models/minilm/sentences.txt:
- batch 1: p50 and p99 latency of one sentence, sluice over gRPC (tokenize, encoder, pool)
  against the same steps in process (Hugging Face tokenizers, onnxruntime, numpy);
- batches of 8 and 32 sentences: sentences per second, one client, one batch at a time.
With --graphs, a graph alone served by `sluice load --onnx` with each runner, as
`cnn-native` and `cnn-sandbox` (sample-models/onnx/digits-cnn.onnx; MiniLM's own 87 MiB graph
is over the 64 MiB bound of a graph sent to LoadModel), against onnxruntime in process on the
same inputs: the price of each runner. With --encoder, MiniLM's encoder alone served as an
ONNX file (a repository version `minilm-encoder/1/` holding `encoder.onnx` as `model.onnx`
and `model.safetensors` beside it, run by the native runner) against the same graph in
process, on the same token ids, batch 1. The ratio column is sluice's cost: its time over the
in-process time (for throughput, the in-process rate over sluice's).
"""

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parents[2]


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


class InProcess:
    """What a Python service would do: tokenize, run the encoder, mean-pool, normalize."""

    def __init__(self, assets, threads):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(assets / "minilm/1/encoder.onnx"), options)
        self.tokenizer = Tokenizer.from_file(str(assets / "minilm/1/tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(256)

    def tokens(self, texts):
        rows = [e.ids for e in self.tokenizer.encode_batch(texts)]
        longest = max(len(r) for r in rows)
        ids = np.zeros((len(rows), longest), dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            mask[i, : len(r)] = 1
        return ids, mask

    def graph(self, ids, mask):
        return self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]

    def embed(self, texts):
        ids, mask = self.tokens(texts)
        hidden = self.graph(ids, mask)
        m = mask[..., None].astype(np.float32)
        pooled = (hidden * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
        return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)


def sluice_embed(client, texts):
    x = grpcclient.InferInput("text", [len(texts)], "BYTES")
    x.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
    return client.infer("minilm", [x]).as_numpy("embedding")


def sluice_encoder(client, ids, mask):
    inputs = []
    for name, array in (("input_ids", ids), ("attention_mask", mask)):
        x = grpcclient.InferInput(name, list(array.shape), "INT64")
        x.set_data_from_numpy(array)
        inputs.append(x)
    return client.infer("minilm-encoder", inputs).as_numpy("last_hidden_state")


def sluice_pixels(client, model, pixels):
    x = grpcclient.InferInput("pixels", list(pixels.shape), "FP32")
    x.set_data_from_numpy(pixels)
    return client.infer(model, [x]).as_numpy("probabilities")


def latencies(call, items, rounds):
    for item in items[:5]:
        call(item)  # warm-up
    times = []
    for _ in range(rounds):
        for item in items:
            start = time.perf_counter()
            call(item)
            times.append((time.perf_counter() - start) * 1000)
    return percentile(times, 50), percentile(times, 99)


def throughput(call, texts, batch, seconds=10.0):
    batches = [texts[i : i + batch] for i in range(0, len(texts) - batch + 1, batch)]
    call(batches[0])
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for b in batches:
            call(b)
            done += len(b)
    return done / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("assets", type=Path)
    parser.add_argument("grpc")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--graphs", action="store_true")
    parser.add_argument("--encoder", action="store_true")
    args = parser.parse_args()
    texts = (ROOT / "sample-models/minilm/sentences.txt").read_text(encoding="utf-8").splitlines()
    # Batch 1 on the sentences a service mostly sees: the ones under 64 word pieces.
    local = InProcess(args.assets, args.threads)
    short = [t for t in texts if local.tokens([t])[0].shape[1] <= 64]
    client = grpcclient.InferenceServerClient(url=args.grpc)
    rows = []
    p50, p99 = latencies(lambda t: sluice_embed(client, [t]), short, 5)
    q50, q99 = latencies(lambda t: local.embed([t]), short, 5)
    rows.append(("batch 1, p50 / p99 ms", f"{p50:.2f} / {p99:.2f}", f"{q50:.2f} / {q99:.2f}", p50 / q50))
    for batch in (8, 32):
        ours = throughput(lambda b: sluice_embed(client, b), texts, batch)
        theirs = throughput(local.embed, texts, batch)
        rows.append((f"batches of {batch}, sentences/s", f"{ours:.1f}", f"{theirs:.1f}", theirs / ours))
    if args.encoder:
        tokens = [local.tokens([t]) for t in short]
        e50, e99 = latencies(lambda t: sluice_encoder(client, *t), tokens, 5)
        g50, g99 = latencies(lambda t: local.graph(*t), tokens, 5)
        rows.append(("encoder.onnx as an ONNX file, batch 1, p50 / p99 ms", f"{e50:.2f} / {e99:.2f}", f"{g50:.2f} / {g99:.2f}", e50 / g50))
    if args.graphs:
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        cnn = ort.InferenceSession(str(ROOT / "sample-models/onnx/digits-cnn.onnx"), options)
        digits = np.loadtxt(ROOT / "sample-models/data/digits.csv", delimiter=",", dtype=np.float32)
        pixels = [np.ascontiguousarray(digits[i : i + 1, :64]) for i in range(0, 400, 4)]
        g50, _ = latencies(lambda p: cnn.run(None, {"pixels": p}), pixels, 5)
        for model in ("cnn-native", "cnn-sandbox"):
            s50, s99 = latencies(lambda p: sluice_pixels(client, model, p), pixels, 5)
            rows.append((f"digits-cnn graph, {model}, p50 / p99 ms", f"{s50:.3f} / {s99:.3f}", f"{g50:.3f}", s50 / g50))
    print(f"{len(short)} short sentences for batch 1; {len(texts)} texts for batches; {args.threads} threads")
    print(f"{'':42} {'sluice':>16} {'in process':>16} {'cost':>7}")
    for name, ours, theirs, ratio in rows:
        print(f"{name:42} {ours:>16} {theirs:>16} {ratio:>7.2f}")


if __name__ == "__main__":
    main()
