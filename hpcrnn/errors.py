"""Errors a user can fix, and the exit statuses every stage entry point uses (documented in the README)."""

EXIT_OK = 0  # the stage finished
EXIT_ERROR = 1  # an unexpected internal error (a bug): rerun with --debug for the traceback
EXIT_USAGE = 2  # usage, config or input error: a one-line message names the culprit
EXIT_DIVERGED = 3  # training produced a non-finite loss; the last good checkpoint is intact
EXIT_STORAGE = 4  # an output could not be written (disk full, quota, I/O error); what was complete is intact
EXIT_REQUEUE = 75  # checkpointed on the stop signal (SIGUSR2/time limit): requeue me (EX_TEMPFAIL)
EXIT_STOPPED = 76  # checkpointed on SIGTERM (scancel, shutdown): stopped, do not requeue


class HpcrnnError(Exception):
    """An error with a one-line message meant for the user (no traceback)."""

    exit_code = EXIT_USAGE


class ConfigError(HpcrnnError):
    """A bad config file, key, value or override."""


class InputError(HpcrnnError):
    """Bad input data: corpus, HDF5 file, checkpoint, prompt."""


class DivergedError(HpcrnnError):
    """A non-finite loss."""

    exit_code = EXIT_DIVERGED


class LockedError(HpcrnnError):
    """Another live process holds the run."""


class StorageError(HpcrnnError):
    """Writing an output failed (disk full, quota): nothing complete was lost."""

    exit_code = EXIT_STORAGE
