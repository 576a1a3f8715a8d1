"""Errors that reach the user.

A `CompressorError` is a problem with the user's input (a file, a flag, a recipe), not a bug:
the CLI prints its message without a traceback and exits with code 2, so every raise site must
say what was wrong and how to fix it. A `ToolchainError` is a crash of a pass, an exporter or a
runtime on valid input (exit 3).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_TOOLCHAIN = 3


class CompressorError(Exception):
    """Bad input or usage; the message names the problem and the fix."""

    exit_code = EXIT_BAD_INPUT


class ToolchainError(Exception):
    """A pass, exporter or runtime crashed on valid input: not the user's to fix by changing it.
    The CLI exits 3 with this message (which names the stage) and shows the cause's traceback only
    with --verbose."""

    exit_code = EXIT_TOOLCHAIN


class MissingExtraError(CompressorError):
    """An optional backend is not installed; the message names the extra to install."""

    def __init__(self, what: str, extra: str, module: str) -> None:
        super().__init__(
            f"{what} needs the optional package '{module}', which is not installed. "
            f"Install it with: pip install 'compressor[{extra}]'"
        )
        self.extra = extra


def first_line(e: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, for a message that must fit on one screen."""
    text = " ".join(str(e).split())
    return text[:limit] or type(e).__name__
