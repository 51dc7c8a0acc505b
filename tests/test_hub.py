"""Hugging Face Hub integration, against a local Hub server (``tests/hub_server.py``, fixture ``hub_server``).

huggingface_hub's real client talks HTTP to the server: in this process (its endpoint patched) and in
subprocesses (``HF_ENDPOINT``). Faults are injected on the server: HTTP 5xx, dropped connections, lost
answers, cut downloads, a pusher killed in the middle of its uploads. Pure helpers (repo ids, URLs,
the dataset card, the retry policy) are tested directly.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing as mp
import os
import pickle
import subprocess
import sys
import threading

import numpy as np
import pytest

hf = pytest.importorskip("huggingface_hub")
pytest.importorskip("pyarrow")
yaml = pytest.importorskip("yaml")

import relabel_maps  # noqa: E402
from relabel_maps import hub  # noqa: E402
from relabel_maps.errors import (  # noqa: E402
    HubAuthError,
    HubError,
    HubNetworkError,
    HubNotFoundError,
    InvalidArgumentError,
    RelabelMapsError,
)
from relabel_maps.hub.card import size_category  # noqa: E402
from relabel_maps.hub.retry import DELAY_ENV, RETRIES_ENV, RetryPolicy  # noqa: E402

NUM_CLASSES = 30
LFS_PUT = r"^PUT /lfs/"
PUSHED = [
    "maps.index.json",
    "maps-00001-of-00003.rlm",
    "maps-00002-of-00003.rlm",
    "maps-00003-of-00003.rlm",
    "README.md",
    "preview.parquet",
]


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


def card_yaml(text: str) -> dict:
    assert text.startswith("---\n")
    front, _body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(front)


def assert_same(a, b):
    assert len(a) == len(b) and list(a) == list(b)
    assert a.metadata == b.metadata
    for key in a:
        assert a[key] == b[key]


def fingerprint(maps) -> str:
    """A digest of every record (key, indices, scores), in order: tells two versions of a dataset apart."""
    digest = hashlib.sha256()
    for key in maps:
        lm = maps[key]
        digest.update(key.encode() + np.ascontiguousarray(lm.indices).tobytes() + lm.scores.astype("<f4").tobytes())
    return digest.hexdigest()


def local_fingerprint(path: str) -> str:
    with relabel_maps.open(path) as maps:
        return fingerprint(maps)


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``relabel-maps ARGS`` in a subprocess: huggingface_hub there reads HF_ENDPOINT from the environment."""
    return subprocess.run(
        [sys.executable, "-m", "relabel_maps_cli", *args],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=120,
    )


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


# ------------------------------------------------------------------------------ card, retry policy
def test_card_is_deterministic(tmp_path):
    path = make_dataset(tmp_path / "maps")
    a = hub.plan_push(path, "me/x")
    b = hub.plan_push(path, "me/x")
    assert [(u.path_in_repo, u.sha256) for u in a] == [(u.path_in_repo, u.sha256) for u in b]


def test_size_categories():
    assert size_category(999) == "n<1K"
    assert size_category(1_281_167) == "1M<n<10M"


def test_retry_policy_schedule_and_environment(monkeypatch):
    policy = RetryPolicy(attempts=5, delay=0.5, max_delay=3.0)
    assert [policy.wait(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 3.0]  # doubling, capped
    monkeypatch.setenv(RETRIES_ENV, "2")
    monkeypatch.setenv(DELAY_ENV, "0.25")
    assert RetryPolicy.from_env() == RetryPolicy(attempts=2, delay=0.25, max_delay=RetryPolicy.max_delay)
    monkeypatch.setenv(RETRIES_ENV, "many")
    with pytest.raises(InvalidArgumentError, match=RETRIES_ENV):
        RetryPolicy.from_env()
    for bad in ({"attempts": 0}, {"delay": -1.0}, {"delay": 5.0, "max_delay": 1.0}):
        with pytest.raises(InvalidArgumentError):
            RetryPolicy(**bad)


def test_failures_are_classified_through_wrappers():
    """huggingface_hub wraps failures (a thread's upload error in a RuntimeError, a 5xx in a cache miss):
    the cause chain decides the typed error and whether to retry."""
    httpx2 = pytest.importorskip("httpx2")  # the HTTP stack of this huggingface_hub release
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    from relabel_maps.hub.failures import classify

    response = httpx2.Response(503, request=httpx2.Request("PUT", "http://hub.test/lfs/abc"), json={"error": "busy"})
    upload = RuntimeError("Error while uploading 'maps-00001-of-00003.rlm' to the Hub.")
    upload.__cause__ = HfHubHTTPError("503 Server Error.", response=response, server_message="busy")
    miss = LocalEntryNotFoundError("cannot find the requested files in the local cache")
    miss.__cause__ = httpx2.ReadError("connection reset by peer")
    for exc in (upload, miss, httpx2.ConnectTimeout("slow")):
        error, transient = classify(exc, "hf://me/toy")
        assert type(error) is HubNetworkError and transient and str(error).startswith("hf://me/toy: ")
    assert "HTTP 503: busy" in str(classify(upload, "hf://me/toy")[0])
    for local in (FileNotFoundError("maps/"), HubNotFoundError("already typed"), ValueError("ours")):
        assert classify(local, "hf://me/toy") is None  # not a Hub failure: left as it is


def test_hub_modules_import_lazily():
    code = (
        "import sys, relabel_maps, relabel_maps.hub, relabel_maps.export, relabel_maps.merge, relabel_maps.convert\n"
        "print(sorted(m for m in ('huggingface_hub', 'pyarrow', 'torch') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------------- push
def test_push_uploads_exact_files_card_and_preview(tmp_path, hub_server):
    path = make_dataset(tmp_path / "maps")
    result = hub.push(path, "me/toy-maps", license="apache-2.0", tags=["toy"])
    assert result.uploaded == PUSHED and result.unchanged == [] and result.deleted == []
    head = hub_server.head("me/toy-maps")
    assert result.commit_url == f"{hub_server.endpoint}/datasets/me/toy-maps/commit/{head}"
    assert len(hub_server.history("me/toy-maps")) == 2  # the repo's first commit, then one with everything
    files = hub_server.files("me/toy-maps")
    assert sorted(files) == sorted([*PUSHED, ".gitattributes"])
    for name in PUSHED[:4]:
        assert files[name] == open(os.path.join(path, name), "rb").read()
    stored = hub_server.repos["me/toy-maps"].resolve("main").files
    assert sorted(p for p, blob in stored.items() if blob.lfs) == sorted(PUSHED[1:4] + ["preview.parquet"])
    assert hub_server.count(LFS_PUT, "200") == 4  # the three shards and the preview, once each

    card = files["README.md"].decode()
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

    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(files["preview.parquet"]))
    assert table.num_rows == 7 and table.column_names[0] == "key"


def test_repush_unchanged_uploads_nothing(tmp_path, hub_server):
    path = make_dataset(tmp_path / "maps")
    hub.push(path, "me/toy-maps")
    result = hub.push(path, "me/toy-maps")
    assert result.uploaded == [] and result.deleted == [] and not result.changed
    assert result.unchanged == PUSHED and result.commit_url is None
    assert len(hub_server.history("me/toy-maps")) == 2  # no second commit
    assert hub_server.count(r"^POST /api/datasets/me/toy-maps/commit/") == 1
    assert hub_server.count(LFS_PUT) == 4


def test_repush_changed_uploads_only_changes_and_deletes_stale_shards(tmp_path, hub_server):
    path = make_dataset(tmp_path / "maps")
    hub.push(path, "me/toy-maps")
    # the same first 6 records in 2 shards: every shard is renamed (-of-00002), the old ones are stale
    newpath = make_dataset(tmp_path / "v2" / "maps", n=6)
    result = hub.push(newpath, "me/toy-maps")
    assert result.deleted == ["maps-00001-of-00003.rlm", "maps-00002-of-00003.rlm", "maps-00003-of-00003.rlm"]
    assert result.uploaded == [
        "maps.index.json", "maps-00001-of-00002.rlm", "maps-00002-of-00002.rlm", "README.md", "preview.parquet",
    ]
    assert sorted(p for p in hub_server.files("me/toy-maps") if p.endswith(".rlm")) == [
        "maps-00001-of-00002.rlm", "maps-00002-of-00002.rlm",
    ]
    assert len(hub_server.history("me/toy-maps")) == 3  # one commit per push: adds and deletes together
    old_files = hub_server.files("me/toy-maps", hub_server.history("me/toy-maps")[1].oid)
    assert old_files["maps-00001-of-00003.rlm"] == hub_server.files("me/toy-maps")["maps-00001-of-00002.rlm"]
    assert hub_server.count(LFS_PUT) == 4 + 1  # the new preview: the renamed shards' bytes are on the Hub
    with relabel_maps.open("hf://me/toy-maps") as remote, relabel_maps.open(newpath) as local:
        assert_same(remote, local)


def test_push_single_file_into_subfolder_keeps_other_files(tmp_path, hub_server):
    hub_server.put_files("me/toy-maps", {"other/keep.rlm": b"x", "notes.txt": b"hello"})
    path = make_dataset(tmp_path / "one.rlm", max_records=None)
    result = hub.push(path, "me/toy-maps", path_in_repo="v1", preview=False, delete_stale=True)
    assert result.uploaded == ["v1/one.rlm", "README.md"] and result.deleted == []
    files = hub_server.files("me/toy-maps")
    assert files["other/keep.rlm"] == b"x" and files["notes.txt"] == b"hello"
    assert "configs" not in card_yaml(files["README.md"].decode())
    assert 'relabel_maps.open("hf://me/toy-maps/v1")' in files["README.md"].decode()


def test_push_to_branch_creates_it(tmp_path, hub_server):
    path = make_dataset(tmp_path / "m")
    hub.push(path, "me/x", revision="v2")
    assert sorted(hub_server.files("me/x", "main")) == [".gitattributes"]
    assert "m.index.json" in hub_server.files("me/x", "v2")
    with relabel_maps.open("hf://me/x@v2") as remote, relabel_maps.open(path) as local:
        assert_same(remote, local)


def test_push_validates_before_network(tmp_path, hub_server):
    with pytest.raises(InvalidArgumentError):
        hub.push(make_dataset(tmp_path / "m"), "bad repo")
    with pytest.raises(FileNotFoundError):
        hub.push(tmp_path / "missing", "me/x")
    folder = tmp_path / "loose"
    folder.mkdir()
    make_dataset(folder / "a.rlm", max_records=None)
    make_dataset(folder / "b.rlm", max_records=None, seed=1)
    with pytest.raises(InvalidArgumentError, match="no index JSON"):
        hub.push(folder, "me/x")
    assert hub_server.requests == []


# ------------------------------------------------------------------------------------ open, pull
def test_open_hf_fetches_shards_lazily_from_the_index_commit(tmp_path, hub_server):
    path = make_dataset(tmp_path / "maps")
    hub.push(path, "me/toy")
    head = hub_server.head("me/toy")

    def shard_gets() -> int:
        return hub_server.count(r"^GET /datasets/me/toy/resolve/.*\.rlm$", "200")

    with relabel_maps.open("hf://me/toy") as maps:
        assert len(maps) == 7 and shard_gets() == 0  # the index alone gives the length
        key, lm = maps.at(0)
        assert shard_gets() == 1
        with relabel_maps.open(path) as local:
            assert key == local.at(0)[0] and lm == local.at(0)[1]
            assert_same(maps, local)
    assert shard_gets() == 3
    assert hub_server.count(rf"^GET /datasets/me/toy/resolve/{head}/", "200") == 4  # index + shards, pinned
    assert hub_server.count(r"^GET /datasets/me/toy/resolve/main/") == 0


def test_open_reads_one_commit_while_a_push_lands(tmp_path, hub_server):
    v1 = make_dataset(tmp_path / "v1" / "maps", seed=0)
    v2 = make_dataset(tmp_path / "v2" / "maps", seed=1)  # the same file names, other content
    hub.push(v1, "me/toy")
    with relabel_maps.open("hf://me/toy") as maps:  # the index of v1 is read, no shard yet
        hub.push(v2, "me/toy")
        assert fingerprint(maps) == local_fingerprint(v1)  # shards come from v1's commit
    with relabel_maps.open("hf://me/toy") as maps:
        assert fingerprint(maps) == local_fingerprint(v2)


def test_open_hf_revision_subfolder_and_single_file(tmp_path, hub_server):
    path = make_dataset(tmp_path / "maps")
    one = make_dataset(tmp_path / "one.rlm", max_records=None, seed=5)
    hub.push(path, "me/toy", path_in_repo="v1", preview=False)
    hub.push(one, "me/toy", path_in_repo="single", preview=False)
    commit = hub_server.head("me/toy")
    hub_server.create_branch("me/toy", "v1.0")
    urls = ("hf://me/toy/v1", "hf://me/toy@v1.0/v1", f"hf://me/toy@{commit}/v1", "hf://me/toy/v1/maps.index.json")
    with relabel_maps.open(path) as local:
        for url in urls:
            with relabel_maps.open(url) as maps:
                assert_same(maps, local)
    with relabel_maps.open(one) as local:
        for url in ("hf://me/toy/single", "hf://me/toy/single/one.rlm"):
            with relabel_maps.open(url) as maps:
                assert_same(maps, local)


def test_open_hf_pickles_for_workers(tmp_path, hub_server):
    hub.push(make_dataset(tmp_path / "maps"), "me/toy")
    with relabel_maps.open("hf://me/toy") as maps:
        clone = pickle.loads(pickle.dumps(maps))
        assert clone.at(4)[0] == maps.at(4)[0] and clone.at(4)[1] == maps.at(4)[1]
        clone.close()


def test_pull_round_trip_and_local_dir(tmp_path, hub_server):
    path = make_dataset(tmp_path / "maps")
    hub.push(path, "me/toy", path_in_repo="l2-475")
    with relabel_maps.open("hf://me/toy/l2-475") as maps:
        maps.at(0)  # the first shard is now in the cache
    local = hub.pull("me/toy")  # fetches only what the cache lacks
    for i, fetched in ((1, 1), (2, 1), (3, 1)):
        assert hub_server.count(rf"^GET /datasets/me/toy/resolve/.*/maps-0000{i}-of-00003\.rlm$") == fetched
    assert os.path.basename(local) == hub_server.head("me/toy")
    with relabel_maps.open(os.path.join(local, "l2-475")) as pulled, relabel_maps.open(path) as orig:
        assert_same(pulled, orig)
        assert pulled.verify() == []
    folder = hub.pull("hf://me/toy/l2-475", local_dir=tmp_path / "out")
    assert folder == os.path.join(os.path.realpath(tmp_path / "out"), "l2-475")
    assert sorted(os.listdir(folder)) == sorted(PUSHED[:4] + ["preview.parquet"])


def test_open_and_pull_offline_from_cache(tmp_path, hub_server, monkeypatch):
    path = make_dataset(tmp_path / "maps")
    hub.push(path, "me/toy")
    with relabel_maps.open("hf://me/toy") as maps:
        fingerprint(maps)  # every shard is now cached
    pulled = hub.pull("me/toy")
    monkeypatch.setattr(hf.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    asked = len(hub_server.requests)
    with relabel_maps.open("hf://me/toy") as maps, relabel_maps.open(path) as local:
        assert_same(maps, local)
    assert hub.pull("me/toy") == pulled
    assert len(hub_server.requests) == asked  # nothing was asked of the Hub
    with pytest.raises(HubNetworkError, match="HF_HUB_OFFLINE") as info:
        relabel_maps.open("hf://me/not-there")
    assert isinstance(info.value, OSError) and str(info.value).startswith("hf://me/not-there: ")
    with pytest.raises(InvalidArgumentError, match="repo id"):
        relabel_maps.open("hf://bad--id/x")


_FORKED_MAPS = None


def _fingerprint_in_worker(seed: int) -> str:
    """Read every record of the inherited ``_FORKED_MAPS`` in a shuffled order, then fingerprint them."""
    assert _FORKED_MAPS is not None
    keys = list(_FORKED_MAPS)
    for i in np.random.default_rng(seed).permutation(len(keys)):
        _FORKED_MAPS[keys[i]]
    return fingerprint(_FORKED_MAPS)


def test_item6_forked_workers_read_hf_from_cache_identically(tmp_path, hub_server, monkeypatch):
    """hf:// is one of the reader's source kinds: four forked workers over a cached, offline hf:// dataset
    read exactly the records the parent reads (the local copy's)."""
    global _FORKED_MAPS
    path = make_dataset(tmp_path / "maps", n=11)
    hub.push(path, "me/toy")
    with relabel_maps.open("hf://me/toy") as maps:
        fingerprint(maps)  # fills the cache
    monkeypatch.setattr(hf.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with relabel_maps.open("hf://me/toy") as maps:
        _FORKED_MAPS = maps
        try:
            maps["img0.jpg"]  # the parent has a shard open before forking
            with mp.get_context("fork").Pool(4) as pool:
                results = pool.map(_fingerprint_in_worker, range(4), chunksize=1)
        finally:
            _FORKED_MAPS = None
        assert results == [local_fingerprint(path)] * 4
        assert fingerprint(maps) == results[0]


@pytest.mark.slow
def test_open_hf_in_subprocess_online_then_offline(tmp_path, hub_server):
    hub.push(make_dataset(tmp_path / "maps"), "me/toy")
    code = (
        "import relabel_maps, sys\n"
        "m = relabel_maps.open('hf://me/toy')\n"
        "print(len(m), m.at(6)[0], float(m['img3.jpg'].pool().sum()))\n"
        "assert 'torch' not in sys.modules\n"
    )
    for offline in ("0", "1"):
        asked = len(hub_server.requests)
        env = {**os.environ, "HF_HUB_OFFLINE": offline}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 0, out.stderr
        n, last, total = out.stdout.split()
        assert n == "7" and last == "img6.jpg" and abs(float(total) - 1.0) < 1e-5
        assert (len(hub_server.requests) > asked) == (offline == "0")


def test_cli_push_pull_info_and_token_never_printed(tmp_path, hub_server, monkeypatch):
    from click.testing import CliRunner

    from relabel_maps_cli.main import main

    secret = "hf_secret_do_not_print"
    hub_server.tokens = {secret: "write"}
    monkeypatch.setenv("HF_TOKEN", secret)
    path = make_dataset(tmp_path / "maps")
    runner = CliRunner()
    outputs = []
    for args in (
        ["push", path, "me/toy-maps", "--license", "cc-by-4.0"],
        ["push", path, "me/toy-maps", "--license", "cc-by-4.0"],
        ["push", path, "me/toy-maps", "--dry-run"],
        ["info", "hf://me/toy-maps", "--json"],
        ["verify", "hf://me/toy-maps", "--json"],
        ["pull", "me/toy-maps"],
    ):
        result = runner.invoke(main, args)
        assert result.exit_code == 0, result.output
        outputs.append(result.output)
    first, again, dry, info, verify, pull = outputs
    assert "uploaded  maps-00001-of-00003.rlm" in first and "6 uploaded" in first
    assert card_yaml(hub_server.files("me/toy-maps")["README.md"].decode())["license"] == "cc-by-4.0"
    assert "up to date" in again and len(hub_server.history("me/toy-maps")) == 2
    assert "would upload README.md" in dry
    assert '"records": 7' in info and '"ok": true' in verify
    assert pull.strip().endswith(hub_server.head("me/toy-maps"))
    assert all(secret not in out for out in outputs)


# ------------------------------------------------------------------- item 7: typed errors, retries
def test_item7_missing_repo_is_a_typed_error(tmp_path, hub_server):
    with pytest.raises(HubNotFoundError) as info:
        relabel_maps.open("hf://owner/missing")
    err = info.value
    assert isinstance(err, RelabelMapsError) and isinstance(err, LookupError) and isinstance(err, OSError)
    message = str(err)
    assert message.startswith("hf://owner/missing: no such dataset repo") and "\n" not in message
    assert "Repository Not Found for url: " in message  # the Hub's informative line is kept
    assert hub_server.count(r"^GET /api/datasets/owner/missing") == 1  # not retried
    with pytest.raises(HubNotFoundError, match="^hf://owner/missing: "):
        hub.pull("owner/missing")

    hub.push(make_dataset(tmp_path / "maps"), "me/toy")
    with pytest.raises(HubNotFoundError, match=r"^hf://me/toy@nope: revision not found"):
        relabel_maps.open("hf://me/toy@nope")
    with pytest.raises(HubNotFoundError, match=r"^hf://me/toy/nope\.rlm: file not found"):
        relabel_maps.open("hf://me/toy/nope.rlm")

    from click.testing import CliRunner

    from relabel_maps_cli.main import main

    out = CliRunner().invoke(main, ["pull", "owner/missing"])
    assert out.exit_code == 1 and len(out.output.strip().splitlines()) == 1
    assert out.output.startswith("Error: hf://owner/missing: no such dataset repo on the Hub")
    assert "Repository Not Found for url: http://127.0.0.1:" in out.output


@pytest.mark.slow
def test_item7_missing_repo_cli_line_names_the_repo(hub_server):
    """The installed command, in a subprocess whose huggingface_hub reads HF_ENDPOINT."""
    for args in (("pull", "owner/missing"), ("info", "hf://owner/missing")):
        out = run_cli(*args)
        assert out.returncode == 1 and out.stdout == ""
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1, out.stderr
        assert lines[0].startswith("Error: hf://owner/missing: no such dataset repo on the Hub")
        assert f"Repository Not Found for url: {hub_server.endpoint}/api/datasets/owner/missing" in lines[0]


def test_item7_auth_error_typed(tmp_path, hub_server, monkeypatch):
    path = make_dataset(tmp_path / "maps")
    hub_server.tokens = {"hf_writer": "write", "hf_reader": "read"}
    with pytest.raises(HubAuthError) as info:
        hub.push(path, "me/toy", token="hf_wrong")
    err = info.value
    assert isinstance(err, PermissionError) and isinstance(err, RelabelMapsError)
    assert str(err).startswith("hf://me/toy: the Hub refused the request (HTTP 401")
    assert "Invalid credentials in Authorization header" in str(err) and "hf_wrong" not in str(err)
    assert "me/toy" not in hub_server.repos
    with pytest.raises(HubAuthError, match="HTTP 403.*rights to write"):
        hub.push(path, "me/toy", token="hf_reader")
    hub.push(path, "me/toy", token="hf_writer")
    with pytest.raises(HubAuthError, match="HTTP 403.*rights to write"):  # the repo exists, the commit is refused
        hub.push(make_dataset(tmp_path / "v2" / "maps", seed=1), "me/toy", token="hf_reader")
    assert len(hub_server.history("me/toy")) == 2
    with pytest.raises(HubAuthError, match="^hf://me/toy: "):
        relabel_maps.open("hf://me/toy", token="hf_wrong")
    hub_server.repos["me/toy"].private = True
    with pytest.raises(HubNotFoundError, match="private"):  # the Hub hides private repos from strangers
        relabel_maps.open("hf://me/toy")
    with relabel_maps.open("hf://me/toy", token="hf_reader") as maps:
        assert len(maps) == 7
    assert hub_server.count(r"/api/repos/create$", "401") == 1  # refusals are not retried

    from click.testing import CliRunner

    from relabel_maps_cli.main import main

    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    out = CliRunner().invoke(main, ["push", path, "me/other"])
    assert out.exit_code == 1 and "hf_wrong" not in out.output
    assert out.output.startswith("Error: hf://me/other: the Hub refused the request (HTTP 401")
    assert len(out.output.strip().splitlines()) == 1


def test_item7_transient_500_is_retried(tmp_path, hub_server):
    path = make_dataset(tmp_path / "maps")
    commit = r"^POST /api/datasets/me/toy/commit/main$"
    hub_server.inject(commit, times=2)
    result = hub.push(path, "me/toy")
    assert result.uploaded == PUSHED and result.commit_url is not None
    assert hub_server.count(commit, "500") == 2 and hub_server.count(commit, "200") == 1
    assert len(hub_server.history("me/toy")) == 2
    assert hub_server.count(LFS_PUT) == 4  # retries found the uploaded bytes on the server

    info = r"^GET /api/datasets/me/toy/revision/main$"
    hub_server.inject(info, times=100)
    with pytest.raises(HubNetworkError, match=r"^hf://me/toy: the Hub failed \(HTTP 500.*gave up after 3 attempts"):
        relabel_maps.open("hf://me/toy", retry=RetryPolicy(attempts=3, delay=0.01))
    assert hub_server.count(info, "500") == 3  # bounded
    hub_server.clear_faults()

    hub_server.inject(info, status=503, times=2)
    with relabel_maps.open("hf://me/toy") as maps, relabel_maps.open(path) as local:
        assert_same(maps, local)
    hub_server.inject(info, status=502, times=2)
    with relabel_maps.open(hub.pull("me/toy", local_dir=tmp_path / "out")) as maps:
        assert fingerprint(maps) == local_fingerprint(path)
    assert hub_server.count(info, "503") == 2 and hub_server.count(info, "502") == 2


def test_item7_dropped_connection_retried(tmp_path, hub_server):
    path = make_dataset(tmp_path / "maps")
    commit = r"^POST /api/datasets/me/toy/commit/main$"
    hub_server.inject(commit, "drop_response")  # the commit lands, its answer is lost
    result = hub.push(path, "me/toy")
    assert result.uploaded == PUSHED and result.changed
    assert hub_server.count(commit) == 1 and len(hub_server.history("me/toy")) == 2  # not committed twice

    hub_server.inject(r"^POST /api/repos/create$", "drop")
    hub_server.inject(r"^GET /api/datasets/me/toy/revision/main$", "drop", times=2)
    assert not hub.push(path, "me/toy").changed
    with relabel_maps.open("hf://me/toy") as maps, relabel_maps.open(path) as local:
        assert_same(maps, local)
    assert hub_server.count(r"^POST /api/repos/create$", "drop") == 1
    assert hub_server.count(r"^GET /api/datasets/me/toy/revision/main$", "drop") == 2


@pytest.mark.slow
def test_item7_cut_download_is_fetched_again(tmp_path, hub_server):
    path = make_dataset(tmp_path / "maps")
    hub.push(path, "me/toy")
    shard = r"^GET /datasets/me/toy/resolve/[0-9a-f]{40}/maps-00002-of-00003\.rlm$"
    hub_server.inject(shard, "drop_body")  # half the shard, then the connection drops
    with relabel_maps.open("hf://me/toy") as maps, relabel_maps.open(path) as local:
        assert_same(maps, local)
        assert maps.verify() == []
    assert hub_server.count(shard, "drop_body") == 1 and hub_server.count(shard, "200") == 1


def test_hub_server_serves_ranges(hub_server):
    """What huggingface_hub's resumed downloads ask for: ``Range: bytes=N-`` answered with 206."""
    from urllib.request import Request, urlopen

    data = bytes(range(256)) * 8
    commit = hub_server.put_files("me/toy", {"blob.bin": data}, lfs=True)
    url = f"{hub_server.endpoint}/datasets/me/toy/resolve/main/blob.bin"
    with urlopen(Request(url, method="HEAD")) as head:
        assert head.headers["X-Repo-Commit"] == commit
        assert head.headers["X-Linked-Etag"].strip('"') == hashlib.sha256(data).hexdigest()
        assert int(head.headers["X-Linked-Size"]) == len(data)
    for spec, part in (("bytes=1000-", data[1000:]), ("bytes=10-19", data[10:20]), ("bytes=-5", data[-5:])):
        with urlopen(Request(url, headers={"Range": spec})) as response:
            assert response.status == 206 and response.read() == part
            assert response.headers["Content-Range"].endswith(f"/{len(data)}")


@pytest.mark.slow
def test_item7_push_killed_midway_rerun_converges(tmp_path, hub_server):
    v1 = make_dataset(tmp_path / "v1" / "maps", n=12, max_records=2, seed=0)
    v2 = make_dataset(tmp_path / "v2" / "maps", n=12, max_records=2, seed=1)  # same names, new content
    expected = {local_fingerprint(v1): "v1", local_fingerprint(v2): "v2"}
    hub.push(v1, "me/toy")
    v1_head = hub_server.head("me/toy")
    puts_before, kept = hub_server.count(LFS_PUT, "200"), 3

    seen: list[str] = []
    stop = threading.Event()

    def poll() -> None:  # a reader opening the dataset again and again while it is being pushed
        while not stop.is_set():
            try:
                with relabel_maps.open("hf://me/toy") as maps:
                    seen.append(expected.get(fingerprint(maps), "a mix"))
            except Exception as exc:  # noqa: BLE001 - any failure is a finding
                seen.append(f"{type(exc).__name__}: {exc}")

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        # the pusher's uploads after the third one hang; it is killed while they do
        hub_server.inject(LFS_PUT, "hang", after=kept, times=1000)
        code = "import sys; from relabel_maps import hub; hub.push(sys.argv[1], 'me/toy')"
        pusher = subprocess.Popen([sys.executable, "-c", code, v2], env=os.environ)
        try:
            def stuck() -> bool:  # the allowed uploads are done and a later one is held
                return hub_server.count(LFS_PUT, "hang") > 0 and hub_server.count(LFS_PUT, "200") >= puts_before + kept

            hub_server.wait_for(lambda: pusher.poll() is not None or stuck())
            assert pusher.poll() is None, "the pusher ended before its uploads hung"
            assert hub_server.count(LFS_PUT, "200") - puts_before == kept
        finally:
            pusher.kill()
            pusher.wait(30)
        hub_server.release()
        hub_server.clear_faults()
        assert hub_server.head("me/toy") == v1_head  # nothing was committed
        n_seen = len(seen)
        hub_server.wait_for(lambda: len(seen) > n_seen + 1)  # the reader still sees v1

        result = hub.push(v2, "me/toy")  # the re-run
        lfs_files = 6 + 1  # six shards and the preview
        assert hub_server.count(LFS_PUT, "200") - puts_before == lfs_files  # the re-run sent only what was missing
        assert result.changed and len(hub_server.history("me/toy")) == 3
        n_seen = len(seen)
        hub_server.wait_for(lambda: len(seen) > n_seen + 1)
    finally:
        stop.set()
        reader.join(60)
    assert set(seen) <= {"v1", "v2"}, [s for s in seen if s not in ("v1", "v2")][:3]
    assert seen[0] == "v1" and seen[-1] == "v2"
    with relabel_maps.open("hf://me/toy") as maps:
        assert expected[fingerprint(maps)] == "v2"


def test_item7_every_failure_is_a_hub_error(tmp_path, hub_server):
    """Refusals that are neither missing repos nor auth problems (here: a 422 on commit) are typed too."""
    hub_server.inject(r"^POST /api/datasets/me/toy/commit/main$", status=422)
    with pytest.raises(HubError, match=r"^hf://me/toy: the Hub refused the request \(HTTP 422") as info:
        hub.push(make_dataset(tmp_path / "maps"), "me/toy")
    assert type(info.value) is HubError and isinstance(info.value, OSError)
    assert hub_server.count(r"/commit/main$") == 1
