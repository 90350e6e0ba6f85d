"""The validation layer of the public ops and of IRMBChain: the same error, naming the argument,
on every backend (the checks run before a backend is chosen): zero channel counts, argument
types (skip a bool, stride an int in {1, 2}, act from the list), BatchNorm dtypes, chain block
form and keywords, chain outputs. Zero batch and 1x1 maps stay valid; fp16/bf16 input with
float32 BatchNorm statistics (mixed precision) runs on every backend that accepts it."""
import pytest
import torch

import emo_kernels
from emo_kernels import dispatch
from conftest import rel_err
from emo_kernels.testing import TOLERANCE

BACKENDS = ("torch", "cpu", "triton", "cuda")
eda, wa, irmb = (emo_kernels.expand_dwconv_act, emo_kernels.window_attention,
                 emo_kernels.irmb_inference)


def _eda_args(B=1, C=4, Cm=8, H=5, W=5, dtype=torch.float32):
    return (torch.randn(B, C, H, W, dtype=dtype), torch.randn(Cm, C, dtype=dtype),
            torch.randn(Cm, dtype=dtype), torch.randn(Cm, 1, 3, 3, dtype=dtype))


def _irmb_args(C=4, Cm=8, Co=4):
    x, w, b, wd = _eda_args(C=C, Cm=Cm)
    return [x, w, b, wd, torch.randn(Cm), torch.randn(Co, Cm)]


def _bn(n, dtype=torch.float32):
    return dict(bn_weight=torch.rand(n, dtype=dtype) + 0.5, bn_bias=torch.randn(n, dtype=dtype),
                running_mean=0.1 * torch.randn(n, dtype=dtype),
                running_var=torch.rand(n, dtype=dtype) + 0.5)


def _se(Cm, R):
    return dict(se_reduce_weight=torch.randn(R, Cm, 1, 1), se_reduce_bias=torch.randn(R),
                se_expand_weight=torch.randn(Cm, R, 1, 1), se_expand_bias=torch.randn(Cm))


x4, w8, b8, wd8 = _eda_args()
q8 = torch.randn(1, 8, 5, 5)
CASES = {
    # zero channel counts (a C++ kernel would divide by them)
    "eda-Cmid0": (lambda: eda(x4, w8[:0], b8[:0], wd8[:0]),
                  ValueError, "w_exp must have at least 1 output channel, got 0"),
    "eda-identity-C0": (lambda: eda(x4[:, :0], None, None, wd8[:0], act="none"),
                        ValueError, "x must have at least 1 channel, got 0"),
    "eda-Cin0": (lambda: eda(x4[:, :0], w8[:, :0], b8, wd8),
                 ValueError, "x must have at least 1 channel"),
    "wa-C0": (lambda: wa(q8[:, :0], q8[:, :0], q8[:, :0], head_dim=4),
              ValueError, "q must have at least 1 channel"),
    "irmb-Cout0": (lambda: irmb(*_irmb_args()[:5], torch.randn(0, 8)),
                   ValueError, "w_proj must have at least 1 output channel"),
    "irmb-identity-C0": (lambda: irmb(x4[:, :0], None, None, wd8[:0], None, torch.randn(4, 0),
                                      act="none"),
                         ValueError, "x must have at least 1 channel"),
    "irmb-se-R0": (lambda: irmb(*_irmb_args(), **_se(8, 0)),
                   ValueError, "se_reduce_weight must have at least 1 output channel"),
    # types
    "eda-skip-str": (lambda: eda(x4, w8, b8, wd8, skip="no"), TypeError,
                     "skip must be a bool, got 'no'"),
    "eda-stride-float": (lambda: eda(x4, w8, b8, wd8, stride=2.0), TypeError,
                         r"stride must be an int in \{1, 2\}, got 2.0"),
    "eda-stride-bool": (lambda: eda(x4, w8, b8, wd8, stride=True), TypeError,
                        "stride must be an int"),
    "eda-stride-3": (lambda: eda(x4, w8, b8, wd8, stride=3), ValueError, "stride must be one of"),
    "eda-act-int": (lambda: eda(x4, w8, b8, wd8, act=1), TypeError, "act must be one of"),
    "eda-eps-str": (lambda: eda(x4, w8, b8, wd8, eps="1e-6"), TypeError, "eps must be a number"),
    "eda-bn_training-int": (lambda: eda(x4, w8, b8, wd8, bn_training=1, **_bn(8)), TypeError,
                            "bn_training must be a bool"),
    "eda-unknown-kwarg": (lambda: eda(x4, w8, b8, wd8, stirde=2), TypeError, "stirde"),
    "wa-head_dim-bool": (lambda: wa(q8, q8, q8, head_dim=True), TypeError,
                         "head_dim must be an int"),
    "wa-window-float": (lambda: wa(q8, q8, q8, head_dim=4, window_size=7.0), TypeError,
                        "window_size must be an int"),
    "wa-scale-str": (lambda: wa(q8, q8, q8, head_dim=4, scale="0.5"), TypeError,
                     "scale must be a number or None"),
    "irmb-skip-str": (lambda: irmb(*_irmb_args(), skip="no"), TypeError, "skip must be a bool"),
    "irmb-stride-float": (lambda: irmb(*_irmb_args(), stride=2.0), TypeError,
                          "stride must be an int"),
    "irmb-window-str": (lambda: irmb(*_irmb_args(), window_size="7"), TypeError,
                        "window_size must be an int"),
    "irmb-se_act": (lambda: irmb(*_irmb_args(), se_act="relu", **_se(8, 2)), ValueError,
                    "se_act must be one of"),
    # skip with Cout != C: the message says so (no residual was passed)
    "irmb-skip-cout": (lambda: irmb(*_irmb_args(Co=6), skip=True), ValueError,
                       r"skip=True adds x to the output, so w_proj must have C=4 output channels "
                       r"\(Cout = C\), got 6"),
    # BatchNorm statistics: x's dtype, or float32 with fp16/bf16 x, all of one dtype
    "bn-fp64-stats": (lambda: eda(x4, w8, b8, wd8, **_bn(8, torch.float64)), TypeError,
                      r"bn_weight must have dtype torch.float32 \(the input is torch.float32\), "
                      r"got torch.float64"),
    "bn-fp16-stats-fp32-x": (lambda: eda(x4, w8, b8, wd8, **{**_bn(8), "running_var":
                                                           torch.ones(8).half()}),
                             TypeError, "running_var must have dtype torch.float32"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_same_error_on_every_backend(case, backend):
    fn, exc, match = CASES[case]
    with emo_kernels.use_backend(backend), torch.no_grad():
        with pytest.raises(exc, match=match):
            fn()


def _chain_block(C=4, Cm=8, Co=4, **kw):
    a = _irmb_args(C, Cm, Co)
    return (tuple(a[1:]), dict(kw))


CHAIN_CASES = {
    "misspelt-keyword": ([_chain_block(), _chain_block(windowsize=3)], TypeError,
                         r"block 1: irmb_inference: unknown keyword argument\(s\) "
                         r"\['windowsize'\]"),
    "four-args": ([(_chain_block()[0][:4], {})], TypeError,
                  r"block 0: args must be the 5 arguments .*got 4 values"),
    "six-args": ([(_chain_block()[0] + ("silu",), {})], TypeError, "block 0: args must be"),
    "not-a-pair": ([_chain_block()[0]], TypeError, "block 0: a block must be an"),
    "skip-str": ([_chain_block(skip="no")], TypeError, "block 0: skip must be a bool"),
    "stride-float": ([_chain_block(stride=2.0)], TypeError, "block 0: stride must be an int"),
}


@pytest.mark.parametrize("case", list(CHAIN_CASES))
def test_chain_block_errors(case):
    blocks, exc, match = CHAIN_CASES[case]
    with pytest.raises(exc, match=match):
        emo_kernels.IRMBChain(blocks, 4, torch.float32, "cpu")


def test_chain_constructor_and_outputs_errors():
    with pytest.raises(ValueError, match="in_channels must be an int >= 1, got 0"):
        emo_kernels.IRMBChain([_chain_block()], 0, torch.float32, "cpu")
    with pytest.raises(TypeError, match="dtype must be one of"):
        emo_kernels.IRMBChain([_chain_block()], 4, torch.int32, "cpu")
    chain = emo_kernels.IRMBChain([_chain_block(), _chain_block()], 4, torch.float32, "cpu")
    x = torch.randn(1, 4, 5, 5)
    for bad in ([0.7], "1", [True], 1, [0, 1.0]):
        with pytest.raises(TypeError, match="outputs must be"):
            chain(x, outputs=bad)
    with torch.no_grad(), emo_kernels.use_backend("torch"):
        assert len(chain(x, outputs=(0, 1))) == 2
        assert len(chain(x, outputs=[torch.tensor(1)])) == 1


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_zero_batch_and_1x1_maps_stay_valid(backend):
    for B, H, W in ((0, 5, 5), (2, 1, 1)):
        x, w, b, wd = _eda_args(B=B, H=H, W=W)
        with emo_kernels.use_backend(backend), torch.no_grad():
            assert eda(x, w, b, wd).shape == (B, 8, H, W)
            assert wa(x, x, x, head_dim=2).shape == (B, 4, H, W)
            assert irmb(x, w, b, wd, b, torch.randn(4, 8), skip=True).shape == (B, 4, H, W)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_mixed_precision_batchnorm(autograd_backend, dtype, training):
    """fp16/bf16 x with float32 BatchNorm parameters and running stats (nn.BatchNorm2d under
    autocast): each backend with half precision matches the float32 computation, and updates
    the float32 running stats; the cpu backend (fp32/fp64 only) refuses it with a reason."""
    backend, dev = autograd_backend
    x, w, b, wd = (t.to(dev) for t in _eda_args(B=2, dtype=dtype))
    bn = {k: v.to(dev) for k, v in _bn(8).items()}
    bn32 = {k: v.clone() for k, v in bn.items()}
    with torch.no_grad():
        ref = emo_kernels.reference.expand_dwconv_act_ref(
            x.float(), w.float(), b.float(), wd.float(), act="gelu", bn_training=training, **bn32)
        with emo_kernels.use_backend(backend):
            out = eda(x, w, b, wd, act="gelu", bn_training=training, **bn)
    assert out.dtype == dtype
    assert rel_err(out, ref) <= TOLERANCE[dtype]
    for k in ("running_mean", "running_var"):
        assert bn[k].dtype == torch.float32
        assert rel_err(bn[k], bn32[k]) <= TOLERANCE[dtype]
    reason = dispatch.cannot_run("expand_dwconv_act", "cpu", x, w, b, wd, **bn)
    assert reason is not None and str(dtype).split(".")[-1] in reason, reason
