"""The other engines the benchmarks compare emo_kernels against: torch.compile (inductor),
ONNX Runtime (CPU) and OpenVINO (CPU plugin). Each returns a callable with the model's calling
convention.
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


def onnx_export(model, x):
    """``model`` exported to ONNX for the ONNX engines (legacy exporter, dynamo=False, opset 17,
    dynamic batch, input ``x``, output ``logits``) in a fresh temporary folder; its path. A
    ``model`` that is already such a path (a str) is returned as is: the engines below take
    either, so that one export serves them all."""
    if isinstance(model, str):
        return model
    path = os.path.join(tempfile.mkdtemp(), "emo.onnx")
    torch.onnx.export(model, (x,), path, opset_version=17, dynamo=False, input_names=["x"],
                      output_names=["logits"], dynamic_axes={"x": {0: "batch"}})
    return path


def onnxruntime_session(model, x, threads):
    """``model`` (or its ONNX file) exported by :func:`onnx_export` and run by ONNX Runtime's
    CPUExecutionProvider with all graph optimizations, ``threads`` intra-op threads and one
    inter-op thread. Returns ``f(tensor) -> logits tensor``."""
    import onnxruntime as ort
    path = onnx_export(model, x)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return lambda t: torch.from_numpy(sess.run(None, {"x": t.numpy()})[0])


def openvino_model(model, x, threads, precision=None):
    """``model`` (or its ONNX file) exported by :func:`onnx_export` and compiled by OpenVINO
    for its CPU plugin with ``threads`` inference threads and the latency hint; ``precision``:
    the inference precision hint (``"f32"``), or None for the plugin's default (bf16 on an x86
    CPU with native bf16, avx512_bf16 or AMX, as this project's AMD EPYC; else f32 or, on some
    Arm CPUs, f16). Returns ``f(tensor) -> logits tensor`` whose ``precision`` attribute is the
    precision the compiled model reports it runs in (its ``INFERENCE_PRECISION_HINT``:
    ``"f32"``, ``"bf16"``, ...)."""
    import openvino as ov
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = ov.Core().compile_model(onnx_export(model, x), "CPU", config)
    request = compiled.create_infer_request()

    def f(t):
        # the input shared (no copy), the logits copied out of the request's buffer
        return torch.from_numpy(request.infer({0: t.numpy()}, share_inputs=True)[0])
    f.precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    return f
