"""Train a timm model from WebDataset tar shards with label-map soft targets.

    python examples/train_wds.py --shards 'imagenet/imagenet1k-train-{0000..1023}.tar' --maps maps/ \\
        --model resnet50 --device cuda --batch-size 256 --workers 8 --steps 100000

The maps were annotated from the same shards (``relabel-maps annotate 'imagenet/...{0000..1023}.tar'
maps/ -t efficientnet_l2``), so each sample's ``__key__`` is its key. The pipeline streams the shards
(split between nodes and DataLoader workers by whole shards), shuffles samples in a buffer, decodes,
draws a random crop and flip whose box the transforms record, and adds the sample's sparse top-k
map (:class:`relabel_maps.torch.LabelMapStage`); batches of maps are pooled on the training device
(:func:`relabel_maps.torch.pool_batch`, through :class:`~relabel_maps.torch.LabelMapMixup` with CutMix
and Mixup). Shards on the Hub stream too: ``--shards 'pipe:curl -sL https://huggingface.co/datasets/
OWNER/NAME/resolve/main/train-{0000..0099}.tar'`` (add ``-H "Authorization: Bearer $HF_TOKEN"``).
"""

from __future__ import annotations

import argparse
import math
import time

import timm
import torch
import webdataset as wds
from timm.data import resolve_data_config
from torchvision.transforms import v2

import relabel_maps
from relabel_maps.pooling import FILL_MODES
from relabel_maps.torch import (
    LabelMapMixup,
    LabelMapStage,
    RandomHorizontalFlipWithBox,
    RandomResizedCropWithBox,
    collate_label_maps,
    soft_target_cross_entropy,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--shards", required=True, help="tar shards: a brace pattern, a file, or a pipe: URL")
    p.add_argument("--maps", required=True, help="label-map file, folder of shards or hf:// path")
    p.add_argument("--model", default="resnet50", help="timm model name")
    p.add_argument("--img-size", type=int, default=None, help="training crop size (default: the model's)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, required=True, help="training steps (the stream has no epochs)")
    p.add_argument("--shuffle", type=int, default=5000, help="sample shuffle buffer (0 disables)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast on CUDA")
    p.add_argument("--mixup", type=float, default=0.8, help="Mixup alpha (0 disables)")
    p.add_argument("--cutmix", type=float, default=1.0, help="CutMix alpha (0 disables)")
    p.add_argument("--fill", default=None, choices=FILL_MODES, help="pooling fill mode")
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
        num_classes = int(maps.metadata["num_classes"])

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
    stage = LabelMapStage(args.maps, transform=transform, mode="map")  # opens the maps in each worker
    data = wds.WebDataset(args.shards, shardshuffle=100, nodesplitter=wds.split_by_node, empty_check=False)
    if args.shuffle:
        data = data.shuffle(args.shuffle)
    data = (data.decode("pil").select(stage.has_label).map(stage).to_tuple("image", "label")
            .batched(args.batch_size, collation_fn=collate_label_maps, partial=False))
    loader = wds.WebLoader(data, batch_size=None, num_workers=args.workers, pin_memory=device.type == "cuda")

    mixer = LabelMapMixup(args.mixup, args.cutmix, fill=args.fill)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    total = args.steps
    schedule = lambda s: min(1.0, (s + 1) / max(args.warmup_steps, 1)) * 0.5 * (1 + math.cos(math.pi * s / total))  # noqa: E731
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    model.train()
    step, seen, start = 0, 0, time.perf_counter()
    while step < total:  # the stream restarts when the shards run out
        for images, labels in loader:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)  # sparse top-k maps + boxes + flips
            images, soft = mixer(images, labels)  # soft: (B, C) pooled on `device`
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp and device.type == "cuda"):
                logits = model(images)
            loss = soft_target_cross_entropy(logits.float(), soft)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            seen += images.shape[0]
            if step % args.log_every == 0 or step == total:
                rate = seen / (time.perf_counter() - start)
                print(f"step {step}/{total} loss {loss.item():.4f} lr {scheduler.get_last_lr()[0]:.2e} "
                      f"{rate:.1f} img/s", flush=True)
            if step == total:
                break
    if args.output:
        torch.save(model.state_dict(), args.output)
        print(f"saved {args.output}")


if __name__ == "__main__":
    main()
