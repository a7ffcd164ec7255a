"""Reads a call's next-word distributions where the model left them (GPU memory on CUDA), so only what a caller
needs crosses to the host: the top k words of a row, one sampled token per row, or a whole row when asked for.
Knows onnxruntime and numpy; nothing of queues, sessions, words or HTTP.

On CUDA a batched step costs a fraction of a millisecond, and copying a (batch, 33 278) float32 matrix to the host
for every call would cost more than the step itself. So the runtime binds `log_probs` to the device (onnxruntime
I/O binding) and wraps it in `DeviceRows`; three small ONNX graphs, built here with `onnx.helper` and run by
onnxruntime on the same device, read it:
  top_k   Gather(rows) -> TopK(k): (rows, k) ids and probabilities, ties by the lower id.
  sample  Gather(rows) -> banned words to -inf -> exp((lp - max) * 1/T) -> cumulative sum in float64 -> the first
          word whose cumulative weight exceeds u * total, never a word of weight 0: one token per row, each row
          with its own temperature and uniform draw u (the row's seeded generator draws u on the host, one per
          token, as the host sampler does). Only plain temperature sampling runs here; rows with top-k or top-p
          are copied and sampled on the host (service/sampling.py).
  gather  Gather(rows): whole rows, for application/octet-stream and `scores`.
The same graphs run on the CPU provider, which is how the tests check them against service/sampling.py.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import onnxruntime as ort

from service.sampling import SamplingParams, Uniform

OPSET = 17


def _graphs(vocab: int) -> dict[str, bytes]:
    import onnx  # only where heads are built: a device-resident runtime (CUDA) or a test
    from onnx import TensorProto as T
    from onnx import helper as h

    lp = h.make_tensor_value_info("log_probs", T.FLOAT, ["batch", vocab])
    rows = h.make_tensor_value_info("rows", T.INT64, ["n"])
    gather = h.make_node("Gather", ["log_probs", "rows"], ["selected"], axis=0)  # (n, V)

    def model(name: str, nodes: list, inputs: list, outputs: list, inits: Sequence = ()) -> bytes:
        graph = h.make_graph([gather, *nodes], name, [lp, rows, *inputs], outputs, initializer=list(inits))
        m = h.make_model(graph, opset_imports=[h.make_opsetid("", OPSET)])
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m.SerializeToString()

    top_k = model("top_k", [h.make_node("TopK", ["selected", "k"], ["values", "ids"], axis=1, largest=1, sorted=1)],
                  [h.make_tensor_value_info("k", T.INT64, [1])],
                  [h.make_tensor_value_info("values", T.FLOAT, ["n", "k"]),
                   h.make_tensor_value_info("ids", T.INT64, ["n", "k"])])
    consts = [h.make_tensor("axis1", T.INT64, [1], [1]), h.make_tensor("last", T.INT64, [1], [-1]),
              h.make_tensor("end", T.INT64, [1], [vocab]), h.make_tensor("positions", T.INT64, [vocab],
                                                                          list(range(vocab))),
              h.make_tensor("minus_one", T.INT64, [1], [-1]), h.make_tensor("zero", T.FLOAT, [1], [0.0])]
    sample = model("sample", [
        h.make_node("Add", ["selected", "ban"], ["masked"]),  # ban: (1, V), 0 or -inf
        h.make_node("ReduceMax", ["masked"], ["best"], axes=[1], keepdims=1),  # (n, 1)
        h.make_node("Sub", ["masked", "best"], ["shifted"]),  # <= 0: exp cannot overflow
        h.make_node("Mul", ["shifted", "inverse_temperature"], ["scaled"]),
        h.make_node("Exp", ["scaled"], ["weights"]),  # (n, V) float32, banned words 0
        h.make_node("Cast", ["weights"], ["weights64"], to=T.DOUBLE),
        h.make_node("CumSum", ["weights64", "axis1"], ["cumulative"]),  # (n, V) float64
        h.make_node("Slice", ["cumulative", "last", "end", "axis1"], ["total"]),  # (n, 1)
        h.make_node("Mul", ["uniform", "total"], ["target"]),
        h.make_node("LessOrEqual", ["cumulative", "target"], ["passed"]),
        h.make_node("Cast", ["passed"], ["passed64"], to=T.INT64),
        h.make_node("ReduceSum", ["passed64", "axis1"], ["first"], keepdims=1),  # the first word past the target
        h.make_node("Greater", ["weights", "zero"], ["alive"]),
        h.make_node("Where", ["alive", "positions", "minus_one"], ["alive_positions"]),
        h.make_node("ReduceMax", ["alive_positions"], ["last_alive"], axes=[1], keepdims=1),
        h.make_node("Min", ["first", "last_alive"], ["token"]),  # (n, 1): never past the last word of weight > 0
        h.make_node("GatherElements", ["selected", "token"], ["token_log_prob"], axis=1),
    ], [h.make_tensor_value_info("ban", T.FLOAT, [1, vocab]),
        h.make_tensor_value_info("inverse_temperature", T.FLOAT, ["n", 1]),
        h.make_tensor_value_info("uniform", T.DOUBLE, ["n", 1])],
        [h.make_tensor_value_info("token", T.INT64, ["n", 1]),
         h.make_tensor_value_info("token_log_prob", T.FLOAT, ["n", 1])], consts)
    rows_only = model("gather", [h.make_node("Identity", ["selected"], ["rows_out"])], [],
                      [h.make_tensor_value_info("rows_out", T.FLOAT, ["n", vocab])])
    return {"top_k": top_k, "sample": sample, "gather": rows_only}


class Heads:
    """The three graphs for one vocabulary size, on the providers the model runs on."""

    def __init__(self, vocab: int, providers: list[str], device: str, banned: frozenset[int]):
        self.vocab = vocab
        self.device = device  # where outputs of the model stay: "cuda", or "cpu" (tests)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self._sessions = {name: ort.InferenceSession(blob, opts, providers=providers)
                          for name, blob in _graphs(vocab).items()}
        self._ban = np.zeros((1, vocab), dtype=np.float32)
        self._ban[0, sorted(banned)] = -np.inf

    def run(self, name: str, log_probs: ort.OrtValue, rows: np.ndarray, **inputs) -> list[np.ndarray]:
        session = self._sessions[name]
        binding = session.io_binding()
        binding.bind_ortvalue_input("log_probs", log_probs)  # read in place: not copied
        binding.bind_cpu_input("rows", np.ascontiguousarray(rows, dtype=np.int64))
        for key, value in inputs.items():
            binding.bind_cpu_input(key, np.ascontiguousarray(value))
        for output in session.get_outputs():
            binding.bind_output(output.name, "cpu")  # only the (small) results cross to the host
        session.run_with_iobinding(binding)
        return [o.numpy() for o in binding.get_outputs()]

    @property
    def ban(self) -> np.ndarray:
        return self._ban


class DeviceRows:
    """The (batch, vocab) log-probabilities of one call, left where the model wrote them."""

    def __init__(self, value: ort.OrtValue, heads: Heads):
        self.value = value
        self.heads = heads
        self.batch = value.shape()[0]

    def __getitem__(self, b: int) -> "DeviceRow":
        return DeviceRow(self, b)

    def top_k(self, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        values, ids = self.heads.run("top_k", self.value, rows, k=np.array([min(k, self.heads.vocab)], np.int64))
        return ids, np.exp(values.astype(np.float64))  # (n, k), (n, k)

    def sample(self, rows: np.ndarray, params: Sequence[SamplingParams], rngs: Sequence[Uniform]):
        """Plain temperature sampling of the given rows: (tokens (n,), the model's probabilities (n,))."""
        uniforms = np.array([[rng.random()] for rng in rngs], dtype=np.float64)  # one draw per row, in row order
        inverse = np.array([[1.0 / p.temperature] for p in params], dtype=np.float32)
        token, log_prob = self.heads.run("sample", self.value, rows, ban=self.heads.ban,
                                         inverse_temperature=inverse, uniform=uniforms)
        return token[:, 0], np.exp(log_prob[:, 0].astype(np.float64))

    def host(self, rows: np.ndarray) -> np.ndarray:
        """Whole rows copied to the host: (n, vocab) float32."""
        return self.heads.run("gather", self.value, rows)[0]


class DeviceRow:
    """One row of a DeviceRows: `top_k` reads its best words on the device; `np.asarray(row)` copies it whole."""

    def __init__(self, parent: DeviceRows, b: int):
        self.parent, self.b = parent, b

    def top_k(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        ids, probs = self.parent.top_k(np.array([self.b]), k)
        return ids[0], probs[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        row = self.parent.host(np.array([self.b]))[0]
        return row if dtype is None else row.astype(dtype)
