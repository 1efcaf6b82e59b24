"""The cost of the API <-> engine-core channel: ZeroMQ over ipc://, msgspec MessagePack.

Two figures, each a round trip between this process and a spawned one, median of many:

1. a small message (one `AbortRequests`) there and back;
2. one step's outputs at a batch of `--batch` requests, each `--context` tokens into its
   output and growing by one token a step: the core side turns the step's cumulative
   `RequestOutput`s into deltas and encodes them, this side decodes them and rebuilds every
   request's cumulative output, then answers with a small message. The baseline sends the
   cumulative outputs pickled instead (the obvious alternative); the ratio is printed.
   Building the outputs themselves is the engine's work, timed apart and left out.

    python benchmarks/ipc_round_trip.py --batch 256 --context 500
"""

from __future__ import annotations

import argparse
import multiprocessing
import pickle
import statistics
import tempfile
import time

import msgspec
import zmq

from corral.engine.core_messages import AbortRequests, StepOutputs, client_decoder
from corral.engine.engine_stats import EngineStats
from corral.engine.output_deltas import DeltaEncoder, RequestAssembler
from corral.engine.outputs import CompletionOutput, RequestMetrics, RequestOutput
from corral.engine.sampling_params import SamplingParams

_WORDS = [" the", " engine", " core", " sends", " deltas", ",", " and", " tokens", "."]


class FakeCore:
    """Cumulative outputs of `batch` requests, `length` output tokens each, one token more
    per `step()` (lists copied as `Request.make_output` copies them)."""

    def __init__(self, batch: int, length: int) -> None:
        self.outputs = []
        for r in range(batch):
            ids = [(7 * r + i) % 49152 for i in range(length)]
            text = "".join(_WORDS[t % len(_WORDS)] for t in ids)
            self.outputs.append(RequestOutput(f"req-{r}", None, [1, 2, 3],
                                              [CompletionOutput(0, text, ids)],
                                              metrics=RequestMetrics(1.0, 1.0, 1.0)))

    def step(self) -> list[RequestOutput]:
        outs = []
        for out in self.outputs:
            c = out.outputs[0]
            token = (c.token_ids[-1] * 31 + 7) % 49152
            completion = CompletionOutput(0, c.text + _WORDS[token % len(_WORDS)],
                                          c.token_ids + [token])
            outs.append(RequestOutput(out.request_id, None, out.prompt_token_ids,
                                      [completion], metrics=out.metrics))
        self.outputs = outs
        return outs


def core_side(in_address: str, out_address: str, batch: int, context: int, steps: int,
              mode: str) -> None:
    context_ = zmq.Context()
    inbox = context_.socket(zmq.PULL)
    inbox.connect(in_address)
    out = context_.socket(zmq.PUSH)
    out.connect(out_address)
    encoder = msgspec.msgpack.Encoder()
    deltas = DeltaEncoder()
    stats = EngineStats(num_running=batch)
    core = FakeCore(batch, context)
    out.send(b"ready")
    for _ in range(steps):
        inbox.recv()
        start = time.perf_counter()
        outputs = core.step()  # the engine's own work, not the channel's: timed apart
        built = time.perf_counter() - start
        if mode == "ping":
            payload = encoder.encode(AbortRequests(["x"]))
        elif mode == "deltas":
            message = StepOutputs([d for o in outputs if (d := deltas.encode(o))], stats)
            payload = encoder.encode(message)
        else:
            payload = pickle.dumps(outputs, protocol=pickle.HIGHEST_PROTOCOL)
        out.send_multipart([str(built).encode(), payload])
    inbox.close()
    out.close()
    context_.term()


def measure(mode: str, batch: int, context: int, steps: int) -> list[float]:
    """Round-trip seconds per step (the first few left out as warm-up)."""
    folder = tempfile.mkdtemp(prefix="corral-ipc-")
    context_ = zmq.Context()
    to_core = context_.socket(zmq.PUSH)
    to_core.bind(f"ipc://{folder}/in")
    from_core = context_.socket(zmq.PULL)
    from_core.bind(f"ipc://{folder}/out")
    process = multiprocessing.get_context("spawn").Process(
        target=core_side, args=(f"ipc://{folder}/in", f"ipc://{folder}/out", batch, context,
                                steps, mode))
    process.start()
    from_core.recv()
    decoder = client_decoder()
    params = SamplingParams()
    assemblers = {f"req-{r}": RequestAssembler(f"req-{r}", None, [1, 2, 3], params)
                  for r in range(batch)}
    ping = msgspec.msgpack.encode(AbortRequests(["x"]))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        to_core.send(ping)
        built, data = from_core.recv_multipart(copy=False)
        if mode == "deltas":
            message = decoder.decode(data.buffer)
            for delta in message.deltas:
                assemblers[delta.request_id].apply(delta)
        elif mode == "pickle":
            pickle.loads(data.buffer)
        else:
            msgspec.msgpack.decode(data.buffer)
        times.append(time.perf_counter() - start - float(built.bytes))
    process.join()
    to_core.close()
    from_core.close()
    context_.term()
    return times[5:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--context", type=int, default=500, help="output tokens so far")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    ping = statistics.median(measure("ping", 1, 1, args.steps * 5))
    print(f"small message round trip: {1e6 * ping:.0f} us")
    results = {}
    for mode in ("deltas", "pickle"):
        results[mode] = statistics.median(measure(mode, args.batch, args.context, args.steps))
        print(f"batch {args.batch}, {args.context} tokens in, one step's outputs as {mode}: "
              f"{1e3 * results[mode]:.2f} ms round trip")
    print(f"pickled cumulative / deltas: {results['pickle'] / results['deltas']:.1f}x")

if __name__ == "__main__":
    main()
