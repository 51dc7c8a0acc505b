"""The shortest training loop with label maps: every random crop gets its own soft label.

    python examples/minimal.py IMAGE_FOLDER LABEL_MAPS [STEPS]

IMAGE_FOLDER is a torchvision ImageFolder (class/image.jpg); LABEL_MAPS is the file or folder that
``relabel-maps annotate`` wrote for it (keys are the image paths relative to IMAGE_FOLDER).
"""

import sys

import timm
import torch
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from relabel_maps.torch import (
    LabelMapDataset,
    RandomHorizontalFlipWithBox,
    RandomResizedCropWithBox,
    soft_target_cross_entropy,
)

root, maps, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 100
transform = v2.Compose([
    RandomResizedCropWithBox(224), RandomHorizontalFlipWithBox(),  # these record the crop box and the flip
    v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
])
data = LabelMapDataset(ImageFolder(root), maps, transform=transform)  # yields (image, soft label of the crop)
loader = DataLoader(data, batch_size=32, shuffle=True, num_workers=2)
model = timm.create_model("resnet18", num_classes=data.num_classes)  # the labels' classes (the teacher's)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)

step = 0
while step < steps:
    for images, soft in loader:
        loss = soft_target_cross_entropy(model(images), soft)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        print(f"step {step} loss {loss.item():.4f}")
        if step == steps:
            break
