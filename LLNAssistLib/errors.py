"""Errors that mean "the user's input is wrong": the CLI prints them as one `error:` line, exit 2."""

from __future__ import annotations


class InputError(Exception):
    """Bad input or usage. The message says what is wrong and what to do, on one line."""
