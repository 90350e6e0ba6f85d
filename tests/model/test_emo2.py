"""EMOv2 (issue #19, item 1): the model zoo against the official implementation's outputs (shared
fixture, EMO2_1M_k5_hybrid at 224x224 and 193x221), the official key layout, the variants, the
two window partitions, the model API shared with EMO v1, and what ``fused=True`` runs (every
block through the ops: the plain ones as EMO v1's, the hybrid attention ones through
``window_attention``'s hybrid form; a block with a replaced part by its reference computation,
said by ``fused_reason``)."""
import copy
import os

import pytest
import torch
import torch.nn as nn

import emo
import emo_kernels
from emo_kernels.reference import window_attention_ref
from conftest import SHARED, assert_same_train_step, model_pair, rel_err
from emo.emo2 import (HybridWindowAttention, close_partition, close_unpartition, remote_partition,
                      remote_unpartition)

FIXTURE2 = os.path.join(SHARED, "fixtures", "emo2_1m_k5_hybrid_224x224_193x221.pt")
needs_fixture = pytest.mark.skipif(not os.path.exists(FIXTURE2),
                                   reason=f"fixture not found: {FIXTURE2}")
# parameters (millions) of the official configs (5.13 M for EMOv2-5M: emov2-architecture.md)
PARAMS_M = {"emo2_1m": 1.461, "emo2_2m": 2.384, "emo2_5m": 5.126, "emo2_20m": 20.195}


@pytest.fixture(scope="module")
def fixture():
    return torch.load(FIXTURE2, weights_only=False)


def float_sd(sd):
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


# ----- the official outputs ----------------------------------------------------------------------
@needs_fixture
@pytest.mark.parametrize("fused", [False, True], ids=["fused0", "fused1"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-4)],
                         ids=["fp64", "fp32"])
def test_official_logits_and_input_grads(fixture, fused, dtype, tol):
    """Eval logits (with and without autograd: the fused model's two paths) and input gradients
    for the fixture's cotangent equal the official code's, at 224x224 and at 193x221 (padding in
    both partitions)."""
    model = emo.emo2_1m(fused=fused)
    emo.load_checkpoint(model, float_sd(fixture["state_dict"]))
    model = model.to(dtype).eval()
    for size, x in fixture["inputs"].items():
        want = fixture["logits"][size]
        x = x.to(dtype).requires_grad_(True)
        logits = model(x)
        assert rel_err(logits, want) <= tol, size
        r = fixture["grads"][size]["r"].to(dtype)
        (g,) = torch.autograd.grad((logits * r).sum(), x)
        assert rel_err(g, fixture["grads"][size]["input_grad"]) <= tol, size
        with torch.no_grad():
            assert rel_err(model(x), want) <= tol, size


@needs_fixture
def test_key_layout_is_official(fixture):
    model = emo.emo2_1m()
    assert set(model.state_dict()) == set(fixture["state_dict"])
    model.load_state_dict(float_sd(fixture["state_dict"]), strict=True)
    for k, v in model.state_dict().items():
        assert v.shape == fixture["state_dict"][k].shape, k


@needs_fixture
def test_loader_names_mismatching_keys(fixture):
    sd = float_sd(fixture["state_dict"])
    sd.pop("stage3.1.eops.0.v.conv.bias")
    with pytest.raises(KeyError, match=r"stage3\.1\.eops\.0\.v\.conv\.bias"):
        emo.emo2_1m(pretrained=sd)
    with pytest.raises(KeyError, match="missing keys"):
        emo.emo_1m(pretrained=float_sd(fixture["state_dict"]), pretrained_head="drop")  # v2 in v1


# ----- variants ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(PARAMS_M))
def test_param_counts_and_window_sizes(name):
    for variant, ws in ((name, 7), (f"{name}_256", 8)):
        model = emo.create_model(variant)
        assert isinstance(model, emo.EMO2) and isinstance(model, emo.EMO)
        n = sum(p.numel() for p in model.parameters())
        assert abs(n / 1e6 - PARAMS_M[name]) <= 0.001, variant
        hybrid = [m for m in model.modules() if isinstance(m, HybridWindowAttention)]
        depths = emo.CONFIGS_V2[variant]["depths"]
        assert len(hybrid) == depths[2] - 1 + depths[3] - 1
        assert {m.window_size for m in hybrid} == {ws}
        blocks = [m for m in model.modules() if isinstance(m, emo.iiRMB)]
        assert {b.conv_local.conv.kernel_size for b in blocks} == {(5, 5)}
        assert all(b.conv_local.conv.bias is None and b.proj.conv.bias is None for b in blocks)


def test_list_create_and_pretrained_cfgs():
    assert emo.list_models("emo2") == sorted(emo.CONFIGS_V2)
    assert emo.list_models() == sorted(emo.list_models("emo") + emo.list_models("emo2"))
    with pytest.raises(ValueError, match="family"):
        emo.list_models("emo3")
    cfg = emo.emo2_5m().pretrained_cfg
    assert cfg["url"].endswith("emov2_pretrained_weights/EMOv2_5M_224.pth")
    assert cfg["first_conv"] == "stage0.0.conv" and cfg["input_size"] == (3, 224, 224)
    assert emo.emo2_5m_256().pretrained_cfg["input_size"] == (3, 256, 256)
    for name in ("emo2_20m", "emo2_1m_256"):  # nothing published: a clear error, no download
        with pytest.raises(ValueError, match="no published classification weights"):
            emo.create_model(name, pretrained=True)


def test_hybrid_heads_are_wider_for_values():
    blk = emo.emo2_5m().stage3[1]
    attn = blk.eops[0]
    assert (attn.num_heads, attn.head_dim) == (5, 32)
    assert attn.v.conv.out_channels // attn.num_heads == 128  # value heads 4x the q/k heads


# ----- the two partitions ---------------------------------------------------------------------------
def test_partitions_are_the_official_rearranges():
    """remote: window (i, j) holds pixels (i + n1*a, j + n2*b); close: the contiguous ws x ws
    block (i, j); both inverted exactly."""
    B, C, ws, n1, n2 = 2, 3, 4, 2, 3
    x = torch.arange(B * C * ws * n1 * ws * n2, dtype=torch.float64).reshape(B, C, ws * n1,
                                                                             ws * n2)
    r, c = remote_partition(x, ws), close_partition(x, ws)
    assert r.shape == c.shape == (B * n1 * n2, C, ws, ws)
    for b in range(B):
        for i in range(n1):
            for j in range(n2):
                w = (b * n1 + i) * n2 + j
                assert torch.equal(r[w], x[b, :, i::n1, j::n2])
                assert torch.equal(c[w], x[b, :, i * ws:(i + 1) * ws, j * ws:(j + 1) * ws])
    assert torch.equal(remote_unpartition(r, n1, n2), x)
    assert torch.equal(close_unpartition(c, n1, n2), x)


def test_padded_pixels_carry_the_biases():
    """The official padding quirk: qk and v are computed on the zero-padded map, so a padded
    key is b_k and a padded value act(b_v): the block equals the op's reference given those
    pads, and differs from the same attention with zero pads (EMO v1's values)."""
    torch.manual_seed(0)
    attn = HybridWindowAttention(8, 16, "gelu", 4, 4).double()
    with torch.no_grad():
        attn.v.conv.bias.uniform_(1.0, 2.0)
        attn.qk.conv.bias.uniform_(-1.0, 1.0)
    x = torch.randn(2, 8, 5, 6, dtype=torch.float64)
    with torch.no_grad():
        out = attn(x)
        qk, v = attn.qk(x), attn.v(x)
        args = (qk[:, :8], qk[:, 8:], v)
        kw = dict(head_dim=4, window_size=4, partition="hybrid")
        want = window_attention_ref(*args, attn.qk.conv.bias[8:], v_pad=nn.functional.gelu(
            attn.v.conv.bias), **kw)
        zero_pads = window_attention_ref(*args, **kw)
    assert out.shape == (2, 16, 5, 6)
    assert rel_err(out, want) <= 1e-14
    assert rel_err(zero_pads, want) > 1e-3


# ----- fused=True --------------------------------------------------------------------------------
def test_fused_runs_every_block_through_the_ops():
    model = emo.emo2_1m(fused=True)
    blocks = [b for b in model.modules() if isinstance(b, emo.iiRMB)]
    assert sum(not b.hybrid for b in blocks) == 2 + 2 + 1 + 1
    assert sum(b.hybrid for b in blocks) == 7 + 2
    assert all(b.fused_reason is None for b in blocks)


def test_fused_reason_names_a_replaced_part():
    model = emo.emo2_1m(fused=True).eval()
    blk = model.stage3[1]
    blk.eops[0].v.act = nn.ReLU()
    assert "qk / v convolutions" in blk.fused_reason
    blk.eops[0].v.act = nn.GELU()
    blk.ls = nn.Identity()
    assert "LayerScale" in blk.fused_reason
    with torch.no_grad(), emo_kernels.record_dispatch() as calls:
        blk(torch.randn(1, 80, 9, 9))
    assert calls == []  # the reference computation, no op


@pytest.mark.parametrize("name,part", [
    ("emo2_1m", "stage3.1.conv_local.act"), ("emo2_1m", "stage1.1.eops.0.net.act"),
    ("emo_1m", "stage3.1.conv_local.act"), ("emo_1m", "stage1.1.v.act")])
def test_a_replaced_activation_runs_the_reference(name, part):
    """An activation the fused ops would compute, replaced: that block takes the reference
    computation (eval and training), so fused=True still equals fused=False."""
    ref, fused = model_pair(name)
    for model in (ref, fused):
        parent, attr = model.get_submodule(part.rsplit(".", 1)[0]), part.rsplit(".", 1)[1]
        setattr(parent, attr, nn.ReLU())
    blk = fused.get_submodule(".".join(part.split(".")[:2]))
    assert not blk._fused_ok()
    x = torch.randn(2, 3, 64, 64)
    for train in (False, True):
        ref.train(train), fused.train(train)
        torch.manual_seed(1)
        a = ref(x)
        torch.manual_seed(1)
        assert rel_err(fused(x), a) <= 1e-5, train


def test_fused_training_runs_every_block_through_the_ops(monkeypatch):
    calls = []
    for name in ("expand_dwconv_act", "window_attention"):
        orig = getattr(emo_kernels, name)
        monkeypatch.setattr(emo_kernels, name,
                            lambda *a, _o=orig, _n=name, **k: calls.append((_n, k.get("partition")))
                            or _o(*a, **k))
    emo.emo2_1m(fused=True).train()(torch.randn(2, 3, 64, 64)).sum().backward()
    assert calls.count(("expand_dwconv_act", None)) == 6 + 9
    assert calls.count(("window_attention", "hybrid")) == 9 and len(calls) == 6 + 9 + 9


def test_fused_inference_runs_every_block_through_the_ops():
    """Eval, CPU, no grad: the 15 blocks as one prepared chain on the cpu backend (one C++
    call); a block with a forward hook runs on its own: each block one irmb_inference call
    (the hybrid ones in EMOv2's form)."""
    model = emo.emo2_1m(fused=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), emo_kernels.record_dispatch() as calls:
        want = model(x)
    assert calls == [("irmb_inference chain", "cpu")]
    model.stage3[1].register_forward_hook(lambda *a: None)
    with torch.no_grad(), emo_kernels.record_dispatch() as calls:
        assert rel_err(model(x), want) <= 1e-6
    assert calls == [("irmb_inference", "cpu")] * 15
    forms = [emo.inference.block_args(b)[1] for b in model.modules() if isinstance(b, emo.iiRMB)]
    assert sum(k.get("partition") == "hybrid" and k.get("attn_pre") is False
               for k in forms) == 9


@pytest.mark.parametrize("hw", [(64, 64), (57, 83)], ids=["64x64", "57x83"])
def test_fused_train_step_matches(hw):
    """fused=True in train mode (BatchNorm batch statistics, drop path), float64: the same
    gradients of every parameter and the same running statistics as fused=False."""
    ref, fused = model_pair("emo2_1m")
    ref, fused = ref.double().train(), fused.double().train()
    x = torch.randn(2, 3, *hw, dtype=torch.float64)
    assert_same_train_step(ref, fused, x, torch.randint(0, 1000, (2,)), 1e-9, 1e-12)


@pytest.mark.parametrize("name", ["emo2_1m_256", "emo2_2m"])
def test_fused_eval_matches_on_odd_sizes(name):
    ref, fused = model_pair(name)
    ref, fused = ref.double().eval(), fused.double().eval()
    for hw in [(1, 1), (45, 67), (96, 160)]:
        x = torch.randn(2, 3, *hw, dtype=torch.float64)
        with torch.no_grad():
            want = ref(x)
            assert want.shape == (2, 1000) and torch.isfinite(want).all()
            assert rel_err(fused(x), want) <= 1e-10, hw


# ----- the model API -----------------------------------------------------------------------------
def test_reparameterize_folds_every_bn_in_float64():
    _, model = model_pair("emo2_1m")
    model = model.double().eval()
    x = torch.randn(2, 3, 45, 67, dtype=torch.float64)
    with torch.no_grad():
        before = model(x)
        model.reparameterize()
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        assert rel_err(model(x), before) <= 1e-10


def test_classifier_api():
    model = emo.emo2_2m().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (1, 200)
        model.reset_classifier(7)
        assert model(x).shape == (1, 7)
        model.reset_classifier(0, global_pool="")
        assert model(x).shape == (1, 200, 2, 2)


def test_compile_fullgraph_keeps_one_op_per_block():
    """torch.compile(fullgraph=True) of the fused EMOv2 in inference: no graph break, one
    opaque cpu ``irmb_inference`` op per block (the hybrid ones in EMOv2's form), the stem's
    three convolutions in torch; the logits equal fused=False's."""
    ref, fused = model_pair("emo2_1m")
    ref.eval(), fused.eval()
    x = torch.randn(2, 3, 45, 67)
    graphs = []

    def keep_graph(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    with torch.no_grad(), emo_kernels.use_backend("cpu"):
        out = torch.compile(fused, fullgraph=True, backend=keep_graph)(x)
        assert rel_err(out, ref(x)) <= 1e-5
    targets = [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"]
    ops = [t for t in targets if t.startswith("emo_kernels_cpu_")]
    assert len(graphs) == 1 and len(ops) == 15 and all(".irmb_inference" in t for t in ops)
    assert sum("conv2d" in t for t in targets) == 3


@needs_fixture
def test_inference_plan_matches_the_official_outputs(fixture):
    """The frozen plan of EMOv2 (three-layer stem, plain and hybrid blocks in one chain):
    float64 logits equal the official code's at 224x224 and 193x221."""
    model = emo.emo2_1m(fused=True)
    emo.load_checkpoint(model, float_sd(fixture["state_dict"]))
    plan = emo.prepare_inference(model.double().eval())
    for size, x in fixture["inputs"].items():
        assert rel_err(plan(x.double()), fixture["logits"][size]) <= 1e-9, size


def test_hybrid_block_with_a_norm_before_attention_is_not_prepared():
    """A BatchNorm before the hybrid attention cannot be folded into qk and v (padded pixels
    carry the unfolded biases): that block runs its general fused forward, the plan refuses."""
    ref, fused = model_pair("emo2_1m")
    bn = nn.BatchNorm2d(fused.stage3[1].norm_channels, eps=1e-6)
    bn.running_var.uniform_(0.5, 2.0)
    for m in (ref, fused):
        m.stage3[1].norm = copy.deepcopy(bn)
    ref.eval(), fused.eval()
    assert emo.inference.block_args(fused.stage3[1]) is None
    x = torch.randn(1, 3, 45, 67)
    with torch.no_grad():
        assert rel_err(fused(x), ref(x)) <= 1e-5
    with pytest.raises(ValueError, match="block 5 has a form"):
        fused.prepare_inference()


def test_timm_registers_emo2():
    timm = pytest.importorskip("timm")
    assert sorted(timm.list_models("emo2_*")) == sorted(emo.CONFIGS_V2)
    model = timm.create_model("emo2_1m", num_classes=10, fused=True).eval()
    assert isinstance(model, emo.EMO2) and model.pretrained_cfg["first_conv"] == "stage0.0.conv"
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)
