"""Reading a user's or a package's JSON file with one clear error for every way it can fail.

A missing file, a folder, unreadable bytes (not UTF-8) and malformed JSON all become the caller's
error class (an :class:`~lkseg.errors.InputError` for user input, a
:class:`~lkseg.errors.ModelError` for a model package) whose message names the file and what the
file was expected to be, so the CLI can print it without a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lkseg.errors import InputError, LKSegError

__all__ = ["read_json"]


def read_json(path: str | Path, what: str, error: type[LKSegError] = InputError) -> Any:
    """Parse the JSON file ``path``.

    Args:
        path: the file.
        what: what the file should be, for the message ("markups JSON file", "dataset.json").
        error: the exception class raised on failure. :class:`InputError` gets the path as its
            own argument (it prefixes it); any other class gets ``"{path}: ..."`` as its message.

    Returns:
        The parsed document (any JSON value).

    Raises:
        ``error``: the file is missing, not a file, unreadable, not UTF-8 or not valid JSON.
    """
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        problem = f"no such file (expected a {what})"
    except IsADirectoryError:
        problem = f"is a folder, not a {what}"
    except OSError as exc:
        problem = f"cannot read the {what} ({exc.strerror or exc})"
    except UnicodeDecodeError as exc:
        problem = f"not a {what}: the file is not UTF-8 text ({exc.reason} at byte {exc.start})"
    except json.JSONDecodeError as exc:
        problem = f"not a {what}: invalid JSON at line {exc.lineno}, column {exc.colno} ({exc.msg})"
    if issubclass(error, InputError):
        raise error(problem, path)
    raise error(f"{path}: {problem}")
