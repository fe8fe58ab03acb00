"""User-facing failures: one clear line on stderr and a non-zero exit, never a traceback."""
import argparse
import difflib
import functools
import sys


class UserError(Exception):
    """A problem with the user's input (files, config, checkpoints) that the user can fix."""


class Interrupted(Exception):
    """A stop signal (SIGTERM, SIGUSR1: pre-emption, a time limit) ended the command where rerunning it resumes."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.exit_code = 128 + signum  # as a shell reports a process the signal killed


EXIT_USER_ERROR = 2


def refuse(message):
    """End the command with one line, "error: <message>", and exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line, "error: <what> (see <prog> --help)", and exit code 2, like every
    other user error (argparse itself prints the whole usage first)."""

    def error(self, message):
        refuse(f"{message} (see {self.prog} --help)")


def closest(name, valid):
    """The valid name nearest to `name` (difflib), or None when none is near: the one "did you mean"."""
    matches = difflib.get_close_matches(str(name), [str(value) for value in valid], n=1)
    return matches[0] if matches else None


def unknown(what, name, valid, quote=lambda text: f"'{text}'", list_valid=True) -> str:
    """The message `unknown <what> '<name>'; did you mean '<nearest>'?`, or `...; valid: <all>` when none is near
    (nothing more with list_valid=False); `quote` writes a name."""
    near = closest(name, valid)
    hint = f"; did you mean {quote(near)}?" if near else f"; valid: {', '.join(valid)}" if list_valid else ""
    return f"unknown {what} {quote(name)}{hint}"


def one_line(err) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def cli(main):
    """Wrap a command-line entry point so that a UserError becomes one line and exit code 2, and a stop signal
    one line and exit code 128 + its number."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            refuse(err)
        except Interrupted as err:
            print(err, file=sys.stderr)
            sys.exit(err.exit_code)
        except KeyboardInterrupt:
            print("interrupted; rerun the same command to resume", file=sys.stderr)
            sys.exit(130)

    return wrapper
