"""A full disk, said in one line that names the path: the libraries a stage writes through each say it their own
way, and some never say it. Python raises `OSError` errno 28 (ENOSPC; 122, EDQUOT, for a full quota) without a
file name when a write fails; safetensors wraps it in its own error ("No space left on device" inside); torch's
zip writer only says "PytorchStreamWriter failed writing file ..." or "[enforce fail at inline_container.cc]
unexpected pos ...", which is what a write cut short by a full disk looks like to it."""

import errno
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

OUT_OF_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
OUT_OF_SPACE_MESSAGES = ("No space left on device", "Disk quota exceeded", "StorageFull", "PytorchStreamWriter failed",
                         "unexpected pos")


class DiskFullError(OSError):
    """A write failed for want of space; the message names the path and what is free there."""

    def __init__(self, message: str):
        super().__init__(message)
        self.errno = errno.ENOSPC


def is_out_of_space(error: BaseException) -> bool:
    """Whether `error`, or an error it was raised from, is a write that failed for want of space."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in OUT_OF_SPACE_ERRNOS:
            return True
        if any(message in str(error) for message in OUT_OF_SPACE_MESSAGES):
            return True
        error = error.__cause__ or error.__context__
    return False


def free_space(path: Path) -> str:
    """What is free on the file system holding `path` (its nearest existing ancestor), in words."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            free = shutil.disk_usage(candidate).free
            return f"{free / 2**20:.0f} MiB free there now" if free >= 2**20 else f"{free} bytes free there now"
    return "free space unknown"


def disk_full_message(path: str | Path, error: BaseException) -> str:
    detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"{path}: no space left on device while writing it ({free_space(Path(path))}; {detail})"


@contextmanager
def out_of_space_named(path: str | Path) -> Iterator[None]:
    """Turn a failed write for want of space inside the block into a `DiskFullError` naming `path`."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as error:
        if not is_out_of_space(error):
            raise
        raise DiskFullError(disk_full_message(path, error)) from error


def disk_full_line(error: BaseException) -> str | None:
    """One line for an out-of-space failure that no `out_of_space_named` block named (data preparation, a
    library's own file): the file name the error carries, if any. None when `error` is not out of space."""
    if isinstance(error, DiskFullError):
        return str(error)
    if not is_out_of_space(error):
        return None
    named = error
    while named is not None and not getattr(named, "filename", None):
        named = named.__cause__ or named.__context__
    return disk_full_message(named.filename if named is not None else "(unnamed file)", error)
