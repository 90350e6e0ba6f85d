"""emo.load_checkpoint: paths, file-like objects and dicts load; every bad file gives an error
naming the file and the problem (never the advice to load with weights_only=False); a pickle
holding code is refused without running it; a head of another class count is dropped only with
a warning, or quietly / refused when the caller says so."""
import io
import os
import warnings

import pytest
import torch

import emo


class _MakesDir:
    """A pickle that would create a directory when unpickled with weights_only=False."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


@pytest.fixture(scope="module")
def sd():
    torch.manual_seed(0)
    return emo.emo_1m().state_dict()


def test_path_bytesio_and_dict_load(sd, tmp_path):
    path = tmp_path / "emo_1m.pth"
    torch.save({"model": sd}, path)
    buf = io.BytesIO(path.read_bytes())
    for ckpt in (str(path), path, buf, sd):
        model = emo.load_checkpoint(emo.emo_1m(), ckpt)
        assert torch.equal(model.head.weight, sd["head.weight"])


@pytest.mark.parametrize("content, match", [
    (b"", "is empty"),
    (bytes(range(256)) * 4, "not a PyTorch checkpoint"),
    (None, "corrupt or truncated"),  # a truncated zip archive
], ids=["empty", "random-bytes", "truncated"])
def test_unreadable_files_name_the_file(sd, tmp_path, content, match):
    path = tmp_path / "bad.pth"
    if content is None:
        buf = io.BytesIO()
        torch.save(sd, buf)
        content = buf.getvalue()[:300]
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as e:
        emo.load_checkpoint(emo.emo_1m(), str(path))
    assert "bad.pth" in str(e.value) and "weights_only" not in str(e.value)
    with pytest.raises(ValueError, match=match):  # the same from a file object
        emo.load_checkpoint(emo.emo_1m(), io.BytesIO(content))


def test_code_in_a_pickle_is_refused_not_run(tmp_path):
    target = tmp_path / "created_by_the_pickle"
    path = tmp_path / "evil.pth"
    torch.save({"head.weight": _MakesDir(str(target))}, path)
    with pytest.raises(ValueError, match="refused to load checkpoint .*evil.pth") as e:
        emo.load_checkpoint(emo.emo_1m(), str(path))
    assert "weights_only=False" not in str(e.value)
    assert not target.exists()


def test_non_tensor_values_are_named(sd, tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({**sd, "head.bias": 3}, path)
    with pytest.raises(ValueError, match=r"odd.pth.*key 'head.bias' holds a int"):
        emo.load_checkpoint(emo.emo_1m(), str(path))
    with pytest.raises(ValueError, match="holds no state dict"):
        emo.load_checkpoint(emo.emo_1m(), io.BytesIO(_saved([1, 2])))


def _saved(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_head_of_another_class_count(sd):
    with pytest.warns(UserWarning, match=r"classifier head.*\['head.bias', 'head.weight'\]"):
        model = emo.load_checkpoint(emo.emo_1m(num_classes=10), sd)
    key = "stage1.0.conv_local.conv.weight"
    assert torch.equal(model.state_dict()[key], sd[key])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        emo.load_checkpoint(emo.emo_1m(num_classes=10), sd, head="drop")
        emo.load_checkpoint(emo.emo_1m(), sd, head="strict")  # same shapes: no complaint
    with pytest.raises(ValueError, match=r"checkpoint <OrderedDict>: .*head.weight: "
                                         r"checkpoint \(1000, 168\) vs model \(10, 168\)"):
        emo.load_checkpoint(emo.emo_1m(num_classes=10), sd, head="strict")
    with pytest.warns(UserWarning, match="classifier head"):  # create_model's path warns too
        emo.create_model("emo_1m", pretrained=sd, num_classes=10)
    with warnings.catch_warnings():  # ... unless the caller asks for the backbone only
        warnings.simplefilter("error")
        emo.create_model("emo_1m", pretrained=sd, num_classes=10, pretrained_head="drop")
    with pytest.raises(ValueError, match="head.weight"):
        emo.create_model("emo_1m", pretrained=sd, num_classes=10, pretrained_head="strict")
    with pytest.raises(ValueError, match="head must be one of"):
        emo.load_checkpoint(emo.emo_1m(), sd, head=False)
