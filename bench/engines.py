"""The other engines the benchmarks compare emo_kernels against: torch.compile (inductor) and
ONNX Runtime (CPU). Each returns a callable with the model's calling convention.
"""
import os
import tempfile

import torch


def torch_compile(fn, fresh=False, **kwargs):
    """``torch.compile(fn, **kwargs)``; ``fresh``: reset dynamo's caches first (so that one
    row's compile is not reused by, or limited by the recompiles of, another)."""
    if fresh:
        torch._dynamo.reset()
    return torch.compile(fn, **kwargs)


def onnxruntime_session(model, x, threads):
    """``model`` exported to ONNX (legacy exporter, dynamo=False, opset 17, dynamic batch) and
    run by ONNX Runtime's CPUExecutionProvider with all graph optimizations, ``threads``
    intra-op threads and one inter-op thread. Returns ``f(tensor) -> logits tensor``."""
    import onnxruntime as ort
    path = os.path.join(tempfile.mkdtemp(), "emo.onnx")
    torch.onnx.export(model, (x,), path, opset_version=17, dynamo=False, input_names=["x"],
                      output_names=["logits"], dynamic_axes={"x": {0: "batch"}})
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return lambda t: torch.from_numpy(sess.run(None, {"x": t.numpy()})[0])
