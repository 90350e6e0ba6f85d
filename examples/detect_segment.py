"""EMO as the backbone of a torchvision detector (Faster R-CNN with an FPN) and of a DeepLabV3
segmentation model, fused or not: one training step and one evaluation of each on small
random images. Run from the repository root:
``python -m examples.detect_segment [--fused] [--model emo_1m]``.
Needs torchvision. tests/model/test_detection.py runs the same code."""
import argparse
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.detection import FasterRCNN
from torchvision.models.segmentation import DeepLabV3
from torchvision.models.segmentation.deeplabv3 import DeepLabHead
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

import emo


class EMOWithFPN(nn.Module):
    """EMO's four stages (strides 4-32, features_only: no final norm, no head) under a feature
    pyramid; ``out_channels`` is what torchvision's detectors read. Five maps ('0'-'3' and
    'pool'), as torchvision's default anchors and RoI pooling expect."""

    def __init__(self, name="emo_1m", fused=False, out_channels=64, pretrained=None):
        super().__init__()
        self.body = emo.create_model(name, pretrained, fused=fused, features_only=True)
        self.fpn = FeaturePyramidNetwork(self.body.feature_info.channels(), out_channels,
                                         extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x):
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


class EMOForSegmentation(nn.Module):
    """EMO's last stage (stride 32) as torchvision's segmentation backbones return it."""

    def __init__(self, name="emo_1m", fused=False, pretrained=None):
        super().__init__()
        self.body = emo.create_model(name, pretrained, fused=fused, features_only=True,
                                     out_indices=(3,))
        self.out_channels = self.body.feature_info.channels()[-1]

    def forward(self, x):
        return {"out": self.body(x)[-1]}


def faster_rcnn(name="emo_1m", fused=False, num_classes=3, size=128):
    return FasterRCNN(EMOWithFPN(name, fused), num_classes=num_classes, min_size=size,
                      max_size=size)


def deeplabv3(name="emo_1m", fused=False, num_classes=3):
    backbone = EMOForSegmentation(name, fused)
    return DeepLabV3(backbone, DeepLabHead(backbone.out_channels, num_classes))


def sample_data(n=2, size=128, num_classes=3, seed=0):
    """n random images with two boxes each (labels 1..num_classes-1) and a mask per image."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=g)
    targets = []
    for _ in range(n):
        xy = torch.rand(2, 2, generator=g) * size / 2
        wh = 16 + torch.rand(2, 2, generator=g) * size / 3
        targets.append(dict(boxes=torch.cat([xy, xy + wh], 1).clamp(max=size - 1),
                            labels=torch.randint(1, num_classes, (2,), generator=g)))
    masks = torch.randint(0, num_classes, (n, size, size), generator=g)
    return images, targets, masks


def train_step_detection(model, images, targets, lr=0.01):
    """One SGD step: returns the loss dict (floats)."""
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr,
                          momentum=0.9)
    losses = model(list(images), targets)
    loss = sum(losses.values())
    opt.zero_grad()
    loss.backward()
    opt.step()
    return {k: v.item() for k, v in losses.items()}


def train_step_segmentation(model, images, masks, lr=0.01):
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss = F.cross_entropy(model(images)["out"], masks)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="emo_1m", choices=emo.list_models())
    ap.add_argument("--fused", action="store_true")
    ap.add_argument("--size", type=int, default=128)
    a = ap.parse_args()
    torch.manual_seed(0)
    images, targets, masks = sample_data(size=a.size)

    det = faster_rcnn(a.model, a.fused, size=a.size)
    print("detection train losses:", train_step_detection(det, images, targets))
    det.eval()
    with torch.no_grad():
        out = det(list(images))
    print("detections per image:", [len(o["boxes"]) for o in out])

    seg = deeplabv3(a.model, a.fused)
    print("segmentation train loss:", train_step_segmentation(seg, images, masks))
    seg.eval()
    with torch.no_grad():
        pred = seg(images)["out"].argmax(1)
    print("segmentation prediction:", tuple(pred.shape))


if __name__ == "__main__":
    main()
