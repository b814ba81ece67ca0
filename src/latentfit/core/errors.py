"""The errors a user can fix. A stage that meets one prints its message and exits 1, with no traceback.

They live in one small module so that catching them (runtime.py) costs a stage no dependency on the
modules that raise them: `dvc.yaml` lists the modules a stage imports, and a change re-runs exactly
the stages that import the changed module.
"""


class LatentfitError(RuntimeError):
    """A problem the message explains, with what to do about it."""


class ParamsError(LatentfitError, ValueError):
    """A params.yaml value is missing, mistyped or out of range."""


class DataError(LatentfitError):
    """Data could not be fetched, verified or read."""


class SourceUnreachable(DataError):
    """A mirror did not answer at all; it is not asked again for the remaining files."""


class TrainingError(LatentfitError):
    """Training diverged."""


class TrackingError(LatentfitError):
    """The MLflow tracking store is required but cannot be reached."""


class Interrupted(BaseException):
    """SIGTERM (a `kill`, a queue worker stopped, a CI timeout), raised like Ctrl-C's KeyboardInterrupt so that
    one handler stops a stage or `latentfit ui` cleanly for both. Not an error: nothing went wrong."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def raise_interrupted(signum: int, frame: object) -> None:
    """A signal handler: `signal.signal(signal.SIGTERM, raise_interrupted)`."""
    raise Interrupted(signum)
