"""fused=False exports to ONNX (opset 17) and ONNX Runtime gives the same logits."""
import numpy as np
import pytest
import torch

import emo

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is in requirements.txt")


def test_onnx_export_same_logits(tmp_path):
    model = emo.emo_1m().eval()
    path = str(tmp_path / "emo_1m.onnx")
    torch.onnx.export(model, (torch.randn(1, 3, 64, 64),), path, opset_version=17,
                      dynamo=False, input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "batch", 2: "h", 3: "w"}})
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    # 224: no padding; 256: padded windows in stages 3 and 4; odd sizes; batch 2
    for shape in [(1, 3, 224, 224), (2, 3, 256, 256), (1, 3, 193, 221)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            ref = model(x).numpy()
        out = sess.run(None, {"x": x.numpy()})[0]
        assert out.shape == ref.shape
        assert np.abs(out - ref).max() / np.abs(ref).max() <= 1e-5, shape
