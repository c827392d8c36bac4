"""Class and file names made safe to show: in figures, on a terminal and in JSON.

Names come from the file system, where they are bytes. Python decodes bytes that are not UTF-8
with ``surrogateescape`` (``b"cl\\xe9ss"`` becomes ``"cl\\udce9ss"``), which keeps the real path
for opening the file but is not text: matplotlib's font code refuses it, a UTF-8 terminal
raises on it, and JSON can only carry it as a lone surrogate escape that strict parsers reject.
So names are shown, never opened, through :func:`display_name`; the dataset keeps the original.
"""

from __future__ import annotations


def display_name(name: str) -> str:
    """``name`` as valid Unicode: undecodable bytes written ``\\xe9``, the rest unchanged.

    Backslash escapes rather than U+FFFD replacement characters keep two names that differ
    only in such bytes apart (they can be two classes) and show which byte was there.
    """
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # surrogates that did not come from undecodable bytes
        raw = name.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


def plot_text(name: str) -> str:
    """:func:`display_name`, with ``$`` escaped so matplotlib does not parse it as math.

    A class named ``a$\\b$`` would otherwise be typeset as (invalid) mathtext and stop the figure.
    """
    return display_name(name).replace("$", r"\$")
