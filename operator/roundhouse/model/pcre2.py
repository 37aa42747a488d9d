"""Regular expressions checked in HAProxy's dialect: PCRE2, compiled the way HAProxy does.

Python's `re` accepts patterns PCRE2 refuses (\\u escapes, group names over 32
characters, more than 250 nested groups, quantifiers over 65535) and the other way
round. A spec's regular expression must compile where it runs: in HAProxy. The CRD
cannot run PCRE2, so the model (the operator and the offline CLI alike) compiles each
pattern with the system's libpcre2-8, the library HAProxy links, through ctypes: no
compiler, no extra wheel, the same library in the image (Debian's grep needs it).

HAProxy's regex_comp(): pcre2_compile(pattern, options) with PCRE2_CASELESS for -i and
PCRE2_NO_AUTO_CAPTURE when it needs no captures (ACL matches), then
pcre2_jit_compile(PCRE2_JIT_COMPLETE), whose failure it also refuses (unless JIT is
not supported at all).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache

NO_AUTO_CAPTURE = 0x00002000  # PCRE2_NO_AUTO_CAPTURE
_JIT_COMPLETE = 0x00000001  # PCRE2_JIT_COMPLETE
_ERROR_JIT_BADOPTION = -45  # PCRE2_ERROR_JIT_BADOPTION: no JIT here, HAProxy goes on


class PCRE2Unavailable(RuntimeError):
    """libpcre2-8 is not installed: regular expressions cannot be checked."""


@cache
def _library() -> ctypes.CDLL:
    name = ctypes.util.find_library("pcre2-8") or "libpcre2-8.so.0"
    try:
        lib = ctypes.CDLL(name)
    except OSError as err:
        raise PCRE2Unavailable(f"cannot load {name} to check regular expressions as "
                               f"HAProxy does: {err}") from err
    lib.pcre2_compile_8.restype = ctypes.c_void_p
    lib.pcre2_compile_8.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint32,
                                    ctypes.POINTER(ctypes.c_int),
                                    ctypes.POINTER(ctypes.c_size_t), ctypes.c_void_p]
    lib.pcre2_jit_compile_8.restype = ctypes.c_int
    lib.pcre2_jit_compile_8.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.pcre2_code_free_8.restype = None
    lib.pcre2_code_free_8.argtypes = [ctypes.c_void_p]
    lib.pcre2_get_error_message_8.restype = ctypes.c_int
    lib.pcre2_get_error_message_8.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
    return lib


def _message(lib: ctypes.CDLL, code: int) -> str:
    buffer = ctypes.create_string_buffer(256)
    lib.pcre2_get_error_message_8(code, buffer, len(buffer))
    return buffer.value.decode(errors="replace")


def compile_error(pattern: str, options: int = 0) -> str | None:
    """Why HAProxy would refuse `pattern` (PCRE2's message and offset), None if it
    compiles. Raises PCRE2Unavailable without libpcre2-8."""
    lib = _library()
    raw = pattern.encode()
    if b"\0" in raw:  # HAProxy passes a C string: a NUL would cut the pattern
        return "a NUL character cannot be in a pattern"
    code, offset = ctypes.c_int(0), ctypes.c_size_t(0)
    compiled = lib.pcre2_compile_8(raw, len(raw), options, ctypes.byref(code),
                                   ctypes.byref(offset), None)
    if not compiled:
        return f"{_message(lib, code.value)} at offset {offset.value}"
    try:
        jit = lib.pcre2_jit_compile_8(compiled, _JIT_COMPLETE)
        if jit < 0 and jit != _ERROR_JIT_BADOPTION:
            return f"JIT compilation failed: {_message(lib, jit)}"
    finally:
        lib.pcre2_code_free_8(compiled)
    return None


def full_match(pattern: str) -> str:
    """The pattern as rendered: anchored at both ends, so it must match the whole value.
    The group closes any inline option ((?i), (?x), ...) before the final anchor."""
    return f"^(?:{pattern})$"


def match_error(pattern: str) -> str | None:
    """Why HAProxy would refuse `pattern` as a full-match ACL (`-m reg`), None if fine.

    Both the bare pattern and its rendered form must compile: a pattern whose end
    swallows what the renderer appends (an extended-mode # comment, an unterminated \\Q)
    compiles alone but not wrapped, and one that closes the renderer's group early
    (`a)|(b`) compiles wrapped but not alone.
    """
    return (compile_error(pattern, NO_AUTO_CAPTURE)
            or compile_error(full_match(pattern), NO_AUTO_CAPTURE))
