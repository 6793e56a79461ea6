"""How model errors name what went wrong: an exception and an image shape, in one line."""

from __future__ import annotations


def failure(error: BaseException) -> str:
    """`Type: first line of the message`, for one-line errors."""
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"


def shape_text(shape: tuple[int, ...]) -> str:
    """(3, 32, 32) → "3x32x32": how errors, the store and reports write an image shape."""
    return "x".join(str(size) for size in shape)
