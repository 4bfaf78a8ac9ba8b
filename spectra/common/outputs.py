"""Where commands write: never delete or overwrite what this toolkit did not make, unless told to.

Every command that writes a store or file calls :func:`claim_output` first. An output path that does not
exist is created by the command; an existing one is touched only

* with ``resume`` (the command then reopens it and checks its identity itself), or
* with ``overwrite``, and then only if it is a store this toolkit made (its ``zarr.json`` carries one of our
  ``format`` strings) or a plain file of the expected suffix: a folder of someone's FITS files is never
  removed, whatever the options.

One writer per output: :func:`lock_output` takes an exclusive lock file next to the output
(``<output>.lock``, made atomically, holding the writer's pid, host, start time and command) for as long as a
command writes it, so two runs never build, resume or replace the same output together. A lock left by a process
that died on this host is taken over (with a warning); one from another host is never taken over. New stores are
built under a temporary name (:func:`creation_path`, a ``spectra.common.scratch`` name) and renamed into place
(:func:`publish`), so the final name only ever shows a complete start, never a half-made one.

Light on purpose (standard library only): ``spectra``, ``runtime`` and ``catalog`` use it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import secrets
import shlex
import shutil
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .scratch import SCRATCH_SUFFIX, scratch_name

__all__ = ["OutputExistsError", "OutputLock", "OutputLockedError", "claim_output", "claim_report_folder",
           "creation_path", "is_our_store", "lock_output", "lock_path", "publish", "remove_leftover_creations"]


class OutputExistsError(FileExistsError):
    """The output exists and the command was not told (or is not allowed) to replace it."""


def is_our_store(path: Path, formats: tuple[str, ...]) -> bool:
    """True if ``path`` is a Zarr group whose ``format`` attribute is one of ``formats``."""
    meta = path / "zarr.json"
    if not meta.is_file():
        return False
    try:
        attrs = json.loads(meta.read_text()).get("attributes", {})
    except (OSError, ValueError):
        return False
    return attrs.get("format") in formats


def claim_output(path: str | Path, what: str, formats: tuple[str, ...] = (), overwrite: bool = False,
                 resume: bool = False, resumable: bool = True) -> Path:
    """Check that the command may write ``path``; with ``overwrite`` remove a previous output of ours.

    Arguments:
        path: the output (a Zarr store folder when ``formats`` is given, else a file).
        what: the kind of output, for messages ("survey", "catalogue", "Parquet file").
        formats: the store ``format`` strings that mark a store as ours; empty for plain files.
        overwrite: replace an existing output of ours.
        resume: an existing output will be reopened by the caller (no check here beyond existence).
        resumable: the command has ``--resume``; False keeps it out of the advice (``runtime example-survey``
            was told to "add --resume", an option it does not have).

    Returns the path. Raises :class:`OutputExistsError` when the path exists and may not be replaced, and
    ``FileNotFoundError`` when its parent folder does not exist.
    """
    path = Path(path)
    if not path.parent.exists():
        raise FileNotFoundError(f"cannot write {what} {path}: folder {path.parent} does not exist")
    if not path.exists() and not path.is_symlink():
        return path
    if resume:
        return path
    if not overwrite:
        hint = "add --resume to complete it, --overwrite to replace it," if resumable and formats and is_our_store(
            path, formats) else "add --overwrite to replace it"
        raise OutputExistsError(f"{path} exists: {hint} or choose another output")
    if path.is_symlink():  # replacing it would delete the link's target or the link, neither ours to decide
        raise OutputExistsError(f"{path} is a symlink; --overwrite never replaces a link (choose another output, or "
                                "remove the link yourself)")
    if formats:
        if not path.is_dir() or not is_our_store(path, formats):
            raise OutputExistsError(f"{path} exists and is not a {what} made by this toolkit; refusing to delete "
                                    "it even with --overwrite (choose another output)")
        shutil.rmtree(path)
    else:
        if path.is_dir():
            raise OutputExistsError(f"{path} is a folder; --overwrite replaces files only (choose another output)")
        path.unlink()
    return path


def claim_report_folder(out: str | Path, what: str, marker: str, overwrite: bool = False) -> Path:
    """Create the report folder ``out``, or accept an existing one that may be written: an empty folder, or, with
    ``overwrite``, an earlier report of the same command (it holds ``marker``, the file the command always writes).

    Why: these commands used to write into any existing folder, silently replacing files of the same names
    (a ``report.md`` of someone else's). Like every other command they now go through
    :func:`claim_output`: an existing output needs ``--overwrite``, and even then a folder this
    command did not make is refused. With ``overwrite`` the command's files are replaced, nothing is deleted.
    """
    out = Path(out)
    if out.is_dir() and not out.is_symlink():
        if not any(out.iterdir()):
            return out
        if overwrite and (out / marker).is_file():
            return out
        if overwrite:
            raise OutputExistsError(f"{out} exists and holds no {marker}: it is not a {what} this command wrote; "
                                    "refusing to write into it even with --overwrite (choose another --out)")
    elif overwrite and (out.exists() or out.is_symlink()):
        raise OutputExistsError(f"{out} exists and is not a folder; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)  # as before: a report may go into a new folder tree
    claim_output(out, what)  # an existing output without --overwrite: "exists: add --overwrite ..."
    out.mkdir()
    return out


# ------------------------------------------------------------------------------------------- one writer
class OutputLockedError(FileExistsError):
    """Another run holds the output's lock (a FileExistsError: the command line turns it into exit status 2)."""


def lock_path(path: str | Path) -> Path:
    """The lock file of output ``path``: ``<output>.lock`` beside it (on the same filesystem as the output)."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


@dataclass
class OutputLock:
    """A held lock (:func:`lock_output`); :meth:`release` removes the lock file only while it is still ours."""

    path: Path  # the lock file
    output: Path
    token: str  # this holder's random mark, so a release never removes a lock another run made since
    taken_over: str = ""  # the warning given when a stale lock was replaced, else ""

    def release(self) -> None:
        holder = _read_holder(self.path, wait=0.0)
        if isinstance(holder, dict) and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_output(path: str | Path, what: str, command: str | None = None,
                warn: Callable[[str], None] | None = None) -> OutputLock:
    """Take the exclusive lock of output ``path`` for this process; release it in a ``finally``.

    Raises :class:`OutputLockedError` (one line naming the other run: pid, host, start, command) while another
    live run holds it, and ``FileNotFoundError`` when the output's folder does not exist. A lock whose process
    died on this host is replaced, and ``warn`` (default: a line on stderr) is told; a lock from another host is
    never replaced (this host cannot tell whether that run is alive): the message says how to remove it.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {what} {path}: folder {path.parent} does not exist")
    lock = lock_path(path)
    token = secrets.token_hex(8)
    record = _holder_record(token, command)
    taken_over = ""
    for _ in range(5):  # a few rounds: a lock may be released or replaced between our steps
        if _create_exclusive(lock, json.dumps(record)):
            return OutputLock(lock, path, token, taken_over)
        holder = _read_holder(lock)
        if holder is None:  # released meanwhile: try again
            continue
        if not isinstance(holder, dict):
            raise OutputLockedError(f"{path} is locked by {lock}, which names no run ({holder}); if no run is "
                                    f"writing {path}, remove {lock} and re-run")
        if not _is_stale(holder):
            raise OutputLockedError(_locked_message(path, lock, holder))
        if _remove_if_unchanged(lock, holder):
            taken_over = (f"took over the lock of {path} left by pid {holder.get('pid')} on this host (started "
                          f"{holder.get('started')}), which is no longer running")
            (warn or _warn_stderr)(taken_over)
    raise OutputLockedError(f"{path}: could not take its lock {lock} (other runs keep taking it); try again")


def _warn_stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _holder_record(token: str, command: str | None) -> dict:
    """What a lock file says about its holder: enough for another run's message and for stale detection."""
    if command is None:
        command = shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "python"
    record = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "command": command[:500],
              "token": token}
    started = _process_start(os.getpid())
    if started is not None:
        record["process_start"] = started  # tells a live pid from a reused one
    return record


def _create_exclusive(lock: Path, text: str) -> bool:
    """Create ``lock`` holding ``text`` if it does not exist: False if it does. Written to a private file first
    and hard-linked into place (atomic, and the lock is never seen empty); ``O_CREAT | O_EXCL`` where the
    filesystem has no hard links."""
    draft = lock.with_name(f"{lock.name}.{os.getpid()}-{secrets.token_hex(4)}")
    draft.write_text(text)
    try:
        os.link(draft, lock)
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links here (some network and FUSE filesystems)
        return _create_with_excl(lock, text)
    finally:
        draft.unlink(missing_ok=True)


def _create_with_excl(lock: Path, text: str) -> bool:
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return True


def _read_holder(lock: Path, wait: float = 1.0) -> dict | str | None:
    """The lock file's record; None if there is no lock file; a short description if it is not a record
    (after waiting up to ``wait`` seconds: an ``O_EXCL`` lock is empty until its writer has written it)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            text = lock.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            return f"unreadable: {exc.strerror}"
        try:
            holder = json.loads(text)
            if isinstance(holder, dict):
                return holder
        except ValueError:
            pass
        if time.monotonic() >= deadline:
            return "empty" if not text.strip() else "not a lock record"
        time.sleep(0.05)


def _is_stale(holder: dict) -> bool:
    """True only for a lock made on this host by a process that is no longer running (or whose pid now belongs
    to a later process). A lock from another host is never stale here: this host cannot see its processes."""
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    recorded, now = holder.get("process_start"), _process_start(pid)
    return recorded is not None and now is not None and recorded != now


def _process_start(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot (Linux ``/proc``), or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _remove_if_unchanged(lock: Path, holder: dict) -> bool:
    """Remove the stale lock ``holder`` came from, and nothing else: it is moved aside atomically, and put back
    if what was moved is another run's (a run that took it over between our read and our move)."""
    aside = lock.with_name(f"{lock.name}.stale-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return False
    moved = _read_holder(aside, wait=0.0)
    if isinstance(moved, dict) and moved.get("token") == holder.get("token"):
        aside.unlink(missing_ok=True)
        return True
    with contextlib.suppress(OSError):  # fails only if a third run locked it in these microseconds
        os.link(aside, lock)
    aside.unlink(missing_ok=True)
    return False


def _locked_message(path: Path, lock: Path, holder: dict) -> str:
    """One line naming the run that holds the lock, and what to do."""
    pid, host = holder.get("pid"), holder.get("host")
    who = f"{path} is being written by pid {pid} on host {host} since {holder.get('started')}"
    if holder.get("command"):
        who += f" ({holder['command']})"
    if host == socket.gethostname():
        return f"{who}; wait for it to finish (or stop it) and re-run"
    return (f"{who}; wait for it to finish, or, if that run is no longer running, remove {lock} and re-run "
            "(this host cannot check a process on another host)")


# ------------------------------------------------------------------------------------- atomic creation
def creation_path(path: str | Path) -> Path:
    """A fresh temporary name beside ``path`` to build a new store under (``spectra.common.scratch.scratch_name``, role
    ``creating``: ``.<name>.creating-<pid>-<hex>.cinn4most-partial``): same folder, so :func:`publish` is a
    rename, and recognisably this toolkit's."""
    return scratch_name(path, "creating")


def publish(built: Path, path: str | Path) -> Path:
    """Rename the finished store ``built`` to ``path`` (atomic on one filesystem); refuses to replace anything."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        raise OutputExistsError(f"{path} appeared while this run was creating it; choose another output")
    try:
        os.rename(built, path)
    except OSError as exc:
        raise OutputExistsError(f"cannot move the new store {built} to {path} ({exc.strerror})") from None
    return path


def remove_leftover_creations(path: str | Path) -> list[Path]:
    """Remove temporary stores (:func:`creation_path`) of ``path`` that a crashed run left; call it only while
    holding the output's lock (every run that creates one holds the lock, so none of them is in use)."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.creating-\d+-[0-9a-f]+{re.escape(SCRATCH_SUFFIX)}")
    removed = []
    for candidate in sorted(path.parent.iterdir()):
        if pattern.fullmatch(candidate.name) and candidate.is_dir() and not candidate.is_symlink():
            shutil.rmtree(candidate)
            removed.append(candidate)
    return removed
