"""Tracers, exporters and compilers on a fused=True model (issue #13, item 2): each records
the reference computation, so its result equals fused=False (1e-4 relative), or it raises a
clear error; a failed attempt leaves nothing cached in the model.

EMO-1M at 64x64, batch 2. torch.compile runs with the eager / aot_eager backends (Dynamo's
and AOTAutograd's tracing is what the fused path used to break; Inductor's code generation is
torch's own and costs minutes per case on this machine)."""
import contextlib
import copy

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from conftest import model_pair, rel_err

TOL = 1e-4


@pytest.fixture
def pair():
    return model_pair("emo_1m", drop_path_rate=0.0)


def _setup(pair, mode):
    ref, fused = pair
    for m in pair:
        m.train(mode == "train")
    x, x2 = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    with torch.no_grad():  # train mode: batch statistics, so the logits do not depend on
        want = ref(x2)     # the running statistics the traced forward already updated
    return ref, fused, x, x2, want


def _grad_ctx(grad):
    return contextlib.nullcontext() if grad else torch.no_grad()


def _no_fake_tensors(model):
    from torch._subclasses.fake_tensor import FakeTensor

    def walk(v):
        if isinstance(v, FakeTensor):
            return False
        if isinstance(v, (tuple, list)):
            return all(walk(u) for u in v)
        if isinstance(v, dict):
            return all(walk(u) for u in v.values())
        return True
    return all(walk(v) for m in model.modules() for v in m.__dict__.values())


CASES = [("eval", False), ("eval", True), ("train", True)]
IDS = ["eval-no_grad", "eval-grad", "train-grad"]


@pytest.mark.parametrize("mode,grad", CASES, ids=IDS)
def test_jit_trace(pair, mode, grad):
    ref, fused, x, x2, want = _setup(pair, mode)
    with _grad_ctx(grad):
        traced = torch.jit.trace(fused, (x,), check_trace=False)
        assert rel_err(traced(x2), want) <= TOL


@pytest.mark.parametrize("mode,grad", CASES, ids=IDS)
def test_torch_export(pair, mode, grad):
    ref, fused, x, x2, want = _setup(pair, mode)
    dynamic = mode == "eval" and grad  # one case with a dynamic batch
    shapes = ({"x": {0: torch.export.Dim("batch", min=2, max=64)}},) if dynamic else None
    with _grad_ctx(grad):
        ep = torch.export.export(fused, (x,), dynamic_shapes=shapes[0] if shapes else None)
        assert rel_err(ep.module()(x2), want) <= TOL
        if dynamic:
            x3 = torch.randn(3, 3, 64, 64)
            with torch.no_grad():
                assert rel_err(ep.module()(x3), ref(x3)) <= TOL
    assert _no_fake_tensors(fused)
    copy.deepcopy(fused)


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_onnx_legacy_export_runs_in_onnxruntime(pair, tmp_path, grad):
    ort = pytest.importorskip("onnxruntime")
    ref, fused, x, x2, want = _setup(pair, "eval")
    path = str(tmp_path / "emo.onnx")
    with _grad_ctx(grad):
        torch.onnx.export(fused, (x,), path, dynamo=False, opset_version=17, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["x"]
    out = torch.from_numpy(sess.run(None, {"x": x2.numpy()})[0])
    assert rel_err(out, want) <= TOL
    x3 = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(torch.from_numpy(sess.run(None, {"x": x3.numpy()})[0]), ref(x3)) <= TOL


def test_onnx_dynamo_export_runs_in_onnxruntime(pair, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript", reason="the dynamo ONNX exporter needs onnxscript")
    ref, fused, x, x2, want = _setup(pair, "eval")
    path = str(tmp_path / "emo.onnx")
    with torch.no_grad():
        torch.onnx.export(fused, (x,), path, dynamo=True)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x2.numpy()})[0]
    assert rel_err(torch.from_numpy(np.asarray(out)), want) <= TOL
    assert _no_fake_tensors(fused)


@pytest.mark.parametrize("mode,grad,backend", [("eval", False, "eager"),
                                               ("train", True, "aot_eager")],
                         ids=["eval-no_grad-eager", "train-grad-aot_eager"])
def test_compile_fullgraph(pair, mode, grad, backend):
    ref, fused, x, x2, want = _setup(pair, mode)
    torch._dynamo.reset()
    with _grad_ctx(grad):
        out = torch.compile(fused, fullgraph=True, backend=backend)(x2)
    assert rel_err(out, want) <= TOL
    if grad:
        out.sum().backward()
        assert all(p.grad is not None for p in fused.parameters())
    assert _no_fake_tensors(fused)
    copy.deepcopy(fused)


@pytest.mark.parametrize("backend,prefix", [("cpu", "emo_kernels_cpu_"),
                                            ("triton", "emo_kernels.irmb_inference_triton")])
def test_compile_fullgraph_keeps_the_kernel_ops(pair, backend, prefix):
    """Inference (eval, no grad): torch.compile(fullgraph=True) traces the fused model without a
    graph break (fullgraph raises on one), its graph holds one opaque ``irmb_inference`` op of
    the selected backend per block -- the C++ cpu backend's torch.library op, or the triton
    backend's custom op (the Triton interpreter here, the GPU on a GPU machine) -- not the
    reference computation, and running it runs those kernels: the logits equal fused=False."""
    import emo_kernels
    ref, fused, x, x2, want = _setup(pair, "eval")
    graphs = []

    def keep_graph(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    with torch.no_grad(), emo_kernels.use_backend(backend), \
            emo_kernels.record_dispatch() as calls:
        out = torch.compile(fused, fullgraph=True, backend=keep_graph)(x2)
    assert rel_err(out, want) <= TOL
    assert len(graphs) == 1
    targets = [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"]
    ops = [t for t in targets if t.startswith(prefix)]
    assert len(ops) == 16 and all(".irmb_inference" in t for t in ops)
    assert sum("conv2d" in t for t in targets) == 1  # the stem's; every block's are in the op
    assert ("irmb_inference", backend) in calls  # dispatched to the backend while tracing


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_fx_and_feature_extractor(pair, mode):
    from torchvision.models.feature_extraction import create_feature_extractor
    ref, fused, x, x2, want = _setup(pair, mode)
    with torch.no_grad():
        assert rel_err(torch.fx.symbolic_trace(fused)(x2), want) <= TOL
        feats = create_feature_extractor(fused, {"stage2": "s2", "stage4": "s4"})(x2)
        ref_feats = ref.forward_intermediates(x2, intermediates_only=True)
    assert rel_err(feats["s2"], ref_feats[1]) <= TOL
    assert rel_err(feats["s4"], ref_feats[3]) <= TOL


@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
def test_jit_script_raises_clear_error(fused):
    import emo
    model = emo.emo_1m(fused=fused).eval()
    with pytest.raises(RuntimeError, match="torch.jit.script.*torch.jit.trace, torch.export"):
        torch.jit.script(model)
    with pytest.raises(RuntimeError, match="torch.jit.script"):
        torch.jit.script(model.stage3[1])


def test_failed_export_leaves_nothing_cached(pair):
    """An export that fails after the blocks ran under fake tensors leaves the model usable:
    deepcopy works and eager forwards are right."""
    ref, fused, x, x2, want = _setup(pair, "eval")

    def fail(*args):
        raise RuntimeError("export failed on purpose")

    h = fused.head.register_forward_hook(fail)
    with torch.no_grad(), pytest.raises(Exception, match="on purpose"):
        torch.export.export(fused, (x,))
    h.remove()
    assert _no_fake_tensors(fused)
    copy.deepcopy(fused)
    with torch.no_grad():
        assert rel_err(fused(x2), want) <= 1e-5


def test_flop_counter_sees_the_computation(pair):
    """A TorchDispatchMode (here FlopCounterMode) sees the same ops as with fused=False."""
    ref, fused, x, x2, want = _setup(pair, "eval")
    counts = []
    for m in (ref, fused):
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            m(x)
        counts.append(fc.get_total_flops())
    assert counts[0] == counts[1] > 0
