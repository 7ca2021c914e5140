"""The one rule from an exception to a row's error kind and message."""

from __future__ import annotations

from harmony_ops.imageio import ImageError
from harmony_ops.remote import RedirectRefused
from schemas.vocabulary import ErrorKind


def is_out_of_memory(exc: BaseException) -> bool:
    # torch.OutOfMemoryError, CUDA "out of memory" RuntimeErrors and MemoryError alike.
    return isinstance(exc, MemoryError) or "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError"


def classify(exc: BaseException, fallback: ErrorKind, storage: bool = True) -> tuple[str, str]:
    """(kind, message) for a row whose processing raised `exc`.

    Order matters: an input guard says exactly what is wrong; an out-of-memory error is the batch's
    size, not the row's content; a missing object and other OSErrors are the store's when the step
    touched storage (`storage`; a decoder's OSError on bytes in memory is the decoder's); anything
    else is the step's own `fallback` kind (decode_error, model_error, finish_error, ...).
    """
    if isinstance(exc, ImageError):
        return exc.kind, str(exc)
    if isinstance(exc, RedirectRefused):  # an allowed HTTP(S) source pointing elsewhere: not followed
        return ErrorKind.URI_NOT_ALLOWED, str(exc)
    if is_out_of_memory(exc):
        return ErrorKind.OUT_OF_MEMORY, f"{type(exc).__name__}: {exc}"
    if storage and isinstance(exc, FileNotFoundError):
        return ErrorKind.MISSING_OBJECT, f"object not found: {exc}"
    if storage and isinstance(exc, OSError):
        return ErrorKind.STORAGE_ERROR, f"{type(exc).__name__}: {exc}"
    return fallback, f"{type(exc).__name__}: {exc}"
