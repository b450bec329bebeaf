"""The exceptions the command line maps to exit codes, importable without JAX or NumPy (so a bad
config is reported before either loads)."""


class ArtifactError(ValueError):
    """A packed artifact that cannot be read; the message names the file."""


class ArtifactTooLarge(RuntimeError):
    """Model + code bytes over quant.max_artifact_bytes."""


class Interrupted(Exception):
    """SIGTERM/SIGINT during training: a checkpoint was written at `step`."""

    def __init__(self, step: int, signum: int, directory):
        super().__init__(f"interrupted by signal {signum} at step {step}; checkpoint saved in {directory}")
        self.step, self.signum = step, signum


class OutputRefused(FileExistsError):
    """A command was asked to write over a file it did not make, or into a run directory it does
    not own; the message names the flag and the path."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where SIGINT raises KeyboardInterrupt, so `finally` blocks and child-process
    cleanup run alike for both (cli.main installs the handler)."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


def signum_of(exc: BaseException) -> int:
    """The signal behind a KeyboardInterrupt (2 for a plain ^C)."""
    return getattr(exc, "signum", 2)
