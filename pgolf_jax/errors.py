"""The exceptions the command line maps to exit codes, importable without JAX or NumPy (so a bad
config is reported before either loads)."""


class ConfigError(ValueError):
    """A bad preset, override or field value; the message names the culprit."""


class ArtifactError(ValueError):
    """A packed artifact that cannot be read; the message names the file."""


class ArtifactTooLarge(RuntimeError):
    """Model + code bytes over quant.max_artifact_bytes."""


class Interrupted(Exception):
    """SIGTERM/SIGINT during training: a checkpoint was written at `step`."""

    def __init__(self, step: int, signum: int, directory):
        super().__init__(f"interrupted by signal {signum} at step {step}; checkpoint saved in {directory}")
        self.step, self.signum = step, signum


class AlreadyFinished(Exception):
    """--resume of a run that wrote its submission.json: there is nothing left to do."""


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


class UsageError(ValueError):
    """A command line argparse rejects (a missing argument, a bad number); cli prints it in one line."""


def arg_parser():
    """argparse.ArgumentParser whose errors raise UsageError (one line, exit 2) instead of printing
    the usage block and exiting from inside the parser."""
    import argparse

    class ArgParser(argparse.ArgumentParser):
        def error(self, message):
            raise UsageError(f"{self.prog}: {message}")

    return ArgParser


def _int_at_least(text: str, low: int) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= {low}")  # argparse names the flag
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)
