"""A local Hugging Face Hub for tests: the HTTP API huggingface_hub's client speaks, for dataset repos.

Point a client at it with ``HF_ENDPOINT=<server.endpoint>`` (set before huggingface_hub is imported; see
:meth:`HubServer.env`) or, in-process, with :meth:`HubServer.patch_client`. ``HF_HUB_DISABLE_XET=1`` is
part of that environment: the server speaks the classic upload protocol (preupload, LFS batch + PUT,
NDJSON commit), not Xet storage.

Endpoints (what ``relabel_maps.hub`` makes the client request)::

    GET  /api/whoami-v2
    POST /api/repos/create                              {"name", "organization", "type", "visibility"}
    POST /api/validate-yaml                             (README front matter check before a commit)
    GET  /api/datasets/{repo}[/revision/{rev}]          repo info: "sha" is the commit the revision points to
    GET  /api/datasets/{repo}/tree/{rev}[/{path}]       ?recursive=&expand=, paginated with a Link header
    POST /api/datasets/{repo}/branch/{branch}
    POST /api/datasets/{repo}/preupload/{rev}           upload mode (lfs/regular) and remote oid per file
    POST /api/datasets/{repo}/commit/{rev}              NDJSON: header, file (base64), lfsFile, deleted*
    POST /datasets/{repo}.git/info/lfs/objects/batch    basic transfer: an upload action per missing object
    PUT  /lfs/{oid}                                     the upload action's URL; POST /lfs/{oid}/verify
    HEAD|GET /datasets/{repo}/resolve/{rev}/{path}      X-Repo-Commit, ETag, X-Linked-Etag/-Size, Range

State lives in memory. Every commit is a full snapshot of the repo's files and a branch moves from one
commit to the next atomically, so a reader resolving a revision sees one commit or the other, never a
mix; old commits stay readable by their id. Faults are injected per request (``"METHOD /path"``
matched by a regex): answer with an HTTP status, drop the connection before or after handling the
request (a lost answer), cut a response body short, or hold the request until :meth:`HubServer.release`.

Standalone: ``python tests/hub_server.py [--port N]`` serves until interrupted and prints the environment.
"""

from __future__ import annotations

import base64
import dataclasses
import fnmatch
import hashlib
import json
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

#: the .gitattributes a new repo starts with (a subset of the Hub's default)
GITATTRIBUTES = b"".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n".encode()
    for pattern in ("*.arrow", "*.bin", "*.gz", "*.npy", "*.parquet", "*.pt", "*.safetensors", "*.zst")
)
LFS_MIN_SIZE = 10 * 1024 * 1024  # larger files go to LFS whatever their name
ACTIONS = ("status", "drop", "drop_response", "drop_body", "hang")


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


class Blob:
    """A file's content as stored in a commit: in git (regular) or in LFS (the commit holds a pointer)."""

    def __init__(self, data: bytes, lfs: bool) -> None:
        self.data, self.lfs = data, lfs
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.pointer = lfs_pointer(self.sha256, len(data)) if lfs else b""
        self.git_oid = git_blob_oid(self.pointer if lfs else data)

    @property
    def etag(self) -> str:
        """What the Hub sends as the file's ETag: the SHA-256 of an LFS file, else the git blob id."""
        return self.sha256 if self.lfs else self.git_oid

    def tree_entry(self, path: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": self.git_oid, "size": len(self.data), "path": path}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": len(self.data), "pointerSize": len(self.pointer)}
        return entry


@dataclasses.dataclass(frozen=True)
class Commit:
    oid: str
    parent: str | None
    message: str
    files: dict[str, Blob]  # never changed once the commit exists


@dataclasses.dataclass
class Repo:
    repo_id: str
    private: bool
    commits: dict[str, Commit] = dataclasses.field(default_factory=dict)
    refs: dict[str, str] = dataclasses.field(default_factory=dict)  # branch -> commit oid

    def resolve(self, revision: str) -> Commit | None:
        oid = self.refs.get(revision, revision)
        return self.commits.get(oid)

    def lfs_patterns(self, commit: Commit) -> list[str]:
        blob = commit.files.get(".gitattributes")
        text = blob.data.decode("utf-8", "replace") if blob else ""
        return [line.split()[0] for line in text.splitlines() if "filter=lfs" in line]


@dataclasses.dataclass
class Fault:
    """Applies ``action`` to requests matching ``pattern``: after ``after`` matches, the next ``times`` ones."""

    pattern: re.Pattern[str]
    action: str
    times: int
    after: int = 0
    status: int = 500
    seen: int = 0
    fired: int = 0


@dataclasses.dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query string, still percent-encoded
    outcome: str  # the status code, or "drop" / "hang" / "drop_body"


@dataclasses.dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


def _json(status: int, value: Any, **headers: str) -> Response:
    return Response(status, json.dumps(value).encode(), {"Content-Type": "application/json", **headers})


def _error(status: int, message: str, code: str | None = None, **headers: str) -> Response:
    extra = {"X-Error-Message": message, **({"X-Error-Code": code} if code else {}), **headers}
    return _json(status, {"error": message}, **extra)


class HubError(Exception):
    """Raised by a route to answer with an error."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


class HubServer:
    """The in-memory Hub and its HTTP server on 127.0.0.1 (a free port). Use as a context manager.

    ``tokens`` maps accepted tokens to ``"read"`` or ``"write"``; when given, writes need a write token
    and private repos a valid one. An unknown token is refused (401) everywhere, as on the Hub.
    ``page_size`` is the number of tree entries per page.
    """

    def __init__(
        self, *, tokens: dict[str, str] | None = None, page_size: int = 1000, user: str = "tester", port: int = 0
    ) -> None:
        self.tokens, self.page_size, self.user = tokens, page_size, user
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}  # LFS objects uploaded, by SHA-256
        self.requests: list[Request] = []
        self.faults: list[Fault] = []
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self._release = threading.Event()
        self._counter = 0
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self  # type: ignore[attr-defined]
        self.endpoint = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    # ---------------------------------------------------------------------------- lifecycle
    def start(self) -> HubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        """Environment variables that point a huggingface_hub client (a subprocess) at this server."""
        return {
            "HF_ENDPOINT": self.endpoint,
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_HUB_OFFLINE": "0",
        }

    def patch_client(self, monkeypatch: Any) -> None:
        """Point the already-imported huggingface_hub of this process at the server (pytest ``monkeypatch``)."""
        from huggingface_hub import constants

        for name, value in self.env().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(constants, "ENDPOINT", self.endpoint)
        template = self.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        # `datasets` copies the offline flag when it is imported: an import during an offline test sticks,
        datasets_config = sys.modules.get("datasets.config")
        if datasets_config is not None:  # ... and so does its endpoint
            monkeypatch.setattr(datasets_config, "HF_HUB_OFFLINE", False)
            monkeypatch.setattr(datasets_config, "HF_DATASETS_OFFLINE", False)
            monkeypatch.setattr(datasets_config, "HF_ENDPOINT", self.endpoint)
            monkeypatch.setattr(datasets_config, "HUB_DATASETS_URL",
                                self.endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}")

    # ------------------------------------------------------------------------------- state
    def _new_commit(self, repo: Repo, parent: Commit | None, message: str, files: dict[str, Blob]) -> Commit:
        self._counter += 1
        seed = json.dumps([self._counter, repo.repo_id, parent.oid if parent else None, message, sorted(files)])
        commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), parent.oid if parent else None, message, files)
        repo.commits[commit.oid] = commit
        return commit

    def create_repo(self, repo_id: str, *, private: bool = False) -> Repo:
        """A repo whose first commit holds ``.gitattributes`` (as the Hub creates them)."""
        with self.lock:
            repo = self.repos[repo_id] = Repo(repo_id, private)
            first = self._new_commit(repo, None, "initial commit", {".gitattributes": Blob(GITATTRIBUTES, False)})
            repo.refs["main"] = first.oid
            self.changed.notify_all()
            return repo

    def put_files(self, repo_id: str, files: dict[str, bytes], *, branch: str = "main", lfs: bool = False) -> str:
        """Commit ``files`` straight into the repo (created when missing); return the commit id."""
        with self.lock:
            repo = self.repos.get(repo_id) or self.create_repo(repo_id)
            head = repo.commits[repo.refs[branch]]
            added = {path: Blob(data, lfs) for path, data in files.items()}
            commit = self._new_commit(repo, head, "put files", {**head.files, **added})
            repo.refs[branch] = commit.oid
            return commit.oid

    def create_branch(self, repo_id: str, branch: str, revision: str = "main") -> None:
        with self.lock:
            repo = self.repos[repo_id]
            repo.refs[branch] = repo.refs.get(revision, revision)

    def head(self, repo_id: str, revision: str = "main") -> str:
        with self.lock:
            return self.repos[repo_id].refs[revision]

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The repo's files at ``revision`` (a branch or a commit id)."""
        with self.lock:
            commit = self.repos[repo_id].resolve(revision)
            assert commit is not None, revision
            return {path: blob.data for path, blob in commit.files.items()}

    def history(self, repo_id: str, branch: str = "main") -> list[Commit]:
        """The branch's commits, newest first."""
        with self.lock:
            repo = self.repos[repo_id]
            out, oid = [], repo.refs.get(branch)
            while oid is not None:
                out.append(repo.commits[oid])
                oid = repo.commits[oid].parent
            return out

    # ------------------------------------------------------------------------------ faults
    def inject(
        self, pattern: str, action: str = "status", *, times: int = 1, after: int = 0, status: int = 500
    ) -> Fault:
        """Apply ``action`` (one of :data:`ACTIONS`) to the ``times`` requests matching ``pattern`` (a regex
        searched in ``"METHOD /path"``) that follow the first ``after`` matching ones."""
        assert action in ACTIONS, action
        fault = Fault(re.compile(pattern), action, times, after, status)
        with self.lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def release(self) -> None:
        """Let held (``"hang"``) requests go on; they are then dropped."""
        self._release.set()

    def _fault_for(self, line: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.pattern.search(line):
                    fault.seen += 1
                    if fault.seen > fault.after and fault.fired < fault.times:
                        fault.fired += 1
                        return fault
            return None

    def _log(self, method: str, path: str, outcome: str) -> None:
        with self.lock:
            self.requests.append(Request(method, path, outcome))
            self.changed.notify_all()

    def count(self, pattern: str, outcome: str | None = None) -> int:
        """How many requests matching ``pattern`` (searched in ``"METHOD /path"``) were answered with ``outcome``."""
        regex = re.compile(pattern)
        with self.lock:
            return sum(
                1
                for r in self.requests
                if regex.search(f"{r.method} {r.path}") and (outcome is None or r.outcome == outcome)
            )

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        """Block until ``predicate()`` holds (checked whenever a request ends); AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not predicate():
                left = deadline - time.monotonic()
                assert left > 0, "timed out waiting for the Hub server"
                self.changed.wait(min(left, 0.2))

    # ------------------------------------------------------------------------------ routes
    def _auth(self, headers: Any, *, write: bool, repo: Repo | None = None) -> None:
        auth = headers.get("authorization") or ""
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        if token is not None and self.tokens is not None and token not in self.tokens:
            raise HubError(_error(401, "Invalid credentials in Authorization header"))
        if self.tokens is None:
            return
        role = self.tokens.get(token or "")
        if write and role != "write":
            raise HubError(_error(403, "You don't have the rights to write to this repo (use a write token)"))
        if repo is not None and repo.private and role is None:
            raise HubError(_error(404, "Repository not found", "RepoNotFound"))

    def _repo(self, repo_id: str, headers: Any, *, write: bool = False) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None:
            self._auth(headers, write=False)
            raise HubError(_error(404, "Repository not found", "RepoNotFound"))
        self._auth(headers, write=write, repo=repo)
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(_error(404, f"Invalid rev id: {revision}", "RevisionNotFound"))
        return commit

    def route(self, method: str, path: str, query: dict[str, list[str]], headers: Any, body: bytes) -> Response:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        with self.lock:
            if method == "GET" and parts == ["api", "whoami-v2"]:
                self._auth(headers, write=False)
                return _json(200, {"type": "user", "name": self.user, "auth": {"accessToken": {"role": "write"}}})
            if method == "POST" and parts == ["api", "repos", "create"]:
                return self._create_repo(headers, json.loads(body or b"{}"))
            if method == "POST" and parts == ["api", "validate-yaml"]:
                return _json(200, {"errors": [], "warnings": []})
            if len(parts) >= 4 and parts[:2] == ["api", "datasets"]:
                return self._api(method, "/".join(parts[2:4]), parts[4:], query, headers, body)
            if method == "POST" and len(parts) == 7 and parts[0] == "datasets" and parts[2].endswith(".git"):
                if parts[3:] == ["info", "lfs", "objects", "batch"]:
                    return self._lfs_batch(f"{parts[1]}/{parts[2][:-4]}", headers, json.loads(body))
            if len(parts) >= 6 and parts[0] == "datasets" and parts[3] == "resolve" and method in ("GET", "HEAD"):
                return self._resolve(f"{parts[1]}/{parts[2]}", parts[4], "/".join(parts[5:]), headers)
            if parts[:1] == ["lfs"] and len(parts) == 2 and method == "PUT":
                return self._lfs_put(parts[1], headers, body)
            if parts[:1] == ["lfs"] and len(parts) == 3 and parts[2] == "verify" and method == "POST":
                ok = parts[1] in self.lfs
                return _json(200, {"ok": True}) if ok else _error(404, "Object not found")
        return _error(404, f"no route for {method} {path}")

    def _api(
        self, method: str, repo_id: str, rest: list[str], query: dict[str, list[str]], headers: Any, body: bytes
    ) -> Response:
        if method == "GET" and (not rest or (rest[0] == "revision" and len(rest) == 2)):
            repo = self._repo(repo_id, headers)
            commit = self._commit(repo, rest[1] if rest else "main")
            return _json(200, self._info(repo, commit))
        if method == "GET" and len(rest) >= 2 and rest[0] == "tree":
            repo = self._repo(repo_id, headers)
            return self._tree(repo, rest[1], "/".join(rest[2:]), query)
        if method == "POST" and len(rest) == 2 and rest[0] == "branch":
            repo = self._repo(repo_id, headers, write=True)
            if rest[1] in repo.refs:
                return _error(409, f"Branch {rest[1]} already exists")
            start = json.loads(body or b"{}").get("startingPoint") or "main"
            repo.refs[rest[1]] = self._commit(repo, start).oid
            return _json(200, {})
        if method == "POST" and len(rest) == 2 and rest[0] == "preupload":
            repo = self._repo(repo_id, headers, write=True)
            return self._preupload(repo, self._commit(repo, rest[1]), json.loads(body))
        if method == "POST" and len(rest) == 2 and rest[0] == "commit":
            repo = self._repo(repo_id, headers, write=True)
            return self._apply_commit(repo, rest[1], body)
        return _error(404, f"no route for {method} /api/datasets/{repo_id}/{'/'.join(rest)}")

    def _create_repo(self, headers: Any, payload: dict[str, Any]) -> Response:
        self._auth(headers, write=True)
        repo_id = f"{payload.get('organization') or self.user}/{payload['name']}"
        url = f"{self.endpoint}/datasets/{repo_id}"
        if payload.get("type") != "dataset":
            return _error(400, "this server holds dataset repos only")
        if repo_id in self.repos:
            return _json(409, {"error": "You already created this dataset repo", "url": url})
        self.create_repo(repo_id, private=payload.get("visibility") == "private" or bool(payload.get("private")))
        return _json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _info(self, repo: Repo, commit: Commit) -> dict[str, Any]:
        return {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.oid,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "lastModified": "2024-01-01T00:00:00.000Z",
            "tags": [],
            "downloads": 0,
            "likes": 0,
            "siblings": [{"rfilename": path} for path in sorted(commit.files)],
        }

    def _tree(self, repo: Repo, revision: str, folder: str, query: dict[str, list[str]]) -> Response:
        commit = self._commit(repo, revision)
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = f"{folder}/" if folder else ""
        files = {p: b for p, b in commit.files.items() if p.startswith(prefix)}
        if folder and not files:
            return _error(404, f"{folder} does not exist on {revision}", "EntryNotFound")
        dirs: set[str] = set()
        entries: list[dict[str, Any]] = []
        for path, blob in sorted(files.items()):
            rel = path[len(prefix) :].split("/")
            for depth in range(1, len(rel)):
                dirs.add(prefix + "/".join(rel[:depth]))
            if recursive or len(rel) == 1:
                entries.append(blob.tree_entry(path))
        for d in sorted(dirs):
            if recursive or "/" not in d[len(prefix) :]:
                oid = hashlib.sha1(f"{commit.oid}:{d}".encode()).hexdigest()
                entries.append({"type": "directory", "oid": oid, "size": 0, "path": d})
        entries.sort(key=lambda e: e["path"])
        start = int(query.get("cursor", ["0"])[0])
        page = entries[start : start + self.page_size]
        headers = {}
        if start + self.page_size < len(entries):
            url = f"{self.endpoint}/api/datasets/{repo.repo_id}/tree/{quote(commit.oid)}"
            url += f"/{quote(folder)}" if folder else ""
            url += f"?recursive={str(recursive).lower()}&expand=false&cursor={start + self.page_size}"
            headers["Link"] = f'<{url}>; rel="next"'
        return _json(200, page, **headers)

    def _is_lfs(self, repo: Repo, commit: Commit, path: str, sample: bytes, size: int) -> bool:
        patterns = repo.lfs_patterns(commit)
        named = any(fnmatch.fnmatch(path.rsplit("/", 1)[-1], pattern) for pattern in patterns)
        return named or size >= LFS_MIN_SIZE or b"\0" in sample

    def _preupload(self, repo: Repo, commit: Commit, payload: dict[str, Any]) -> Response:
        out = []
        for item in payload["files"]:
            path, size = item["path"], int(item["size"])
            lfs = size > 0 and self._is_lfs(repo, commit, path, base64.b64decode(item["sample"]), size)
            remote = commit.files.get(path)
            oid = (remote.sha256 if lfs else remote.git_oid) if remote is not None and remote.lfs == lfs else None
            out.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        return _json(200, {"files": out, "commitOid": commit.oid})

    def _apply_commit(self, repo: Repo, branch: str, body: bytes) -> Response:
        if branch not in repo.refs:
            return _error(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        head = repo.commits[repo.refs[branch]]
        files = dict(head.files)
        summary = ""
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                summary = value.get("summary", "")
                parent = value.get("parentCommit")
                if parent is not None and parent != head.oid:
                    return _error(412, "A commit has happened since. Please refresh and try again.")
            elif key == "file":
                files[value["path"]] = Blob(base64.b64decode(value["content"]), False)
            elif key == "lfsFile":
                data = self.lfs.get(value["oid"])
                if data is None:
                    return _error(422, f"LFS object {value['oid']} was never uploaded")
                files[value["path"]] = Blob(data, True)
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    return _error(404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound")
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: b for p, b in files.items() if not p.startswith(prefix)}
            else:
                return _error(400, f"unknown commit operation {key!r}")
        commit = self._new_commit(repo, head, summary, files)
        repo.refs[branch] = commit.oid  # the one step that publishes the commit
        url = f"{self.endpoint}/datasets/{repo.repo_id}/commit/{commit.oid}"
        return _json(200, {"success": True, "commitOid": commit.oid, "commitUrl": url, "pullRequestUrl": None})

    def _lfs_batch(self, repo_id: str, headers: Any, payload: dict[str, Any]) -> Response:
        self._repo(repo_id, headers, write=payload.get("operation") == "upload")
        objects = []
        for obj in payload["objects"]:
            oid, size = obj["oid"], int(obj["size"])
            entry: dict[str, Any] = {"oid": oid, "size": size}
            if oid not in self.lfs:
                entry["authenticated"] = True
                entry["actions"] = {
                    "upload": {"href": f"{self.endpoint}/lfs/{oid}", "expires_in": 3600},
                    "verify": {"href": f"{self.endpoint}/lfs/{oid}/verify"},
                }
            objects.append(entry)
        return _json(200, {"transfer": "basic", "objects": objects}, **{"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_put(self, oid: str, headers: Any, body: bytes) -> Response:
        if hashlib.sha256(body).hexdigest() != oid:
            return _error(400, f"content does not match sha256 {oid}")
        self.lfs[oid] = body
        return Response(200)

    def _resolve(self, repo_id: str, revision: str, path: str, headers: Any) -> Response:
        repo = self._repo(repo_id, headers)
        commit = self._commit(repo, revision)
        blob = commit.files.get(path)
        if blob is None:
            return _error(404, "Entry not found", "EntryNotFound", **{"X-Repo-Commit": commit.oid})
        out = {
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{blob.etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if blob.lfs:
            out.update({"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(len(blob.data))})
        data, total = blob.data, len(blob.data)
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", headers.get("range", "") or "")
        if match and (match.group(1) or match.group(2)):
            first, last = match.groups()
            if first:
                start, end = int(first), min(int(last) if last else total - 1, total - 1)
            else:
                start, end = max(total - int(last), 0), total - 1
            if start >= total or start > end:
                return Response(416, b"", {"Content-Range": f"bytes */{total}"})
            out["Content-Range"] = f"bytes {start}-{end}/{total}"
            return Response(206, data[start : end + 1], out)
        return Response(200, data, out)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LocalHub/1.0"
    wbufsize = 1 << 16  # headers and body leave in one write (no Nagle / delayed-ACK stalls)

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    @property
    def hub(self) -> HubServer:
        return self.server.hub  # type: ignore[attr-defined]

    def _body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _handle(self) -> None:
        url = urlsplit(self.path)
        line = f"{self.command} {url.path}"
        hub = self.hub
        fault = hub._fault_for(line)
        body = self._body()
        if fault is not None and fault.action in ("drop", "hang"):
            if fault.action == "hang":
                hub._log(self.command, url.path, "hang")
                hub._release.wait(60)
            else:
                hub._log(self.command, url.path, "drop")
            return self._drop()
        if fault is not None and fault.action == "status":
            response = _error(fault.status, f"injected failure ({fault.status})")
        else:
            try:
                response = hub.route(self.command, url.path, parse_qs(url.query), self.headers, body)
            except HubError as exc:
                response = exc.response
        if fault is not None and fault.action == "drop_response":
            hub._log(self.command, url.path, "drop")
            return self._drop()
        payload = response.body
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if fault is not None and fault.action == "drop_body":
            if self.command != "HEAD":
                self.wfile.write(payload[: len(payload) // 2])
                self.wfile.flush()
            hub._log(self.command, url.path, "drop_body")
            return self._drop()
        if self.command != "HEAD":
            self.wfile.write(payload)
        hub._log(self.command, url.path, str(response.status))

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _handle


@contextmanager
def serve(**options: Any) -> Iterator[HubServer]:
    """A running :class:`HubServer` for the duration of the block."""
    with HubServer(**options) as server:
        yield server


if __name__ == "__main__":  # pragma: no cover - manual use
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    args = parser.parse_args()
    with serve(port=args.port) as running:
        print(" ".join(f"{k}={v}" for k, v in running.env().items()), flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
