"""The one way d2o-bench replaces a file: runs, leaderboards, publish outputs, tune state and
build caches all write through here.

A write goes to a temp file beside the target, named for its writer
(`.<name>.<host>.<pid>.<token>.tmp`), is fsynced, and is renamed over the target; then the
directory is fsynced. A reader sees the old file or the new one, never half of either. Around
the write SIGTERM and SIGHUP are held off (received, then delivered once the rename is done), so
a polite stop never leaves a temp file; only SIGKILL, a power cut or a full disk can, and:

- a failed write (ENOSPC and any other error) removes its temp file and leaves the target as it
  was;
- the next writer of a target removes the temp files that dead writers of it left: a writer
  holding the target's lock (`exclusive=True`) removes every one of them, any other writer those
  of a process on this host that no longer runs, or older than `STALE_AFTER_S` from anywhere;
- a target that is a symbolic link is written where the link points (the link stays), never
  replaced by a copy that would silently fork the two;
- `all_or_none()` stages several writes and renames them together only once every one of them is
  on disk, so a full disk half way through leaves the previous set, not a mix.

The fault points (harness/faults.py) are `write:<target file name>`: disk full (injected) after
the temp file is written, a pause and a SIGKILL between writing and renaming.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import json
import os
import re
import secrets
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional

from harness.faults import disk_full_point, kill_point, pause_point

TEMP_SUFFIX = ".tmp"
# A temp file this old is a dead writer's whoever wrote it: a live write takes seconds. Temp files
# of writers on other hosts (a shared filesystem, a container) are judged by age alone, since
# their process ids mean nothing here.
STALE_AFTER_S = 3600.0
# Room left for the writer's fields in a temp file's name within the usual 255-byte limit.
_NAME_ROOM = 120
_HELD_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))

# Temp files this process is writing now: never another writer's leftovers, whatever their age.
_ACTIVE: set[str] = set()
_BATCH: contextvars.ContextVar[Optional[list]] = contextvars.ContextVar("d2o_bench_atomic_batch", default=None)


def describe_os_error(exc: OSError) -> str:
    """One line for a write that failed (the target was left as it was)."""
    where = f" {exc.filename}" if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        return f"disk full writing{where}; free space and rerun (what was there is unchanged)"
    return f"cannot write{where} ({exc.strerror or exc}); what was there is unchanged"


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def _stem(target: Path) -> str:
    return f".{target.name[:_NAME_ROOM]}."


def temp_path(target: Path) -> Path:
    """A name for this writer's temp file of `target`, in the same directory (so the rename is
    atomic), unique to this host, process and write."""
    target = Path(target)
    return target.parent / f"{_stem(target)}{_host()}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


_OURS = re.compile(r"(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[0-9a-f]+")
# What earlier writers put between the target's name and ".tmp": mkstemp's letters, or nothing.
_LEGACY = re.compile(r"[A-Za-z0-9_]*")


def _writer_fields(path: Path, target: Path) -> Optional[re.Match]:
    """The writer part of a temp file's name if it is a temp file of `target` (not of a longer
    name sharing its start: `.a.json.bak.<writer>.tmp` is not a's), else None."""
    name = path.name[:-len(TEMP_SUFFIX)]
    for start in (_stem(target), f".{target.name}.", f"{target.name}.", target.name):
        if name.startswith(start):
            rest = name[len(start):]
            match = _OURS.fullmatch(rest) or _LEGACY.fullmatch(rest)
            if match:
                return match
    return None


def _is_stale(path: Path, target: Path, exclusive: bool) -> bool:
    fields = _writer_fields(path, target)
    if fields is None or str(path) in _ACTIVE:
        return False
    if exclusive:
        return True  # the caller holds the target's lock: every other temp file is a dead writer's
    if fields.re is _OURS and fields["host"] == _host() and not _pid_alive(int(fields["pid"])):
        return True
    try:
        return time.time() - path.lstat().st_mtime > STALE_AFTER_S
    except OSError:
        return False


def _candidates(target: Path) -> Iterator[Path]:
    """Files that may be temp files of `target`: this module's, and the names earlier writers
    used (`.NAME.XXXX.tmp`, `NAME.XXXX.tmp`, `NAME.tmp`)."""
    directory = target.parent
    yield from directory.glob(f"{glob_escape(_stem(target))}*{TEMP_SUFFIX}")
    yield from directory.glob(f"{glob_escape(target.name)}.*{TEMP_SUFFIX}")
    legacy = directory / f"{target.name}{TEMP_SUFFIX}"
    if legacy.exists():
        yield legacy


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def remove_stale(target: Path, *, exclusive: bool = False) -> list[Path]:
    """Remove temp files that interrupted writers of `target` left; the removed ones."""
    target = Path(target)
    removed = []
    for path in sorted(set(_candidates(target))):
        if path.is_file() and not path.is_symlink() and _is_stale(path, target, exclusive):
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                pass  # gone already, or not ours to remove (permissions): not this write's problem
    return removed


def link_problem(path: Path) -> Optional[str]:
    """Why a write of `path` cannot go through it when it is a symbolic link (a loop, a link to a
    directory, a link into a folder that does not exist), else None."""
    path = Path(path)
    if not path.is_symlink():
        return None
    try:
        real = path.resolve(strict=False)
    except (RuntimeError, OSError):  # Python 3.11 raises RuntimeError on a loop, 3.13 OSError
        return "a symbolic link loop"
    if real.is_symlink():  # resolution stopped at a link: a loop by another road
        return "a symbolic link loop"
    if real.is_dir():
        return f"a symbolic link to the directory {real}"
    if not real.parent.is_dir():
        return f"a symbolic link to {real}, whose folder does not exist"
    return None


def resolve_target(path: Path) -> Path:
    """The file a write of `path` replaces: through a symbolic link, the file it points to (the
    link stays a link). A link no write can go through is the user's to fix: one line."""
    path = Path(path)
    if not path.is_symlink():
        return path
    problem = link_problem(path)
    if problem is not None:
        from harness.errors import BadInput

        raise BadInput(f"{path}: {problem}; replace it with a file or a link to one")
    return path.resolve(strict=False)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGTERM and SIGHUP until the block is done, then deliver them as they would have been.

    Python runs signal handlers in the main thread only, so only there can they be held; from
    another thread the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {}
    for number in _HELD_SIGNALS:
        try:
            handler = signal.signal(number, lambda signum, frame: received.append(signum))
        except (ValueError, OSError):
            continue
        if handler is None:  # installed outside Python: cannot be put back, so not held
            signal.signal(number, signal.SIG_DFL)
            continue
        previous[number] = handler
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for number in dict.fromkeys(received):
            handler = previous.get(number)
            if callable(handler):
                handler(number, None)
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), number)


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # some filesystems do not open directories; the rename is still atomic there
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    _ACTIVE.discard(str(path))
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _rename_in(tmp: Path, target: Path) -> None:
    pause_point(f"write:{target.name}")
    kill_point(f"write:{target.name}")
    os.replace(tmp, target)
    _ACTIVE.discard(str(tmp))


@contextlib.contextmanager
def replacing(path: Path, *, mode: Optional[int] = None, exclusive: bool = False) -> Iterator[Path]:
    """Yields a temp path to write the new content of `path` to (any way: a sqlite backup, a
    library's save); on leaving the block the temp file is fsynced and renamed over the target
    (inside `all_or_none()`: once the whole batch is written). On any error the temp file goes
    and the target stays as it was.

    `mode`: the new file's permissions (default: the old file's, else 0644).
    `exclusive`: the caller holds the target's lock, so every leftover temp file of it is stale.
    """
    target = resolve_target(Path(path))
    remove_stale(target, exclusive=exclusive)
    if mode is None:
        try:
            mode = target.stat().st_mode & 0o777
        except OSError:
            mode = 0o644
    batch = _BATCH.get()
    with signals_held():
        tmp = temp_path(target)
        _ACTIVE.add(str(tmp))
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            yield tmp
            disk_full_point(f"write:{target.name}", str(target))
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fchmod(fd, mode)
                os.fsync(fd)
            finally:
                os.close(fd)
            if batch is not None:
                batch.append((tmp, target))
                return
            _rename_in(tmp, target)
        except OSError as exc:
            _unlink_quietly(tmp)
            if exc.filename is None or exc.filename == str(tmp):
                # A write() or close() on a full disk names no file, or the temp file the user never
                # saw: the one line names the file that was being replaced.
                raise OSError(exc.errno, exc.strerror or str(exc), str(target)) from exc
            raise
        except BaseException:
            _unlink_quietly(tmp)
            raise
    _fsync_directory(target.parent)


def write_bytes(path: Path, data: bytes, *, mode: Optional[int] = None, exclusive: bool = False) -> None:
    with replacing(path, mode=mode, exclusive=exclusive) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)


def write_text(path: Path, text: str, *, mode: Optional[int] = None, exclusive: bool = False) -> None:
    write_bytes(path, text.encode("utf-8"), mode=mode, exclusive=exclusive)


def write_json(path: Path, obj: Any, *, mode: Optional[int] = None, exclusive: bool = False, **dumps: Any) -> None:
    """`obj` as JSON with a final newline (json.dumps's keyword arguments pass through)."""
    write_text(path, json.dumps(obj, **dumps) + "\n", mode=mode, exclusive=exclusive)


def read_bytes(path: Path) -> bytes:
    """What `path` holds for this writer: inside `all_or_none()`, the content staged for it."""
    target = resolve_target(Path(path))
    for tmp, staged in reversed(_BATCH.get() or []):
        if staged == target:
            return tmp.read_bytes()
    return target.read_bytes()


@contextlib.contextmanager
def directory_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on `directory` itself (flock on the folder): no lock file is left
    in the folder (a published page's, a committed tune state's) or anywhere else. Where the
    filesystem cannot lock a folder, the block runs unlocked, as before there was a lock."""
    try:
        import fcntl

        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except (ImportError, OSError):
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass  # a filesystem without folder locks (some network ones)
        yield
    finally:
        os.close(fd)  # closing drops the lock


@contextlib.contextmanager
def all_or_none(*, lock: bool = False) -> Iterator[None]:
    """Every write inside the block lands, or none: each is written to its temp file as it comes,
    and the renames happen together at the end, only if the block finished. A full disk on the
    last file leaves every target as it was. Nested blocks join the outer one. Also a decorator.

    `lock`: the renames hold each target directory's lock (`directory_lock`), so two writers of
    one set of files (two publishers of one folder) never interleave theirs: the folder holds one
    writer's whole set. It is taken only once everything is written."""
    if _BATCH.get() is not None:
        yield
        return
    pending: list[tuple[Path, Path]] = []
    token = _BATCH.set(pending)
    try:
        yield
    except BaseException:
        _BATCH.reset(token)
        for tmp, _ in pending:
            _unlink_quietly(tmp)
        raise
    _BATCH.reset(token)
    directories = sorted(dict.fromkeys(target.parent for _, target in pending))
    with contextlib.ExitStack() as locks:
        if lock:
            for directory in directories:  # sorted: two writers take them in one order
                locks.enter_context(directory_lock(directory))
        with signals_held():
            try:
                for tmp, target in pending:
                    _rename_in(tmp, target)
            except BaseException:
                for tmp, _ in pending:
                    if str(tmp) in _ACTIVE:
                        _unlink_quietly(tmp)
                raise
    for directory in directories:
        _fsync_directory(directory)
