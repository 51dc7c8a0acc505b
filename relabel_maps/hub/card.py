"""The README dataset card of a pushed dataset: YAML front matter for the Hub, then a description."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..format import FORMAT_VERSION, version_string
from .paths import PREVIEW_NAME, HubPath, join_in_repo

__all__ = ["dataset_card", "size_category"]

BASE_TAGS = ("relabel-maps", "label-maps", "soft-labels", "knowledge-distillation")
_SIZE_CATEGORIES = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
)


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` bucket for ``n`` records."""
    for bound, label in _SIZE_CATEGORIES:
        if n < bound:
            return label
    return "n>1B"


def _yaml_str(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid YAML scalar


def _compact_json(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _front_matter(license: str, num_records: int, tags: Iterable[str], preview_path: str | None) -> list[str]:
    unique_tags = dict.fromkeys([*BASE_TAGS, *tags])
    lines = ["---", f"license: {_yaml_str(license)}", "task_categories:", "- image-classification"]
    lines += ["size_categories:", f"- {_yaml_str(size_category(num_records))}", "tags:"]
    lines += [f"- {_yaml_str(t)}" for t in unique_tags]
    if preview_path:
        lines += [
            "configs:",
            "- config_name: default",
            "  data_files:",
            "  - split: train",
            f"    path: {_yaml_str(preview_path)}",
        ]
    return [*lines, "---", ""]


def dataset_card(
    metadata: Mapping[str, Any],
    *,
    repo_id: str,
    num_records: int,
    files: Sequence[tuple[str, int]],
    path_in_repo: str = "",
    license: str = "other",
    preview: str | None = PREVIEW_NAME,
    tags: Iterable[str] = (),
) -> str:
    """The README dataset card of the dataset with ``metadata`` and ``files`` (``[(name, size)]``).

    Deterministic: the same dataset gives the same text (so re-pushing uploads nothing).
    """
    lines = _front_matter(license, num_records, tags, join_in_repo(path_in_repo, preview) if preview else None)
    teacher = metadata.get("teacher") or {}
    if not isinstance(teacher, Mapping):
        teacher = {"name": str(teacher)}
    url = str(HubPath(repo_id, None, path_in_repo.strip("/")))
    total = sum(size for _, size in files)
    shards = [name for name, _ in files if name.endswith(".rlm")]
    version = metadata.get("format_version") or version_string(FORMAT_VERSION)
    title = teacher.get("name") or "label maps"
    class_set = f" (`{metadata['class_set']}`)" if metadata.get("class_set") else ""
    lines += [
        f"# {repo_id.split('/')[1]}",
        "",
        f"Top-k label maps (ReLabel-style localized soft labels) from **{title}**, stored in the "
        f"[relabel-maps](https://github.com/relabel-maps/relabel-maps) format {version}: every record holds the "
        "top-k classes and scores at each location of the teacher's output grid, so the soft label of any "
        "crop (box + flip) can be pooled at training time.",
        "",
        "| | |",
        "|---|---|",
        f"| records (images) | {num_records:,} |",
        f"| shards | {len(shards)} |",
        f"| total size | {_human_bytes(total)} ({_human_bytes(total / max(num_records, 1))} per image) |",
        f"| classes | {metadata.get('num_classes', '?')}{class_set} |",
        f"| top-k | {metadata.get('k', '?')} |",
        f"| score kind | {metadata.get('score_kind', '?')} |",
        f"| score encoding | `{_compact_json(metadata.get('encoding', '?'))}` |",
        f"| format version | {version} |",
    ]
    if metadata.get("tool"):
        lines.append(f"| written by | `{_compact_json(metadata['tool'])}` |")
    lines += ["", "## Teacher", ""]
    known = {key: value for key, value in teacher.items() if value is not None}
    if known:
        lines += ["| | |", "|---|---|"]
        lines += [f"| {key} | `{_compact_json(known[key])}` |" for key in sorted(known)]
    else:
        lines.append("Not recorded.")
    namespaced = {
        k: v for k, v in metadata.items() if isinstance(k, str) and "." in k and not isinstance(v, (bytes, bytearray))
    }
    if namespaced:
        provenance = json.dumps(namespaced, indent=2, sort_keys=True, default=str)
        lines += ["", "## Provenance and settings", "", "```json", provenance, "```"]
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "import relabel_maps  # pip install 'relabel-maps[hub]'",
        "",
        f'maps = relabel_maps.open("{url}")  # fetches the index, then shards on first access',
        "key = next(iter(maps))",
        "soft = maps[key].pool((0.1, 0.2, 0.7, 0.9), flip=True)  # (num_classes,) probabilities of a crop",
        "```",
        "",
        "or from the command line:",
        "",
        "```bash",
        f"relabel-maps pull {repo_id} --local-dir maps/",
        "relabel-maps info maps/",
        "```",
        "",
        "## Files",
        "",
    ]
    lines += [f"- `{join_in_repo(path_in_repo, name)}` ({_human_bytes(size)})" for name, size in files]
    if preview:
        lines.append(
            f"- `{join_in_repo(path_in_repo, preview)}`: one row per image (key, grid size, whole-image top-5 classes "
            "and probabilities, top-1 class share) for the dataset viewer"
        )
    lines.append("")
    return "\n".join(lines)
