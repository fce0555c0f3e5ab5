"""Data versions with DVC: commit what a phase wrote, push it, and restore any earlier version.

The phases' outputs are declared in ``dvc.yaml`` (one stage per phase). After a phase writes
a shard, ``commit_stage`` records the stage's current outputs in ``dvc.lock`` and the DVC
cache and pushes them to the remote, so ``dvc status`` / ``push`` / ``pull`` / ``checkout``
see every materialization. The DVC hash of a file is the MD5 of its bytes, the key under
which DVC stores it; a materialization records that hash, and ``restore_file`` brings those
exact bytes back later, from the local cache or from the remote.

Shards materialize in parallel processes while DVC's own repository lock fails fast when
held, so every DVC operation here runs under one blocking inter-process file lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import chdir, contextmanager
from dataclasses import dataclass
from pathlib import Path

from dvc.repo import Repo

# Set by `dvc repro` for the command it runs: DVC then commits the stage outputs itself,
# and committing from inside would fight over its repository lock.
UNDER_DVC_REPRO = "DVC_STAGE"
PARTIAL_PATTERN = "*.partial"


@dataclass(frozen=True)
class FileVersion:
    """The DVC version of one file written by a stage."""

    path: str  # relative to the DVC repository root
    md5: str  # DVC's hash of the file: the key of its bytes in the cache and remote
    stage: str
    stage_hash: str | None  # hash of the whole stage output (``...dir``), None under dvc repro


def ensure_repo(root: Path, remote_name: str, remote_url: str) -> None:
    """Make ``root`` a DVC repository with ``remote_url`` as its default remote.

    Uses the git repository at ``root`` where there is one, else ``dvc init --no-scm``.
    Idempotent: an existing repository only gets its remote set.
    """
    root = Path(root)
    with _dvc_lock(root):
        if not (root / ".dvc").is_dir():
            Repo.init(root_dir=str(root), no_scm=not (root / ".git").exists())
        # a shard being written (beside its final name, then renamed) is never part of a
        # version, nor a file a concurrent commit of the same stage may trip over
        ignore = root / ".dvcignore"
        patterns = ignore.read_text().splitlines() if ignore.is_file() else []
        if PARTIAL_PATTERN not in patterns:
            with open(ignore, "a", encoding="utf-8") as handle:
                handle.write(f"\n{PARTIAL_PATTERN}\n")
        url = remote_url
        if "://" not in remote_url:
            url = str((root / remote_url).resolve())
            Path(url).mkdir(parents=True, exist_ok=True)
        repo = Repo(str(root))
        try:
            # the remote comes from params.yaml, so it is written to the untracked
            # .dvc/config.local: the committed .dvc/config never disagrees with params
            with repo.config.edit("local") as config:
                config["remote"][remote_name] = {"url": url}
                config["core"]["remote"] = remote_name
        finally:
            repo.close()


def file_md5(path: Path) -> str:
    """DVC's hash of a file (the MD5 of its bytes)."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def commit_stage(root: Path, stage: str, written: Path, push: bool) -> FileVersion:
    """Record the current outputs of ``stage`` after ``written`` changed, and push them.

    Returns the version of ``written``. Under ``dvc repro`` only the hash is computed, since
    DVC commits the stage itself when the command finishes.
    """
    root = Path(root)
    relative = str(Path(written).resolve().relative_to(root.resolve()))
    md5 = file_md5(written)
    if os.environ.get(UNDER_DVC_REPRO):
        return FileVersion(relative, md5, stage, None)
    target = f"dvc.yaml:{stage}"
    with _dvc_lock(root):
        repo = Repo(str(root))
        try:
            repo.commit(target, force=True)
            if push:
                repo.push(targets=[target])
            (out,) = [o for o in repo.stage.collect(target)[0].outs if _contains(o, relative)]
            stage_hash = out.hash_info.value
        finally:
            repo.close()
    return FileVersion(relative, md5, stage, stage_hash)


def commit_iterations(root: Path, stages: list[str], push: bool) -> None:
    """Record ``stages`` as they are now, after refinement iterations wrote them.

    Refinement is a loop: iteration k+1 rewrites the folders (``<stage>/.../iteration-<k+1>``)
    that the stages of iteration k depend on, so their recorded dependencies go stale although
    nothing needs re-running. Committing the stages again records the loop's end state."""
    with _dvc_lock(Path(root)):
        repo = Repo(str(root))
        try:
            targets = [f"dvc.yaml:{stage}" for stage in stages]
            for target in targets:
                repo.commit(target, force=True)
            if push:
                repo.push(targets=targets)
        finally:
            repo.close()


def restore_file(root: Path, md5: str, destination: Path) -> Path:
    """Write the bytes DVC holds under ``md5`` to ``destination``.

    Looks in the local cache first, then in the default remote, so an earlier version comes
    back even on a machine whose cache never held it (after ``dvc pull`` semantics).
    """
    root = Path(root)
    with _dvc_lock(root):
        repo = Repo(str(root))
        try:
            for odb in (repo.cache.local, repo.cloud.get_remote_odb(None)):
                if odb.exists(md5):
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    odb.fs.get_file(odb.oid_to_path(md5), str(destination))
                    break
            else:
                raise FileNotFoundError(f"no DVC cache or remote holds a file with md5 {md5}")
        finally:
            repo.close()
    if file_md5(destination) != md5:
        raise OSError(f"restored {destination} does not hash to {md5}")
    return destination


def _contains(out: object, relative: str) -> bool:
    out_path = str(out.def_path).rstrip("/")  # type: ignore[attr-defined]
    return relative == out_path or relative.startswith(out_path + "/")


@contextmanager
def _dvc_lock(root: Path) -> Iterator[None]:
    # flock on the repository directory itself: it exists before `dvc init`, and nothing
    # else locks it. DVC resolves some paths (params files of a stage) against the working
    # directory, so its calls run from the repository root.
    descriptor = os.open(root, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        with chdir(root):
            yield
    finally:
        os.close(descriptor)
