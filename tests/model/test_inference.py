"""emo/inference.py: the plain fused=True model in CPU inference is always current (prepared on
every call, no cache), and InferencePlan is a frozen copy that later edits never reach."""
import copy

import pytest
import torch
import torch.nn as nn

import emo
import emo_kernels
from conftest import model_pair, rel_err

X = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))


def _pair(name="emo_1m", **kw):
    ref, fused = model_pair(name, **kw)
    return ref.eval(), fused.eval()


def _data_copy(m):  # an EMA update: p.data.copy_(ema)
    for p in m.parameters():
        p.data.copy_(p.data * 0.9 + 0.01)


def _running_var(m):
    m.stage2[1].conv_local.norm.running_var.data.mul_(2.0)
    m.stage1[1].norm.running_var.data.mul_(3.0)  # an input BN (folded into the expansion)
    m.stage0[0].convs[0][1].running_var.data.mul_(2.0)  # the stem conv's BN


def _bn_eps(m):
    m.stage1[1].conv_local.norm.eps = 1.0
    m.stage2[1].norm.eps = 1.0
    m.stage0[0].convs[0][1].eps = 1.0


def _ln_eps(m):
    m.stage3[1].norm.norm.eps = 1.0
    m.stage4[0].norm.norm.eps = 1.0


def _replace_conv(m):
    conv = copy.deepcopy(m.stage3[2].proj.conv)
    conv.weight.data.mul_(-0.5)
    m.stage3[2].proj.conv = conv


def _assign_param(m):
    norm = m.stage2[0].conv_local.norm
    norm.weight = nn.Parameter(norm.weight.detach() * 2.0)


def _replace_block(m):
    m.stage3[1] = copy.deepcopy(m.stage3[2])
    m.stage3[1].v.conv.weight.data.mul_(0.5)


def _data_swap(m):  # a parameter's data swapped: no version bump
    w = m.stage2[0].proj.conv.weight
    w.data = w.data * 2.0


def _in_place(m):
    with torch.no_grad():
        m.stage4[1].qk.conv.weight.mul_(1.5)
        m.stage3[0].v.conv.bias.add_(0.3)


EDITS = [_data_copy, _running_var, _bn_eps, _ln_eps, _replace_conv, _assign_param,
         _replace_block, _data_swap, _in_place]


def _emo2_stem(m):  # EMOv2's three-layer stem: BN statistics, eps, the 1x1 conv
    m.stage0[0].norm.running_var.data.mul_(2.0)
    m.stage0[1].norm.eps = 1.0
    m.stage0[2].conv.weight.data.mul_(-0.5)


def _emo2_hybrid(m):  # EMOv2's hybrid attention block: qk, v, LayerScale, LN; in place
    with torch.no_grad():
        m.stage3[1].eops[0].qk.conv.weight.mul_(1.5)
        m.stage3[2].eops[0].v.conv.bias.add_(0.3)
        m.stage4[1].ls.gamma.mul_(-2.0)
    m.stage4[1].norm.norm.eps = 1.0


def _emo2_replace_block(m):
    m.stage3[1] = copy.deepcopy(m.stage3[2])
    m.stage3[1].eops[0].v.conv.weight.data.mul_(0.5)


EDITS2 = [_data_copy, _emo2_stem, _emo2_hybrid, _emo2_replace_block]
CASES = [("emo_1m", e) for e in EDITS] + [("emo2_1m", e) for e in EDITS2]


@pytest.mark.parametrize("hooks", [False, True], ids=["chain", "hooked"])
@pytest.mark.parametrize("name,edit", CASES, ids=lambda v: v if isinstance(v, str)
                         else v.__name__[1:])
def test_fused_model_sees_every_edit(name, edit, hooks):
    """After a forward, the same edit on fused=False and fused=True models: the next fused
    forward (CPU, eval, no_grad) equals fused=False's -- with no train()/eval()/.to()."""
    ref, fused = _pair(name)
    if hooks:  # blocks with forward hooks run one by one (each block prepared per call)
        for m in fused.modules():
            if isinstance(m, emo.iRMB):
                m.register_forward_hook(lambda *a: None)
    with torch.no_grad():
        before = ref(X)
        assert rel_err(fused(X), before) <= 1e-5
        for m in (ref, fused):
            edit(m)
        after = ref(X)
        assert rel_err(after, before) > 1e-4  # the edit matters (10x the tolerance)
        assert rel_err(fused(X), after) <= 1e-5
        feats = fused.forward_intermediates(X, intermediates_only=True)
    for a, b in zip(ref.forward_intermediates(X, intermediates_only=True), feats):
        assert rel_err(b, a.detach()) <= 1e-5


def test_fused_model_follows_train_and_load():
    """Training (the torch path) and load_state_dict are seen by the next eval forward."""
    ref, fused = _pair()
    with torch.no_grad():
        fused(X)
    fused.train()
    fused(torch.randn(2, 3, 64, 64))  # updates the BN running statistics
    ref.load_state_dict(fused.state_dict())
    fused.eval()
    with torch.no_grad():
        assert rel_err(fused(X), ref(X)) <= 1e-5
        sd = {k: v * 1.5 if v.is_floating_point() else v for k, v in ref.state_dict().items()}
        ref.load_state_dict(sd)
        fused.load_state_dict(sd)
        assert rel_err(fused(X), ref(X)) <= 1e-5


def test_block_with_a_foreign_part_runs_its_own_module():
    """A part irmb_inference cannot express (a BatchNorm in train mode inside an eval block, a
    BatchNorm without running statistics) is not prepared: the block's general fused forward
    runs it."""
    ref, fused = _pair()
    for m in (ref, fused):
        m.stage2[1].conv_local.norm.train()
        m.stage1[1].conv_local.norm = nn.BatchNorm2d(m.stage1[1].conv_local.conv.out_channels,
                                                     eps=1e-6, track_running_stats=False)
    assert emo.inference.block_args(fused.stage2[1]) is None
    assert emo.inference.block_args(fused.stage1[1]) is None
    with torch.no_grad():
        assert rel_err(fused(X), ref(X)) <= 1e-5


# ----- InferencePlan -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["emo_1m", "emo2_1m"])
@pytest.mark.parametrize("fused_model", [False, True], ids=["fused0", "fused1"])
def test_plan_is_the_model_when_made(fused_model, name):
    ref, fused = _pair(name)
    model = fused if fused_model else ref
    plan = emo.prepare_inference(model)
    assert isinstance(plan, emo.InferencePlan)
    x = torch.randn(2, 3, 72, 56)
    with torch.no_grad():
        assert rel_err(plan(X), ref(X)) <= 1e-5
        assert rel_err(plan(x), ref(x)) <= 1e-5
        for a, b in zip(ref.forward_intermediates(x, intermediates_only=True),
                        plan.forward_intermediates(x)):
            assert a.shape == b.shape and rel_err(b, a) <= 1e-5
    with emo_kernels.use_backend("torch"):  # the device-agnostic path: block by block
        assert rel_err(plan(x), ref(x).detach()) <= 1e-5


@pytest.mark.parametrize("name", ["emo_1m", "emo2_1m"])
def test_plan_is_frozen(name):
    """Edits of the model never reach a plan; a new plan sees them. The plan's tensors are its
    own inference tensors: writing one in place outside inference_mode raises."""
    ref, fused = _pair(name)
    plan = fused.prepare_inference()
    with torch.no_grad():
        old = plan(X)
        for edit in (EDITS if name == "emo_1m" else EDITS2):
            edit(fused)
            edit(ref)
        assert torch.equal(plan(X), old)
        new = fused.prepare_inference()
        assert rel_err(new(X), ref(X)) <= 1e-5 and rel_err(new(X), old) > 1e-3
    model_ptrs = {t.data_ptr() for t in list(fused.parameters()) + list(fused.buffers())}
    tensors = plan.chain.tensors + [t for t in sum(plan.stem, ()) + plan.norm + plan.head
                                    if isinstance(t, torch.Tensor)]
    assert all(t.is_inference() and t.data_ptr() not in model_ptrs for t in tensors)
    with pytest.raises(RuntimeError, match="[Ii]nference"):
        plan.chain.tensors[0].mul_(2.0)


def test_plan_features_only_head_and_errors():
    ref, fused = _pair(features_only=True)
    plan = fused.prepare_inference()
    with torch.no_grad():
        for a, b in zip(ref(X), plan(X)):
            assert rel_err(b, a) <= 1e-5
    _, headless = _pair(num_classes=0)
    with torch.no_grad():
        assert rel_err(headless.prepare_inference()(X), headless(X)) <= 1e-5
    with pytest.raises(ValueError, match="eval mode"):
        emo.emo_1m().prepare_inference()
    with pytest.raises(ValueError, match="3 input channels"):
        plan(torch.randn(1, 4, 32, 32))
    with pytest.raises(TypeError, match="float64"):
        plan(X.double())


# ----- GraphedPlan: the plan under a CUDA graph -----------------------------------------------
def test_graphed_plan_without_cuda_runs_eagerly():
    """On CPU there is no graph to capture: the GraphedPlan says why and runs the plan."""
    ref, fused = _pair()
    graphed = emo.prepare_inference(fused, X)
    assert isinstance(graphed, emo.GraphedPlan) and graphed.graph is None
    assert "CUDA graphs need a CUDA device" in graphed.reason
    with torch.no_grad():
        assert rel_err(graphed(X), ref(X)) <= 1e-5
    with pytest.raises(TypeError, match="InferencePlan"):
        emo.GraphedPlan(fused, X)


def test_graphed_plan_capture_failure_warns_and_runs_eagerly(monkeypatch):
    from emo import inference
    ref, fused = _pair()
    plan = fused.prepare_inference()
    monkeypatch.setattr(inference, "_no_capture_reason", lambda example: None)

    def fail(self, example):
        raise RuntimeError("operation not permitted when stream is capturing")
    monkeypatch.setattr(inference.GraphedPlan, "_capture", fail)
    with pytest.warns(RuntimeWarning, match="capture failed.*runs eagerly"):
        graphed = plan.cuda_graph(X)
    assert graphed.graph is None and "not permitted" in graphed.reason
    with torch.no_grad():
        assert rel_err(graphed(X), ref(X)) <= 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a CUDA graph needs a GPU")
@pytest.mark.parametrize("backend", ["auto", "triton"])
def test_graphed_plan_replays_on_gpu(backend):
    """On a GPU: the captured graph replays the plan (triton kernels or the eager path), its
    outputs are copies, and another input shape runs eagerly."""
    ref, fused = _pair()
    ref, fused = ref.cuda(), fused.cuda()
    x = X.cuda()
    with emo_kernels.use_backend(backend):
        graphed = fused.prepare_inference(x)
        assert graphed.graph is not None, graphed.reason
        with torch.no_grad():
            want = ref(x)
            a = graphed(x)
            b = graphed(x * 2)
            assert rel_err(a, want) <= 1e-5 and rel_err(b, ref(x * 2)) <= 1e-5
            small = x[:1]
            assert rel_err(graphed(small), ref(small)) <= 1e-5
