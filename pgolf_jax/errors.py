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
