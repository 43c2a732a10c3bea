"""One exception type for problems the user can fix; the CLI prints it as one line and exits 2."""
import errno


class UserError(Exception):
    """A bad input, setting or artefact, with a message that says what to do."""


# What the machine says when it refuses a write, and what the user can do about it.
MACHINE_ERRNOS = {
    errno.ENOSPC: "free space on that disk or pass out_dir= on one with more room",
    errno.EDQUOT: "free space within your disk quota or pass out_dir= on another disk",
    errno.EFBIG: "that file system limits the size of a file; pass out_dir= on another",
    errno.EROFS: "that file system is read-only; pass a writable out_dir=",
    errno.EACCES: "make it writable for you or pass a writable out_dir=",
    errno.EPERM: "make it writable for you or pass a writable out_dir=",
    errno.EIO: "the disk reported an I/O error; check it, or pass out_dir= on another disk",
}


def machine_error(path, err: OSError, verb: str = "cannot write") -> UserError:
    """A failed file operation as one line: the file, the system's reason and what to do. Every stage
    keeps what it finished (folds, epochs, cached images), so the same command resumes once fixed."""
    advice = MACHINE_ERRNOS.get(err.errno, "pass another out_dir=")
    return UserError(f"{verb} {path}: {err.strerror or err}; {advice}, then rerun the same command "
                     "(finished folds and epochs are kept)")
