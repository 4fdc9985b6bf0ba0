"""A streaming JSON scanner that finds where values start and end, in bytes.

Pure: the only I/O is reading the binary stream it is given. It keeps in memory only the
bytes from the oldest position a caller still needs (:meth:`Scanner.keep_from`) to the read
position, plus one read-ahead chunk. So a 200 MB single-line document costs one chunk to
walk through, and one value (a Bundle entry's ``resource``) costs its own size to keep.

Skipping a container: the standard library's C decoder (``raw_decode``) runs over the
buffer decoded as Latin-1, where one byte is one character, so the end it returns is a byte
offset (JSON's structural characters are ASCII, and no byte of a multi-byte UTF-8 sequence
is one of them). The values it builds are thrown away. A container it cannot decode within
the buffer (larger than the read-ahead, or not valid JSON) is walked bracket by bracket
with possessive regular expressions instead, trying the decoder again on each container
inside it; this walk is lenient.

Long arrays of objects (a Bundle's ``entry``) go faster by runs: once two elements have
been walked, the bytes from the end of one to the first key of the next (``},{"fullUrl"``)
are a *signature* of an element boundary. The last signature within the next
``RUN_BYTES`` is taken as a cut, and everything up to it is decoded at once by msgspec (C)
as a JSON array. A signature that lies inside an element (in a string, or a nested array)
cannot give a valid array (the brackets or the string would be left open), so a run that
decodes ends on a true element boundary; one that does not is halved until one does, or
the next element is walked as above. msgspec's ``Raw`` gives an element's exact bytes.

It is a skimmer, not a validator: values the caller keeps are parsed by orjson afterwards
(which rejects what is not JSON). Structure errors it does meet raise :class:`ScanError`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import IO, Any, Final

import msgspec
import orjson

READ_BYTES: Final = 1024 * 1024
LOOKAHEAD: Final = 256 * 1024  # bytes held ahead of a container before decoding it whole
RUN_BYTES: Final = 1024 * 1024  # bytes of array elements decoded at once (see above)
_DECODER: Final = json.JSONDecoder()
BOM: Final = b"\xef\xbb\xbf"

# Everything up to the next bracket or string, and whole strings, possessively (no
# backtracking): one match skims a run of a container's content.
_SKIM: Final = re.compile(rb'(?:[^\[\]{}"]++|"(?:[^"\\]++|\\.)*+")*+', re.DOTALL)
_STRING: Final = re.compile(rb'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
_SCALAR: Final = re.compile(rb"[^\s,\]}:\[{\"]+")
_SPACE: Final = re.compile(rb"[ \t\r\n]*+")
_WHITESPACE: Final = frozenset(b" \t\r\n")
# An object's opening brace and its first key: the end of an element boundary signature.
_OBJECT_KEY: Final = re.compile(rb'\{[ \t\r\n]*+"(?:[^"\\]++|\\.)*+"', re.DOTALL)
RAW_ELEMENTS: Final = msgspec.json.Decoder(list[msgspec.Raw])


class ScanError(ValueError):
    """The bytes are not the JSON structure expected (at absolute offset ``offset``)."""

    def __init__(self, offset: int, what: str) -> None:
        super().__init__(f"{what} at byte {offset}")
        self.offset = offset
        self.what = what


class Scanner:
    """A read position over a binary stream; offsets are absolute (from the stream's start)."""

    def __init__(self, stream: IO[bytes], read_bytes: int = READ_BYTES) -> None:
        self._stream = stream
        self._read_bytes = read_bytes
        self._buf = b""
        self._base = 0  # absolute offset of _buf[0]
        self._pos = 0  # index into _buf
        self._keep: int | None = None  # absolute offset the caller still needs
        self._eof = False
        self._text: str | None = None  # _buf as Latin-1, for the decoder
        self._lookahead = min(LOOKAHEAD, read_bytes)

    # ------------------------------------------------------------------ buffer

    @property
    def offset(self) -> int:
        return self._base + self._pos

    def keep_from(self, offset: int | None) -> None:
        """Keep the bytes from ``offset`` on (until called with None)."""
        self._keep = offset

    def slice(self, start: int, end: int) -> bytes:
        """Bytes ``start``..``end`` (absolute); ``start`` must have been kept."""
        if start < self._base:
            raise ValueError("bytes no longer held")
        return self._buf[start - self._base : end - self._base]

    def _fill(self) -> bool:
        """Read more; False at end of stream. Drops the bytes nobody needs any more."""
        if self._eof:
            return False
        drop = self._pos if self._keep is None else min(self._pos, self._keep - self._base)
        held = len(self._buf) - drop
        data = self._stream.read(max(self._read_bytes, held))
        if not data:
            self._eof = True
            return False
        self._buf = self._buf[drop:] + data
        self._base += drop
        self._pos -= drop
        self._text = None
        return True

    def peek(self) -> int | None:
        """The next byte after whitespace (not consumed); None at end of stream."""
        if self._pos < len(self._buf):
            char = self._buf[self._pos]
            if char not in _WHITESPACE:
                return char
        while True:
            m = _SPACE.match(self._buf, self._pos)
            assert m is not None
            self._pos = m.end()
            if self._pos < len(self._buf):
                return self._buf[self._pos]
            if not self._fill():
                return None

    def skip_bom(self) -> None:
        while len(self._buf) - self._pos < len(BOM) and self._fill():
            pass
        if self._buf.startswith(BOM, self._pos):
            self._pos += len(BOM)

    def expect(self, char: bytes) -> None:
        if self.peek() != char[0]:
            raise ScanError(self.offset, f"expected {char.decode()}")
        self._pos += 1

    def accept(self, char: bytes) -> bool:
        """Consume ``char`` if it is next (after whitespace)."""
        if self.peek() == char[0]:
            self._pos += 1
            return True
        return False

    # ------------------------------------------------------------------ values

    def skip_value(self) -> tuple[int, int]:
        """Skip the next value; its (start, end) absolute offsets."""
        first = self.peek()
        if first is None:
            raise ScanError(self.offset, "unexpected end")
        start = self.offset
        if first == ord('"'):
            self._skip_string()
        elif first in b"{[":
            self._skip_container()
        else:
            self._skip_scalar()
        return start, self.offset

    def _skip_string(self) -> None:
        while True:
            m = _STRING.match(self._buf, self._pos)
            if m is not None:
                self._pos = m.end()
                return
            keep = self._keep
            self._keep = self.offset if keep is None else min(keep, self.offset)
            more = self._fill()
            self._keep = keep
            if not more:
                raise ScanError(self.offset, "unterminated string")

    def _skip_scalar(self) -> None:
        while True:
            m = _SCALAR.match(self._buf, self._pos)
            if m is None:
                raise ScanError(self.offset, "unexpected character")
            if m.end() < len(self._buf) or self._eof:
                self._pos = m.end()
                return
            keep = self._keep
            self._keep = self.offset if keep is None else min(keep, self.offset)
            more = self._fill()
            self._keep = keep
            if not more:
                self._pos = m.end()
                return

    def _decoded(self) -> bool:
        """Skip the container at the read position with the C decoder, if it lies whole
        within the buffer (after reading ahead a little) and is valid JSON."""
        if len(self._buf) - self._pos < self._lookahead and not self._eof:
            keep = self._keep
            self._keep = self.offset if keep is None else min(keep, self.offset)
            self._fill()
            self._keep = keep
        if self._text is None:
            self._text = self._buf.decode("latin-1")
        try:
            _, end = _DECODER.raw_decode(self._text, self._pos)
        except ValueError:  # incomplete in the buffer, or not JSON: walk it
            return False
        self._pos = end
        return True

    def _skip_container(self) -> None:
        depth = 0
        while True:
            m = _SKIM.match(self._buf, self._pos)
            assert m is not None
            self._pos = m.end()
            if self._pos >= len(self._buf):
                if not self._fill():
                    raise ScanError(self.offset, "unexpected end")
                continue
            char = self._buf[self._pos]
            if char == ord('"'):  # a string not yet complete in the buffer
                self._skip_string()
                continue
            if char in b"{[":
                if self._decoded():
                    if depth == 0:
                        return
                    continue
                self._pos += 1
                depth += 1
            else:
                self._pos += 1
                depth -= 1
                if depth == 0:
                    return

    def read_value(self) -> bytes:
        """The next value's bytes (kept whole)."""
        self.peek()
        keep = self._keep
        start = self.offset
        self._keep = start if keep is None else min(keep, start)
        try:
            self.skip_value()
            return self.slice(start, self.offset)
        finally:
            self._keep = keep

    def read_key(self) -> str:
        """An object key and the colon after it."""
        if self.peek() != ord('"'):
            raise ScanError(self.offset, "expected a key")
        raw = self.read_value()
        self.expect(b":")
        if b"\\" not in raw:
            try:
                return raw[1:-1].decode()
            except UnicodeDecodeError as exc:
                raise ScanError(self.offset, "invalid key") from exc
        try:
            key = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ScanError(self.offset, "invalid key") from exc
        assert isinstance(key, str)
        return key

    def elements(self, decoder: msgspec.json.Decoder[Any]) -> Iterator[list[Any] | None]:
        """The elements of the array whose ``[`` was just consumed, by runs (see the module
        docstring). Yields a list of decoded elements (``decoder`` decodes a JSON array),
        or None: the caller then walks exactly one element itself. Ends after the ``]``."""
        if self.accept(b"]"):
            return
        signature: bytes | None = None
        while True:
            run = self._decode_run(decoder, signature) if signature is not None else None
            yield run
            end = self.offset
            if not self.after_member(b"]"):
                return
            if run is None:
                signature = self._signature(end) or signature

    def _signature(self, end: int) -> bytes | None:
        """At the start of an element, the previous one having ended at ``end``: the bytes
        from its closing ``}`` to this element's first key, if both are objects."""
        if (
            self.peek() != ord("{")
            or end - 1 < self._base
            or self._buf[end - 1 - self._base] != ord("}")
        ):
            return None
        m = _OBJECT_KEY.match(self._buf, self._pos)
        return None if m is None else self._buf[end - 1 - self._base : m.end()]

    def _decode_run(self, decoder: msgspec.json.Decoder[Any], signature: bytes) -> list[Any] | None:
        """Decode the elements from here up to the last ``signature`` within ``RUN_BYTES``;
        halve the run until it decodes. None if no run does (the caller walks one)."""
        if self.peek() is None:
            return None
        keep = self._keep
        self._keep = self.offset if keep is None else min(keep, self.offset)
        while len(self._buf) - self._pos < RUN_BYTES and self._fill():
            pass
        self._keep = keep
        start = self._pos
        limit = min(len(self._buf), start + RUN_BYTES)
        cut = self._buf.rfind(signature, start, limit)
        while cut > start:
            try:
                run: list[Any] = decoder.decode(b"[" + self._buf[start : cut + 1] + b"]")
            except msgspec.DecodeError:
                cut = self._buf.rfind(signature, start, start + (cut - start) // 2 + len(signature))
                continue
            self._pos = cut + 1
            return run
        return None

    def skip_array(self) -> None:
        """Skip the array at the read position (``[`` next), by runs where it can."""
        self.expect(b"[")
        for run in self.elements(RAW_ELEMENTS):
            if run is None:
                self.skip_value()

    def after_member(self, close: bytes) -> bool:
        """After a member: True if another follows (a comma), False at ``close``."""
        if self.accept(b","):
            return True
        if self.accept(close):
            return False
        raise ScanError(self.offset, f"expected , or {close.decode()}")


def first_value_shape(stream: IO[bytes]) -> tuple[str | None, bool]:
    """Walk the stream's first JSON value without keeping it: its top-level
    ``resourceType`` (None if it is not an object or has none) and whether anything but
    whitespace follows it. Raises :class:`ScanError` if it is not JSON."""
    scanner = Scanner(stream)
    scanner.skip_bom()
    resource_type: str | None = None
    if scanner.peek() != ord("{"):
        scanner.skip_value()
    else:
        scanner.expect(b"{")
        if not scanner.accept(b"}"):
            while True:
                key = scanner.read_key()
                if key == "resourceType":
                    value = orjson.loads(scanner.read_value())
                    resource_type = value if isinstance(value, str) else None
                elif scanner.peek() == ord("["):
                    scanner.skip_array()
                else:
                    scanner.skip_value()
                if not scanner.after_member(b"}"):
                    break
    return resource_type, scanner.peek() is not None
