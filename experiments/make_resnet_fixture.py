"""Writes tests/testdata/torchvision_resnet.npz: torchvision-layout ResNet-18/50 outputs.

The state dict is torch_weights.random_resnet_state_dict(depth, seed=depth) (seeded NumPy,
so the test rebuilds it without torch and nothing large is committed). This script loads it
into a plain-torch ResNet written here from the architecture torchvision documents
(torchvision/models/resnet.py module names: conv1, bn1, layer{1-4}.{i}.conv{1,2,3} / bn{1,2,3}
/ downsample.{0,1}, fc; v1.5 bottleneck with the stride in conv2), checks that the key names
and shapes are exactly the generator's, and stores eval-mode pooled features and logits on
seeded 32 px inputs. timm's resnet18 / resnet50 use the same names. Needs torch (CPU):

  python experiments/make_resnet_fixture.py [--safetensors_dir DIR]

--safetensors_dir also writes resnet{18,50}.safetensors there (45 / 100 MB: not committed).
"""

import argparse
import os

import numpy as np
import torch
from torch import nn

from comatch_jax.core import torch_weights

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "testdata", "torchvision_resnet.npz")


class Basic(nn.Module):
    expansion = 1

    def __init__(self, cin, width, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = None
        if stride != 1 or cin != width:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, width, 1, stride, bias=False), nn.BatchNorm2d(width)
            )

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, width, stride):
        super().__init__()
        out = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = None
        if stride != 1 or cin != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    def __init__(self, depth, num_classes=1000):
        super().__init__()
        blocks, bottleneck = torch_weights.RESNET_STAGES[depth]
        block = Bottleneck if bottleneck else Basic
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for stage, n in enumerate(blocks):
            layers = []
            for i in range(n):
                layers.append(block(cin, 64 * 2**stage, 2 if stage > 0 and i == 0 else 1))
                cin = 64 * 2**stage * block.expansion
            setattr(self, f"layer{stage + 1}", nn.Sequential(*layers))
        self.fc = nn.Linear(cin, num_classes)

    def features(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        for stage in range(4):
            x = getattr(self, f"layer{stage + 1}")(x)
        return x.mean(dim=(2, 3))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--safetensors_dir", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    out = {}
    for depth in (18, 50):
        state = torch_weights.random_resnet_state_dict(depth, seed=depth)
        model = ResNet(depth).eval()
        theirs = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        ours = {k: tuple(v.shape) for k, v in state.items()}
        assert theirs == ours, sorted(set(theirs) ^ set(ours))[:5]
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
        images = np.random.default_rng(100 + depth).uniform(-2, 2, (2, 32, 32, 3))
        images = images.astype(np.float32)
        with torch.no_grad():
            features = model.features(torch.from_numpy(images).permute(0, 3, 1, 2))
            logits = model.fc(features)
        out[f"resnet{depth}/input"] = images
        out[f"resnet{depth}/features"] = features.numpy()
        out[f"resnet{depth}/logits"] = logits.numpy()
        print(f"resnet{depth}: features std {features.std():.3f}, logits std {logits.std():.3f}")
        if args.safetensors_dir:
            from safetensors.numpy import save_file

            os.makedirs(args.safetensors_dir, exist_ok=True)
            save_file(state, os.path.join(args.safetensors_dir, f"resnet{depth}.safetensors"))
    np.savez_compressed(OUT, **out)
    print("wrote", os.path.abspath(OUT), os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
