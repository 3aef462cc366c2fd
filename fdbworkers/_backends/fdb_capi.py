"""libfdb_c called directly: the C functions as ctypes function objects of our own
(:func:`_bind_c_api`, bound into :data:`_c` once :mod:`fdbworkers._backends.fdb` has
loaded the library), reading the results of ready futures, and libfdb_c's error codes
as our :class:`~fdbworkers.FDBError`. No ``fdb`` import: the binding is only the loader.
"""

from __future__ import annotations

import ctypes
import threading
from types import SimpleNamespace
from typing import Any, Final

from .._db import (
    KeyValue,
)
from .._errors import FDBError

# --------------------------------------------------------------------------------------
# libfdb_c, called directly
# --------------------------------------------------------------------------------------

#: libfdb_c's functions as ctypes function objects of our own (no ``errcheck`` hooks;
#: errors are returned codes), bound once the library is loaded (:func:`_bind_c_api`).
_c: Any = None

#: ``FDBCallback``: ``void (*)(FDBFuture* future, void* callback_parameter)``.
_CALLBACK_TYPE: Final = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)

_STREAMING_EXACT: Final = 0
_STREAMING_WANT_ALL: Final = -2
_OPTION_TIMEOUT: Final = 500
_OPTION_RETRY_LIMIT: Final = 501
_CONFLICT_READ: Final = 0
_CONFLICT_WRITE: Final = 1


class _KeyValue(ctypes.Structure):
    """``FDBKeyValue`` (packed to 4 bytes in fdb_c.h)."""

    _pack_ = 4
    _fields_ = (
        ("key", ctypes.c_void_p),
        ("key_length", ctypes.c_int),
        ("value", ctypes.c_void_p),
        ("value_length", ctypes.c_int),
    )


def _bind_c_api(lib: Any) -> Any:
    """Our own function objects over the loaded library ``lib`` (the binding's CDLL),
    with the signatures of fdb_c.h at API version 730 (the ones the binding declares).
    They release the GIL during the call, like the binding's."""
    vp, i, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
    ptr = ctypes.POINTER

    def fn(name: str, restype: Any, *argtypes: Any) -> Any:
        f = lib._FuncPtr((name, lib))
        f.restype = restype
        f.argtypes = argtypes
        return f

    return SimpleNamespace(
        get_error=fn("fdb_get_error", ctypes.c_char_p, i),
        future_cancel=fn("fdb_future_cancel", None, vp),
        future_destroy=fn("fdb_future_destroy", None, vp),
        future_is_ready=fn("fdb_future_is_ready", i, vp),
        future_set_callback=fn("fdb_future_set_callback", i, vp, _CALLBACK_TYPE, vp),
        future_get_error=fn("fdb_future_get_error", i, vp),
        future_get_int64=fn("fdb_future_get_int64", i, vp, ptr(i64)),
        future_get_key=fn("fdb_future_get_key", i, vp, ptr(vp), ptr(i)),
        future_get_value=fn("fdb_future_get_value", i, vp, ptr(i), ptr(vp), ptr(i)),
        future_get_keyvalue_array=fn(
            "fdb_future_get_keyvalue_array", i, vp, ptr(ptr(_KeyValue)), ptr(i), ptr(i)
        ),
        database_create_transaction=fn("fdb_database_create_transaction", i, vp, ptr(vp)),
        transaction_destroy=fn("fdb_transaction_destroy", None, vp),
        transaction_cancel=fn("fdb_transaction_cancel", None, vp),
        transaction_reset=fn("fdb_transaction_reset", None, vp),
        transaction_set_option=fn("fdb_transaction_set_option", i, vp, i, vp, i),
        transaction_get_read_version=fn("fdb_transaction_get_read_version", vp, vp),
        transaction_get=fn("fdb_transaction_get", vp, vp, vp, i, i),
        transaction_get_key=fn("fdb_transaction_get_key", vp, vp, vp, i, i, i, i),
        transaction_get_range=fn(
            "fdb_transaction_get_range", vp, vp, vp, i, i, i, vp, i, i, i, i, i, i, i, i, i
        ),
        transaction_set=fn("fdb_transaction_set", None, vp, vp, i, vp, i),
        transaction_clear=fn("fdb_transaction_clear", None, vp, vp, i),
        transaction_clear_range=fn("fdb_transaction_clear_range", None, vp, vp, i, vp, i),
        transaction_atomic_op=fn("fdb_transaction_atomic_op", None, vp, vp, i, vp, i, i),
        transaction_add_conflict_range=fn(
            "fdb_transaction_add_conflict_range", i, vp, vp, i, vp, i, i
        ),
        transaction_watch=fn("fdb_transaction_watch", vp, vp, vp, i),
        transaction_commit=fn("fdb_transaction_commit", vp, vp),
        transaction_get_committed_version=fn(
            "fdb_transaction_get_committed_version", i, vp, ptr(i64)
        ),
        transaction_get_versionstamp=fn("fdb_transaction_get_versionstamp", vp, vp),
        transaction_on_error=fn("fdb_transaction_on_error", vp, vp, i),
    )


class _Out(threading.local):
    """Output parameters of the ``fdb_future_get_*`` calls, one set per thread (the GIL
    is released during a call, so two threads must not share them)."""

    def __init__(self) -> None:
        self.flag = ctypes.c_int()
        self.length = ctypes.c_int()
        self.ptr = ctypes.c_void_p()
        self.i64 = ctypes.c_int64()
        self.kvs = ctypes.POINTER(_KeyValue)()
        self.flag_ref = ctypes.byref(self.flag)
        self.length_ref = ctypes.byref(self.length)
        self.ptr_ref = ctypes.byref(self.ptr)
        self.i64_ref = ctypes.byref(self.i64)
        self.kvs_ref = ctypes.byref(self.kvs)


_out: Any = _Out()
_string_at = ctypes.string_at


def _convert(e: Any) -> FDBError:
    """The binding's ``fdb.FDBError`` as ours (for the calls still made through it)."""
    return _error(int(e.code))


def _known_codes() -> frozenset[int]:
    from .._errors import FDB_ERRORS

    return frozenset(FDB_ERRORS)


_KNOWN_CODES: Final = _known_codes()


def _error(code: int) -> FDBError:
    """Our :class:`FDBError` for a code libfdb_c returned."""
    if code in _KNOWN_CODES or _c is None:
        return FDBError(code)
    raw = _c.get_error(code)
    return FDBError(code, raw.decode("utf-8", "replace") if raw else None)


def _value_of(f: int) -> bytes | None:
    o = _out
    err = _c.future_get_value(f, o.flag_ref, o.ptr_ref, o.length_ref)
    if err:
        raise _error(err)
    if not o.flag.value:
        return None
    n = o.length.value
    return _string_at(o.ptr.value, n) if n else b""


def _key_of(f: int) -> bytes:
    o = _out
    err = _c.future_get_key(f, o.ptr_ref, o.length_ref)
    if err:
        raise _error(err)
    n = o.length.value
    return _string_at(o.ptr.value, n) if n else b""


def _int64_of(f: int) -> int:
    o = _out
    err = _c.future_get_int64(f, o.i64_ref)
    if err:
        raise _error(err)
    return int(o.i64.value)


def _rows_of(f: int) -> tuple[list[KeyValue], bool]:
    """The rows of a range read future and whether there are more."""
    o = _out
    err = _c.future_get_keyvalue_array(f, o.kvs_ref, o.length_ref, o.flag_ref)
    if err:
        raise _error(err)
    at = _string_at
    rows = [
        KeyValue(at(kv.key, kv.key_length), at(kv.value, kv.value_length))
        for kv in o.kvs[: o.length.value]
    ]
    return rows, bool(o.flag.value)


def _check_error(f: int) -> None:
    err = _c.future_get_error(f)
    if err:
        raise _error(err)
