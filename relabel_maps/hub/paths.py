"""Hub naming rules: repo ids, ``hf://owner/repo[@revision][/path]`` URLs and paths inside a repo."""

from __future__ import annotations

import dataclasses
import re
from urllib.parse import unquote

from ..errors import InvalidArgumentError
from ..layout import HF_SCHEME, is_hub_url

__all__ = [
    "HF_SCHEME",
    "REPO_TYPE",
    "CARD_NAME",
    "PREVIEW_NAME",
    "HubPath",
    "validate_repo_id",
    "parse_hub_url",
    "as_hub_path",
    "is_commit",
    "join_in_repo",
]

REPO_TYPE = "dataset"
CARD_NAME = "README.md"
PREVIEW_NAME = "preview.parquet"
MAX_NAME_CHARS = 96
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_REPO_ID_RE = re.compile(rf"^{_NAME}/{_NAME}$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


def validate_repo_id(repo_id: str) -> str:
    """Check that ``repo_id`` is ``owner/name`` as the Hub accepts it; return it unchanged."""
    if not isinstance(repo_id, str) or not repo_id:
        raise InvalidArgumentError("a Hub repo id is 'owner/name', got an empty value")
    problem = None
    if repo_id.count("/") != 1:
        problem = "it must be exactly 'owner/name'"
    elif not _REPO_ID_RE.match(repo_id):
        problem = "owner and name use letters, digits, '-', '_' and '.', and start and end with a letter or digit"
    elif "--" in repo_id or ".." in repo_id:
        problem = "'--' and '..' are not allowed"
    elif repo_id.endswith(".git"):
        problem = "it must not end with '.git'"
    elif max(len(p) for p in repo_id.split("/")) > MAX_NAME_CHARS:
        problem = f"owner and name have at most {MAX_NAME_CHARS} characters each"
    if problem:
        raise InvalidArgumentError(f"invalid Hub repo id {repo_id!r}: {problem}")
    return repo_id


def is_commit(revision: str | None) -> bool:
    """Whether ``revision`` is a full commit hash (40 lowercase hex digits) rather than a branch or tag."""
    return revision is not None and _COMMIT_RE.match(revision) is not None


def join_in_repo(folder: str, name: str) -> str:
    """``name`` inside the repo folder ``folder`` (``""`` is the repo root)."""
    folder = folder.strip("/")
    return f"{folder}/{name}" if folder else name


@dataclasses.dataclass(frozen=True)
class HubPath:
    """A parsed ``hf://owner/repo[@revision][/path]``."""

    repo_id: str
    revision: str | None = None
    path: str = ""

    def __str__(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        sub = f"/{self.path}" if self.path else ""
        return f"{HF_SCHEME}{self.repo_id}{rev}{sub}"


def parse_hub_url(url: str) -> HubPath:
    """Parse ``hf://owner/repo[@revision][/path]`` (also ``hf://datasets/owner/repo...``).

    A revision with a slash (``refs/pr/1``) is written URL-encoded: ``@refs%2Fpr%2F1``.
    """
    if not is_hub_url(url):
        raise InvalidArgumentError(f"a Hub path starts with {HF_SCHEME!r}: {url!r}")
    rest = url[len(HF_SCHEME) :].strip("/")
    if rest.startswith("datasets/"):
        rest = rest[len("datasets/") :]
    parts = rest.split("/")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise InvalidArgumentError(f"invalid Hub path {url!r}: expected hf://owner/repo[@revision][/path]")
    owner, name = parts[0], parts[1]
    revision = None
    if "@" in name:
        name, revision = name.split("@", 1)
        revision = unquote(revision)
        if not revision:
            raise InvalidArgumentError(f"invalid Hub path {url!r}: empty revision after '@'")
    path = "/".join(p for p in parts[2:] if p)
    if any(p in (".", "..") for p in path.split("/")):
        raise InvalidArgumentError(f"invalid Hub path {url!r}: '.' and '..' are not allowed")
    return HubPath(validate_repo_id(f"{owner}/{name}"), revision, path)


def as_hub_path(repo: str | HubPath, revision: str | None = None) -> HubPath:
    """``repo`` (``owner/name``, an ``hf://`` URL or a :class:`HubPath`), with ``revision`` if given."""
    if isinstance(repo, HubPath):
        loc = repo
    elif is_hub_url(repo):
        loc = parse_hub_url(repo)
    else:
        loc = HubPath(validate_repo_id(repo))
    if revision is not None:
        loc = dataclasses.replace(loc, revision=revision)
    return loc
