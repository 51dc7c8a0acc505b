"""Train a timm model on an ImageFolder with label-map soft targets, pooled on the training device.

    python examples/train.py --data imagenet/train --maps maps/ --model resnet50 --device cuda \\
        --batch-size 256 --workers 8 --epochs 90

Data workers decode images, draw random crops and flips (the transforms record each crop's box) and
read each image's sparse top-k label map; the training step moves the batch of maps to the device
and pools every crop's soft label there with :func:`relabel_maps.torch.pool_batch`. CutMix and
Mixup pool the pasted and base regions over their own boxes.

``--class-map FILE`` trains on the ImageFolder's own classes: it maps the teacher's classes onto them
(:mod:`relabel_maps.classmap`; e.g. ImageNet's cat breeds onto ``cat``). ``--alpha`` mixes in the
ImageFolder's hard labels, and only where they name the classes the soft labels are over: the class
map's, or the teacher's (its class names, or ImageNet's WordNet-id folders); anything else is refused.

    python examples/train.py --data photos/ --maps maps.rlm --class-map classes.csv --model resnet18 --alpha 0.3
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import timm
import torch
from timm.data import resolve_data_config
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

import relabel_maps
from relabel_maps.classmap import ClassMapError, hard_label_index
from relabel_maps.pooling import FILL_MODES
from relabel_maps.torch import (
    LabelMapDataset,
    LabelMapMixup,
    RandomHorizontalFlipWithBox,
    RandomResizedCropWithBox,
    collate_label_maps,
    soft_target_cross_entropy,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--data", required=True, help="ImageFolder root (class/image files)")
    p.add_argument("--maps", required=True, help="label-map file, folder of shards or hf:// path")
    p.add_argument("--class-map", default=None, help="CSV/JSON file mapping the teacher's classes onto the data's")
    p.add_argument("--model", default="resnet50", help="timm model name")
    p.add_argument("--img-size", type=int, default=None, help="training crop size (default: the model's)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--steps", type=int, default=None, help="stop after this many steps (overrides --epochs)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast on CUDA")
    p.add_argument("--mixup", type=float, default=0.8, help="Mixup alpha (0 disables)")
    p.add_argument("--cutmix", type=float, default=1.0, help="CutMix alpha (0 disables)")
    p.add_argument("--mix-prob", type=float, default=1.0, help="probability of mixing a batch")
    p.add_argument("--alpha", type=float, default=0.0,
                   help="weight of the ImageFolder's one-hot label in the target (its classes must be the labels')")
    p.add_argument("--fill", default=None, choices=FILL_MODES, help="pooling fill mode")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="save the final state_dict here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    with relabel_maps.open(args.maps) as maps:
        metadata = dict(maps.metadata)
    folder = ImageFolder(args.data)
    probe = LabelMapDataset(folder, args.maps, class_map=args.class_map)
    num_classes = probe.num_classes  # the class map's classes, else the teacher's
    if args.alpha > 0:  # the ImageFolder's labels must index the soft labels' classes
        try:
            index = hard_label_index(folder.classes, metadata=metadata, class_map=probe.class_map)
        except ClassMapError as exc:
            sys.exit(f"--alpha {args.alpha} mixes in the ImageFolder's labels, but {exc}")
        folder = ImageFolder(args.data, target_transform=index.tolist().__getitem__)

    model = timm.create_model(args.model, num_classes=num_classes).to(device)
    cfg = resolve_data_config({}, model=model)
    size = args.img_size or cfg["input_size"][-1]
    transform = v2.Compose([
        RandomResizedCropWithBox(size, interpolation=v2.InterpolationMode.BILINEAR),
        RandomHorizontalFlipWithBox(),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(cfg["mean"], cfg["std"]),
    ])
    data = LabelMapDataset(folder, args.maps, transform=transform, mode="map", return_target=True,
                           class_map=probe.class_map)
    loader = DataLoader(
        data, batch_size=args.batch_size, shuffle=True, drop_last=len(data) >= args.batch_size,
        num_workers=args.workers, collate_fn=collate_label_maps, pin_memory=device.type == "cuda",
        persistent_workers=args.workers > 0,
    )
    mixer = LabelMapMixup(args.mixup, args.cutmix, prob=args.mix_prob, fill=args.fill, temperature=args.temperature)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    total = args.steps or args.epochs * len(loader)
    schedule = lambda s: min(1.0, (s + 1) / max(args.warmup_steps, 1)) * 0.5 * (1 + math.cos(math.pi * s / total))  # noqa: E731
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    model.train()
    step, seen, start = 0, 0, time.perf_counter()
    while step < total:
        for images, labels, target in loader:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)  # sparse top-k maps + boxes + flips
            if args.alpha > 0:  # soft, hard: (B, num_classes) on `device`
                images, soft, hard = mixer(images, labels, target)
            else:
                (images, soft), hard = mixer(images, labels), None
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp and device.type == "cuda"):
                logits = model(images)
            loss = soft_target_cross_entropy(logits.float(), soft, hard, alpha=args.alpha)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            seen += images.shape[0]
            if step % args.log_every == 0 or step == total:
                rate = seen / (time.perf_counter() - start)
                lr = scheduler.get_last_lr()[0]
                print(f"step {step}/{total} loss {loss.item():.4f} lr {lr:.2e} {rate:.1f} img/s", flush=True)
            if step == total:
                break
    if args.output:
        torch.save(model.state_dict(), args.output)
        print(f"saved {args.output}")


if __name__ == "__main__":
    main()
