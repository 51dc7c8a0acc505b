"""Hugging Face Hub integration, fully offline.

* push is tested at the huggingface_hub API boundary with a fake ``HfApi`` (exact files, card YAML,
  commit operations, re-push of unchanged data uploads nothing);
* ``relabel_maps.open("hf://...")`` and pull read a hand-built HF cache (the layout of
  huggingface_hub's cache docs: ``datasets--owner--name/{blobs,snapshots/<commit>,refs}``) with
  offline mode on — in-process and in a subprocess with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

hf = pytest.importorskip("huggingface_hub")
pytest.importorskip("pyarrow")
yaml = pytest.importorskip("yaml")

import relabel_maps  # noqa: E402
from relabel_maps import hub  # noqa: E402
from relabel_maps.errors import InvalidArgumentError  # noqa: E402
from relabel_maps.hub.card import size_category  # noqa: E402

NUM_CLASSES = 30
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def make_dataset(path, n: int = 7, *, seed: int = 0, max_records: int | None = 3, with_names: bool = True):
    rng = np.random.default_rng(seed)
    names = [f"c{i}" for i in range(NUM_CLASSES)] if with_names else None
    with relabel_maps.Writer(
        path, num_classes=NUM_CLASSES, k=2, encoding="f16", class_names=names, class_set="toy-30",
        teacher={"name": "toy-teacher", "input_size": [64, 64]}, max_records=max_records,
        metadata={"example.note": "unit test"},
    ) as w:
        for i in range(n):
            idx = np.stack([rng.choice(NUM_CLASSES, 2, replace=False) for _ in range(12)], -1).reshape(2, 3, 4)
            scores = -np.sort(-rng.normal(size=(2, 3, 4)).astype(np.float32), axis=0)
            w.add(f"img{i}.jpg", idx, scores)
    return str(path)


# ------------------------------------------------------------------------------------- fake HfApi
LFS_SUFFIXES = (".rlm", ".parquet")


def git_blob_sha1(data: bytes) -> str:
    """The git blob id of ``data`` (what the Hub lists for a non-LFS file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHfApi:
    """The part of ``huggingface_hub.HfApi`` that push uses, backed by a dict of files."""

    def __init__(self, token=None, files=None):
        self.files: dict[str, bytes] = dict(files or {})
        self.calls: list[tuple] = []
        self.commits: list[dict] = []
        self.exists = bool(files)

    def create_repo(self, repo_id, *, repo_type=None, private=None, exist_ok=False, **kw):
        self.calls.append(("create_repo", repo_id, repo_type, private, exist_ok))
        if not self.exists:
            self.files[".gitattributes"] = b"*.rlm filter=lfs diff=lfs merge=lfs -text\n"
            self.exists = True
        return f"https://huggingface.co/datasets/{repo_id}"

    def create_branch(self, repo_id, *, branch, repo_type=None, exist_ok=False, **kw):
        self.calls.append(("create_branch", repo_id, branch, repo_type, exist_ok))

    def list_repo_tree(self, repo_id, path_in_repo=None, *, recursive=False, repo_type=None, revision=None, **kw):
        self.calls.append(("list_repo_tree", repo_id, recursive, repo_type, revision))
        from huggingface_hub.hf_api import RepoFile

        for path, data in sorted(self.files.items()):
            git = git_blob_sha1(data)
            lfs = None
            if path.endswith(LFS_SUFFIXES):
                lfs = {"size": len(data), "oid": hashlib.sha256(data).hexdigest(), "pointerSize": 130}
                git = hashlib.sha1(b"pointer " + path.encode()).hexdigest()  # pointer blob, not the content
            yield RepoFile(path=path, size=len(data), oid=git, lfs=lfs)

    def create_commit(self, repo_id, operations, *, commit_message, repo_type=None, revision=None, **kw):
        ops = list(operations)
        self.calls.append(("create_commit", repo_id, repo_type, revision))
        record = {"message": commit_message, "add": [], "delete": []}
        for op in ops:
            if isinstance(op, hf.CommitOperationAdd):
                src = op.path_or_fileobj
                data = src if isinstance(src, bytes) else open(src, "rb").read()
                self.files[op.path_in_repo] = data
                record["add"].append(op.path_in_repo)
            elif isinstance(op, hf.CommitOperationDelete):
                del self.files[op.path_in_repo]
                record["delete"].append(op.path_in_repo)
            else:  # pragma: no cover
                raise AssertionError(f"unexpected operation {op!r}")
        self.commits.append(record)

        class Info:
            commit_url = f"https://huggingface.co/datasets/{repo_id}/commit/{COMMIT}"

        return Info()


def card_yaml(text: str) -> dict:
    assert text.startswith("---\n")
    front, _body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(front)


# ----------------------------------------------------------------------------------------- naming
@pytest.mark.parametrize("repo", ["owner/name", "Owner-1/data_set.v2", "a/b"])
def test_validate_repo_id_ok(repo):
    assert hub.validate_repo_id(repo) == repo


@pytest.mark.parametrize(
    "repo", ["", "name", "a/b/c", "-a/b", "a/b-", "a--b/c", "a/b..c", "a/b.git", "a b/c", "a/" + "x" * 97, "a/ü"]
)
def test_validate_repo_id_rejects(repo):
    with pytest.raises(InvalidArgumentError, match="repo id"):
        hub.validate_repo_id(repo)


def test_parse_hub_url():
    p = hub.parse_hub_url("hf://owner/repo")
    assert (p.repo_id, p.revision, p.path) == ("owner/repo", None, "")
    p = hub.parse_hub_url("hf://datasets/owner/repo@v1.0/sub/dir/")
    assert (p.repo_id, p.revision, p.path) == ("owner/repo", "v1.0", "sub/dir")
    assert hub.parse_hub_url("hf://o/r@refs%2Fpr%2F3").revision == "refs/pr/3"
    assert str(hub.parse_hub_url("hf://o/r@main/x")) == "hf://o/r@main/x"
    for bad in ("hf://owner", "hf://o/r@", "hf://o/r/../x", "s3://o/r", "hf://bad--owner/r"):
        with pytest.raises(InvalidArgumentError):
            hub.parse_hub_url(bad)


# ------------------------------------------------------------------------------------------- push
def test_push_uploads_exact_files_card_and_preview(tmp_path):
    path = make_dataset(tmp_path / "maps")
    api = FakeHfApi()
    result = hub.push(path, "me/toy-maps", api=api, license="apache-2.0", tags=["toy"])
    expected = [
        "maps.index.json",
        "maps-00001-of-00003.rlm",
        "maps-00002-of-00003.rlm",
        "maps-00003-of-00003.rlm",
        "README.md",
        "preview.parquet",
    ]
    assert result.uploaded == expected and result.unchanged == [] and result.deleted == []
    assert api.calls[0] == ("create_repo", "me/toy-maps", "dataset", None, True)
    assert [c[0] for c in api.calls] == ["create_repo", "list_repo_tree", "create_commit"]
    assert api.commits[0]["add"] == expected and api.commits[0]["delete"] == []
    for name in expected[:4]:
        assert api.files[name] == open(os.path.join(path, name), "rb").read()

    card = api.files["README.md"].decode()
    meta = card_yaml(card)
    assert meta["license"] == "apache-2.0"
    assert meta["task_categories"] == ["image-classification"]
    assert meta["size_categories"] == ["n<1K"]
    assert meta["tags"][:4] == ["relabel-maps", "label-maps", "soft-labels", "knowledge-distillation"]
    assert "toy" in meta["tags"]
    preview_files = [{"split": "train", "path": "preview.parquet"}]
    assert meta["configs"] == [{"config_name": "default", "data_files": preview_files}]
    assert 'relabel_maps.open("hf://me/toy-maps")' in card
    assert "toy-teacher" in card and "| format version | 1.1 |" in card and "| records (images) | 7 |" in card
    assert "example.note" in card  # namespaced provenance keys are shown

    import io

    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(api.files["preview.parquet"]))
    assert table.num_rows == 7 and table.column_names[0] == "key"


def test_repush_unchanged_uploads_nothing(tmp_path):
    path = make_dataset(tmp_path / "maps")
    api = FakeHfApi()
    hub.push(path, "me/toy-maps", api=api)
    n_commits = len(api.commits)
    result = hub.push(path, "me/toy-maps", api=api)
    assert result.uploaded == [] and result.deleted == [] and not result.changed
    assert len(result.unchanged) == 6
    assert len(api.commits) == n_commits  # no commit at all
    assert api.calls[-1][0] == "list_repo_tree"


def test_repush_changed_uploads_only_changes_and_deletes_stale_shards(tmp_path):
    path = make_dataset(tmp_path / "maps")
    api = FakeHfApi()
    hub.push(path, "me/toy-maps", api=api)
    # the same first 6 records in 2 shards: every shard is renamed (-of-00002), the old ones are stale
    newpath = make_dataset(tmp_path / "v2" / "maps", n=6)
    result = hub.push(newpath, "me/toy-maps", api=api)
    assert sorted(result.deleted) == [
        "maps-00001-of-00003.rlm", "maps-00002-of-00003.rlm", "maps-00003-of-00003.rlm",
    ]
    assert result.uploaded == [
        "maps.index.json", "maps-00001-of-00002.rlm", "maps-00002-of-00002.rlm", "README.md", "preview.parquet",
    ]
    assert api.commits[-1]["delete"] == sorted(result.deleted)
    assert sorted(p for p in api.files if p.endswith(".rlm")) == ["maps-00001-of-00002.rlm", "maps-00002-of-00002.rlm"]


def test_push_single_file_into_subfolder_keeps_other_files(tmp_path):
    path = make_dataset(tmp_path / "one.rlm", max_records=None)
    api = FakeHfApi(files={"other/keep.rlm": b"x", "notes.txt": b"hello"})
    result = hub.push(path, "me/toy-maps", api=api, path_in_repo="v1", preview=False, delete_stale=True)
    assert result.uploaded == ["v1/one.rlm", "README.md"]
    assert result.deleted == []
    assert "other/keep.rlm" in api.files and "notes.txt" in api.files
    meta = card_yaml(api.files["README.md"].decode())
    assert "configs" not in meta
    assert 'relabel_maps.open("hf://me/toy-maps/v1")' in api.files["README.md"].decode()


def test_push_to_branch_creates_it(tmp_path):
    api = FakeHfApi()
    hub.push(make_dataset(tmp_path / "m"), "me/x", api=api, revision="v2")
    assert ("create_branch", "me/x", "v2", "dataset", True) in api.calls
    assert api.calls[-1] == ("create_commit", "me/x", "dataset", "v2")


def test_push_validates_before_network(tmp_path):
    api = FakeHfApi()
    with pytest.raises(InvalidArgumentError):
        hub.push(make_dataset(tmp_path / "m"), "bad repo", api=api)
    with pytest.raises(FileNotFoundError):
        hub.push(tmp_path / "missing", "me/x", api=api)
    assert api.calls == []


def test_card_is_deterministic(tmp_path):
    path = make_dataset(tmp_path / "maps")
    a = hub.plan_push(path, "me/x")
    b = hub.plan_push(path, "me/x")
    assert [(u.path_in_repo, u.sha256) for u in a] == [(u.path_in_repo, u.sha256) for u in b]


def test_size_categories():
    assert size_category(999) == "n<1K"
    assert size_category(1_281_167) == "1M<n<10M"


# ----------------------------------------------------------------------------- HF cache (offline)
def populate_cache(cache, repo_id: str, files: dict[str, bytes], *, commit: str = COMMIT, refs=("main",)) -> str:
    """Lay out ``files`` in an HF cache exactly as huggingface_hub does (blobs + relative symlinks)."""
    owner, name = repo_id.split("/")
    root = os.path.join(cache, f"datasets--{owner}--{name}")
    for path, data in files.items():
        if path.endswith(LFS_SUFFIXES):
            etag = hashlib.sha256(data).hexdigest()
        else:
            etag = git_blob_sha1(data)
        blob = os.path.join(root, "blobs", etag)
        os.makedirs(os.path.dirname(blob), exist_ok=True)
        with open(blob, "wb") as fh:
            fh.write(data)
        link = os.path.join(root, "snapshots", commit, *path.split("/"))
        os.makedirs(os.path.dirname(link), exist_ok=True)
        if not os.path.lexists(link):
            os.symlink(os.path.relpath(blob, os.path.dirname(link)), link)
    os.makedirs(os.path.join(root, "refs"), exist_ok=True)
    for ref in refs:
        with open(os.path.join(root, "refs", ref), "w") as fh:
            fh.write(commit)
    return root


def dataset_files(path: str, prefix: str = "") -> dict[str, bytes]:
    return {prefix + name: open(local, "rb").read() for name, local in hub.local_dataset_files(path)}


@pytest.fixture()
def offline(tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(hf.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return str(cache)


def assert_same(a, b):
    assert len(a) == len(b) and list(a) == list(b)
    assert a.metadata == b.metadata
    for key in a:
        assert a[key] == b[key]


def test_open_hf_from_offline_cache_fetches_shards_lazily(tmp_path, offline, monkeypatch):
    path = make_dataset(tmp_path / "maps")
    populate_cache(offline, "me/toy", dataset_files(path))
    fetched = []
    real = hf.hf_hub_download

    def spy(repo_id, filename, **kw):
        fetched.append(filename)
        return real(repo_id, filename, **kw)

    monkeypatch.setattr(hf, "hf_hub_download", spy)
    with relabel_maps.open("hf://me/toy") as maps:
        assert len(maps) == 7 and fetched == []  # the index alone gives the length
        key, lm = maps.at(0)
        assert fetched == ["maps-00001-of-00003.rlm"]
        with relabel_maps.open(path) as local:
            assert lm == local.at(0)[1] and key == local.at(0)[0]
            assert_same(maps, local)
    assert sorted(set(fetched)) == [f"maps-0000{i}-of-00003.rlm" for i in (1, 2, 3)]


def test_open_hf_revision_subfolder_and_single_file(tmp_path, offline):
    path = make_dataset(tmp_path / "maps")
    one = make_dataset(tmp_path / "one.rlm", max_records=None, seed=5)
    files = dataset_files(path, "v1/")
    files["single/one.rlm"] = open(one, "rb").read()
    files["README.md"] = b"card"
    populate_cache(offline, "me/toy", files, refs=("main", "v1.0"))
    with relabel_maps.open(path) as local:
        for url in ("hf://me/toy/v1", "hf://me/toy@v1.0/v1", f"hf://me/toy@{COMMIT}/v1", "hf://me/toy/v1/maps.index.json"):
            with relabel_maps.open(url) as maps:
                assert_same(maps, local)
    with relabel_maps.open(one) as local:
        for url in ("hf://me/toy/single", "hf://me/toy/single/one.rlm"):
            with relabel_maps.open(url) as maps:
                assert_same(maps, local)


def test_open_hf_not_cached_offline_is_clear_error(offline):
    with pytest.raises(OSError):
        relabel_maps.open("hf://me/not-there")
    with pytest.raises(InvalidArgumentError, match="repo id"):
        relabel_maps.open("hf://bad--id/x")


def test_open_hf_pickles_for_workers(tmp_path, offline):
    import pickle

    path = make_dataset(tmp_path / "maps")
    populate_cache(offline, "me/toy", dataset_files(path))
    with relabel_maps.open("hf://me/toy") as maps:
        clone = pickle.loads(pickle.dumps(maps))
        assert clone.at(4) [0] == maps.at(4)[0] and clone.at(4)[1] == maps.at(4)[1]
        clone.close()


def test_pull_offline_from_cache(tmp_path, offline):
    path = make_dataset(tmp_path / "maps")
    populate_cache(offline, "me/toy", {**dataset_files(path), "README.md": b"card"})
    local = hub.pull("me/toy")
    assert os.path.basename(local) == COMMIT
    with relabel_maps.open(local) as maps, relabel_maps.open(path) as orig:
        assert_same(maps, orig)


def test_cli_info_and_pull_offline(tmp_path, offline):
    from click.testing import CliRunner

    from relabel_maps_cli.main import main

    path = make_dataset(tmp_path / "maps")
    populate_cache(offline, "me/toy", dataset_files(path))
    runner = CliRunner()
    result = runner.invoke(main, ["info", "hf://me/toy", "--json"])
    assert result.exit_code == 0, result.output
    assert '"records": 7' in result.output
    result = runner.invoke(main, ["verify", "hf://me/toy", "--json"])
    assert result.exit_code == 0 and '"ok": true' in result.output
    result = runner.invoke(main, ["pull", "me/toy"])
    assert result.exit_code == 0 and result.output.strip().endswith(COMMIT)
    result = runner.invoke(main, ["info", "hf://me/missing"])
    assert result.exit_code == 1 and result.output.startswith("Error: ") and "Traceback" not in result.output


def test_open_hf_in_subprocess_with_offline_env(tmp_path):
    path = make_dataset(tmp_path / "maps")
    cache = tmp_path / "cache"
    populate_cache(str(cache), "me/toy", dataset_files(path))
    code = (
        "import relabel_maps, sys\n"
        "m = relabel_maps.open('hf://me/toy')\n"
        "print(len(m), m.at(6)[0], float(m['img3.jpg'].pool().sum()))\n"
        "assert 'torch' not in sys.modules\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    n, last, total = out.stdout.split()
    assert n == "7" and last == "img6.jpg" and abs(float(total) - 1.0) < 1e-5


# ------------------------------------------------------------------------- CLI push with fake api
def test_cli_push_twice_and_token_never_printed(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from relabel_maps_cli.main import main

    path = make_dataset(tmp_path / "maps")
    api = FakeHfApi()
    tokens = []

    def factory(token=None, **kw):
        tokens.append(token)
        return api

    monkeypatch.setattr(hf, "HfApi", factory)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_do_not_print")
    runner = CliRunner()
    result = runner.invoke(main, ["push", path, "me/toy-maps", "--license", "cc-by-4.0"])
    assert result.exit_code == 0, result.output
    assert "uploaded  maps-00001-of-00003.rlm" in result.output and "6 uploaded" in result.output
    assert card_yaml(api.files["README.md"].decode())["license"] == "cc-by-4.0"
    result = runner.invoke(main, ["push", path, "me/toy-maps", "--license", "cc-by-4.0"])
    assert result.exit_code == 0 and "up to date" in result.output
    assert len(api.commits) == 1
    result = runner.invoke(main, ["push", path, "me/toy-maps", "--dry-run"])
    assert result.exit_code == 0 and "would upload README.md" in result.output
    assert tokens == [None, None]  # huggingface_hub finds the token itself
    assert "hf_secret_do_not_print" not in result.output


def test_push_refuses_loose_files_without_index(tmp_path):
    folder = tmp_path / "loose"
    folder.mkdir()
    make_dataset(folder / "a.rlm", max_records=None)
    make_dataset(folder / "b.rlm", max_records=None, seed=1)
    api = FakeHfApi()
    with pytest.raises(InvalidArgumentError, match="no index JSON"):
        hub.push(folder, "me/x", api=api)
    assert api.calls == []


def test_hub_modules_import_lazily():
    code = (
        "import sys, relabel_maps, relabel_maps.hub, relabel_maps.export, relabel_maps.merge, relabel_maps.convert\n"
        "print(sorted(m for m in ('huggingface_hub', 'pyarrow', 'torch') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"


def test_push_then_open_round_trip(tmp_path, offline):
    path = make_dataset(tmp_path / "maps")
    api = FakeHfApi()
    hub.push(path, "me/round", api=api, path_in_repo="l2-475")
    populate_cache(offline, "me/round", api.files)
    with relabel_maps.open("hf://me/round/l2-475") as remote, relabel_maps.open(path) as local:
        assert_same(remote, local)
        assert remote.verify() == []
