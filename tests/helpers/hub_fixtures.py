"""A Hub stand-in for tests: intercepted uploads, and a pre-populated Hub cache read with HF_HUB_OFFLINE=1."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import huggingface_hub.constants
from huggingface_hub import CommitInfo, HfApi, RepoUrl


@dataclass
class FakeHub:
    """Records `HfApi.create_repo` / `create_branch` / `create_commit` calls instead of reaching the Hub."""

    repos: list[dict] = field(default_factory=list)
    branches: list[dict] = field(default_factory=list)
    commits: list[dict] = field(default_factory=list)

    def install(self, monkeypatch) -> FakeHub:
        hub = self

        def create_repo(self, repo_id, *, private=None, exist_ok=False, repo_type=None, **kwargs):
            hub.repos.append({"repo_id": repo_id, "private": private, "exist_ok": exist_ok})
            return RepoUrl(f"https://huggingface.co/{repo_id}")

        def create_branch(self, repo_id, *, branch, exist_ok=False, **kwargs):
            hub.branches.append({"repo_id": repo_id, "branch": branch, "exist_ok": exist_ok})

        def create_commit(self, repo_id, operations, *, commit_message, revision=None, **kwargs):
            files = {}
            for op in operations:
                with op.as_file() as f:
                    files[op.path_in_repo] = f.read()
            oid = hashlib.sha1(b"".join(files[k] for k in sorted(files))).hexdigest()
            hub.commits.append({"repo_id": repo_id, "revision": revision, "message": commit_message,
                                "files": files, "oid": oid})  # fmt: skip
            return CommitInfo(
                commit_url=f"https://huggingface.co/{repo_id}/commit/{oid}",
                commit_message=commit_message,
                commit_description="",
                oid=oid,
            )

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "create_branch", create_branch)
        monkeypatch.setattr(HfApi, "create_commit", create_commit)
        return self

    def calls(self) -> int:
        return len(self.repos) + len(self.branches) + len(self.commits)


def write_hub_snapshot(
    cache: Path, repo_id: str, files: dict[str, bytes] | Path, revision: str = "main", sha: str | None = None
) -> Path:
    """Lay out `files` (name -> bytes, or a folder's files) as `<cache>/models--org--name/snapshots/<sha>/`
    with `refs/<revision>` pointing at it, as `huggingface_hub` downloads leave it. Returns the snapshot."""
    if isinstance(files, Path):
        files = {p.name: p.read_bytes() for p in files.iterdir() if p.is_file()}
    sha = sha or hashlib.sha1(repo_id.encode() + revision.encode()).hexdigest()
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / sha
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (snapshot / name).write_bytes(content)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(sha)
    return snapshot


def use_hub_cache(monkeypatch, cache: Path) -> None:
    """Point this process at `cache`, offline. huggingface_hub reads its settings at import, so the
    constants are patched along with the environment (subprocesses read the environment)."""
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
