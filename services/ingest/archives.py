"""ZIP archives read safely: entry checks, and bomb limits enforced while inflating.

Nothing is ever extracted to disk; an entry is inflated into memory, in chunks,
only up to the limits. The rules, each with the code it is reported under:

- ``invalid_archive``: not a ZIP, a corrupt one, entries that share a local header
  or whose data runs into the next one (overlapping-entry bombs), data that ends
  early or fails its checksum, a local header that disagrees with the central
  directory;
- ``too_many_entries``: more than ``max_entries`` entries, read from the
  end-of-central-directory record before anything else is parsed (and counted
  again once the central directory is read, in case that record lied);
- ``archive_too_large``: more than ``max_total_bytes`` inflated in all;
- ``entry_too_large``: one entry inflating to more than ``max_entry_bytes``;
- ``compression_ratio_too_high``: inflated / compressed above ``max_ratio``, for
  one entry or for the archive so far (checked once ``RATIO_FLOOR`` bytes came out,
  so small highly compressible files pass);
- ``size_mismatch``: an entry inflating to another size than its header declares;
- ``unsafe_path``: an absolute path, a ``..`` component, a backslash or a drive letter;
- ``symlink_entry``: an entry whose Unix mode (``external_attr``) is a symbolic link;
- ``encrypted_entry``: an entry with the encryption flag, in either header;
- ``unsupported_compression``: a method other than stored or deflate;
- ``duplicate_entry``: two entries with the same name;
- ``ignored_entry`` (a warning): ``__MACOSX/`` resource forks and ``.DS_Store``,
  skipped.

The declared sizes are checked first (a cheap early refusal) but never trusted:
every byte counted against the limits is one that actually came out of the
decompressor, and the compressed bytes read stop at the next entry's header.
"""

from __future__ import annotations

import itertools
import re
import stat
import struct
import unicodedata
import zipfile
import zlib
from collections import Counter
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from services.common.reports import Report

CHUNK = 64 * 1024
RATIO_FLOOR = 1024 * 1024
CD_BYTES_PER_ENTRY = 1024  # a central directory larger than this per entry is refused before it is read
_EOCD = struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_LOCAL = struct.Struct("<4s5H3L2H")
_DRIVE = re.compile(r"^[A-Za-z]:")
_BOMB = "this looks like a ZIP bomb; upload the real images"
_SPLIT = "split the dataset into smaller ZIPs"
_REPACK = "re-create the ZIP with a standard tool (zip, 7-Zip, or the system's compress command)"


@dataclass(frozen=True)
class ArchiveLimits:
    max_entries: int = 100_000
    max_total_bytes: int = 8 * 1024**3
    max_entry_bytes: int = 256 * 1024**2
    max_ratio: float = 200.0


class ArchiveError(Exception):
    """An entry, or the whole archive (``whole_archive``), broke a rule; reported under ``code``."""

    def __init__(self, code: str, message: str, hint: str, whole_archive: bool = False) -> None:
        super().__init__(message)
        self.code, self.message, self.hint, self.whole_archive = code, message, hint, whole_archive


def entry_key(name: str) -> str:
    """The name entries and manifest rows are matched by (NFC, as macOS writes NFD)."""
    return unicodedata.normalize("NFC", name)


def is_ignored(name: str) -> bool:
    return name.startswith("__MACOSX/") or name.rsplit("/", 1)[-1] == ".DS_Store"


def _path_problem(name: str) -> str:
    if "\\" in name:
        return "holds a backslash"
    if name.startswith("/"):
        return "is an absolute path"
    if _DRIVE.match(name):
        return "starts with a drive letter"
    if ".." in name.split("/"):
        return "climbs out of the archive with '..'"
    return ""


def _entry_problem(info: zipfile.ZipInfo, limits: ArchiveLimits) -> tuple[str, str, str] | None:
    """(code, message, hint) for an entry refused from its central-directory record alone."""
    name = info.filename
    if problem := _path_problem(name):
        return ("unsafe_path", f"the entry name {problem}", "keep every file under relative folders, joined by '/'")
    if stat.S_ISLNK(info.external_attr >> 16):
        return ("symlink_entry", "the entry is a symbolic link", "put the file itself in the ZIP, not a link to it")
    if info.flag_bits & 0x41:
        return ("encrypted_entry", "the entry is encrypted", "create the ZIP without a password")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        return ("unsupported_compression", f"the entry uses compression method {info.compress_type}",
                "compress with Deflate (the default of every ZIP tool) or store the files")  # fmt: skip
    if info.file_size > RATIO_FLOOR and info.file_size > limits.max_ratio * max(info.compress_size, 1):
        return ("compression_ratio_too_high", f"the entry declares {info.file_size} bytes from {info.compress_size}",
                _BOMB)  # fmt: skip
    if info.file_size > limits.max_entry_bytes:
        return ("entry_too_large", f"the entry declares {info.file_size} bytes, over {limits.max_entry_bytes}",
                "shrink or split the image")  # fmt: skip
    return None


def _end_record(fp: IO[bytes]) -> tuple[int, int] | None:
    """(entry count, central directory size) from the end-of-central-directory record, or None."""
    size = fp.seek(0, 2)
    tail_len = min(size, _EOCD.size + 0xFFFF)
    fp.seek(size - tail_len)
    tail = fp.read(tail_len)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < _EOCD.size:
        return None
    _, _, _, _, count, cd_size, cd_offset, _ = _EOCD.unpack_from(tail, at)
    if count != 0xFFFF and cd_size != 0xFFFFFFFF and cd_offset != 0xFFFFFFFF:
        return count, cd_size
    locator_at = size - tail_len + at - _ZIP64_LOCATOR.size
    if locator_at < 0:
        return None
    fp.seek(locator_at)
    signature, _, record_at, _ = _ZIP64_LOCATOR.unpack(fp.read(_ZIP64_LOCATOR.size))
    if signature != b"PK\x06\x07" or record_at + _ZIP64_EOCD.size > size:
        return None
    fp.seek(record_at)
    record = _ZIP64_EOCD.unpack(fp.read(_ZIP64_EOCD.size))
    return (record[7], record[8]) if record[0] == b"PK\x06\x06" else None


class SafeZip:
    """An opened, checked ZIP. ``files`` are the regular entries safe to read, in archive order;
    ``names`` holds the key of every entry that is not a directory, refused ones included.
    ``lines`` maps an entry key to the manifest line naming it, which refusals are reported on."""

    def __init__(
        self, fp: IO[bytes], zf: zipfile.ZipFile, limits: ArchiveLimits, report: Report, lines: Mapping[str, int]
    ) -> None:
        self._fp, self._zf, self.limits = fp, zf, limits
        self.files: list[zipfile.ZipInfo] = []
        self.names: set[str] = set()
        self.inflated = 0
        self.consumed = 0
        infos = zf.infolist()
        offsets = Counter(info.header_offset for info in infos)
        starts = sorted(offset for offset, n in offsets.items() if n == 1 and offset < zf.start_dir)
        self._next_offset = dict(itertools.pairwise([*starts, zf.start_dir]))  # where each entry's data must end
        for info in infos:
            if info.is_dir():
                continue
            key = entry_key(info.filename)
            line, field = (lines[key], "image") if key in lines else (0, "")
            if key in self.names:
                report.add(line, field, "duplicate_entry", "two entries in the ZIP have this name",
                           "keep one file per name", entry=info.filename)  # fmt: skip
                continue
            if is_ignored(info.filename):
                report.warn(line, field, "ignored_entry", "macOS metadata, skipped", "nothing to do", info.filename)
                continue
            self.names.add(key)
            if problem := _entry_problem(info, limits):
                report.add(line, field, *problem, entry=info.filename)
            else:
                self.files.append(info)
        declared = sum(info.file_size for info in self.files)
        if declared > limits.max_total_bytes:
            report.add(0, "", "archive_too_large", f"the entries declare {declared} bytes, over "
                       f"{limits.max_total_bytes}", _SPLIT)  # fmt: skip
            self.files = []

    def __enter__(self) -> SafeZip:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self._zf.close()
        self._fp.close()

    def read(self, info: zipfile.ZipInfo) -> bytes:
        """The whole inflated entry; raises ``ArchiveError`` as soon as a limit is passed."""
        return b"".join(self._inflate(info, check_end=True))

    def head(self, info: zipfile.ZipInfo, size: int = 512) -> bytes:
        """The entry's first ``size`` bytes (or fewer when it is shorter)."""
        out = b""
        chunks = self._inflate(info, check_end=False)
        for chunk in chunks:
            out += chunk
            if len(out) >= size:
                break
        chunks.close()
        return out[:size]

    def _data_span(self, info: zipfile.ZipInfo) -> tuple[int, int]:
        """(start, end) of the entry's compressed bytes, after checking its local header."""
        fp, limit = self._fp, self._next_offset.get(info.header_offset)
        if limit is None:
            raise ArchiveError("invalid_archive", "the entry shares its data with another entry, or has none", _REPACK)
        fp.seek(info.header_offset)
        raw = fp.read(_LOCAL.size)
        if len(raw) < _LOCAL.size or raw[:4] != b"PK\x03\x04":
            raise ArchiveError("invalid_archive", "the entry's local header is missing", _REPACK)
        _, _, flags, method, _, _, _, _, _, name_len, extra_len = _LOCAL.unpack(raw)
        if flags & 0x41:
            raise ArchiveError("encrypted_entry", "the entry is encrypted", "create the ZIP without a password")
        if method != info.compress_type:
            raise ArchiveError("invalid_archive", "the local header and central directory disagree on compression",
                               _REPACK)  # fmt: skip
        start = info.header_offset + _LOCAL.size + name_len + extra_len
        end = start + info.compress_size
        if end > limit:
            raise ArchiveError("invalid_archive", "the entry's data runs into the next entry", _REPACK)
        return start, end

    def _inflate(self, info: zipfile.ZipInfo, check_end: bool) -> Generator[bytes, None, None]:
        start, end = self._data_span(info)
        fp = self._fp
        decompressor = zlib.decompressobj(-15) if info.compress_type == zipfile.ZIP_DEFLATED else None
        position, pending, inflated, consumed, crc = start, b"", 0, 0, 0
        while True:
            if not pending and position < end:
                fp.seek(position)
                pending = fp.read(min(CHUNK, end - position))
                position += len(pending)
            if decompressor is None:
                out, used, pending = pending, len(pending), b""
            else:
                try:
                    out = decompressor.decompress(pending, CHUNK)
                except zlib.error as err:
                    raise ArchiveError("invalid_archive", f"the entry's data is corrupt ({err})", _REPACK) from None
                left = decompressor.unconsumed_tail
                used = len(pending) - len(left) - len(decompressor.unused_data)
                pending = left
            inflated += len(out)
            consumed += used
            self.inflated += len(out)
            self.consumed += used
            self._check(inflated, consumed)
            if out:
                crc = zlib.crc32(out, crc)
                yield out
            if decompressor.eof if decompressor else position >= end:
                break
            if not out and not used:
                raise ArchiveError("invalid_archive", "the entry's data ends early", _REPACK)
        if not check_end:
            return
        if inflated != info.file_size:
            raise ArchiveError("size_mismatch", f"the entry inflates to {inflated} bytes; its header says "
                               f"{info.file_size}", _REPACK)  # fmt: skip
        if crc != info.CRC:
            raise ArchiveError("invalid_archive", "the entry's data does not match its checksum", _REPACK)

    def _check(self, inflated: int, consumed: int) -> None:
        limits = self.limits
        if inflated > limits.max_entry_bytes:
            raise ArchiveError("entry_too_large", f"the entry inflates to more than {limits.max_entry_bytes} bytes",
                               "shrink or split the image")  # fmt: skip
        if self.inflated > limits.max_total_bytes:
            raise ArchiveError("archive_too_large", f"the archive inflates to more than {limits.max_total_bytes} "
                               "bytes", _SPLIT, whole_archive=True)  # fmt: skip
        if inflated > RATIO_FLOOR and inflated > limits.max_ratio * max(consumed, 1):
            raise ArchiveError("compression_ratio_too_high", f"the entry inflates more than {limits.max_ratio:g} "
                               "times its compressed size", _BOMB)  # fmt: skip
        if self.inflated > RATIO_FLOOR and self.inflated > limits.max_ratio * max(self.consumed, 1):
            raise ArchiveError("compression_ratio_too_high", f"the archive inflates more than {limits.max_ratio:g} "
                               "times its compressed size", _BOMB, whole_archive=True)  # fmt: skip


def open_zip(path: Path, limits: ArchiveLimits, report: Report, lines: Mapping[str, int]) -> SafeZip | None:
    """The checked archive, or None after reporting why it cannot be read at all.

    ``lines`` maps entry keys to the manifest line that names them (see ``SafeZip``)."""
    try:
        fp = path.open("rb")
    except OSError as err:
        report.add(0, "", "invalid_archive", f"the ZIP cannot be read ({err.strerror})", "upload the ZIP again")
        return None
    try:
        end = _end_record(fp)
        if end is None:
            report.add(0, "", "invalid_archive", "the file is not a ZIP archive", "upload the images as one .zip file")
        elif end[0] > limits.max_entries:
            report.add(0, "", "too_many_entries", f"the ZIP holds {end[0]} entries, over {limits.max_entries}",
                       _SPLIT)  # fmt: skip
        elif end[1] > CD_BYTES_PER_ENTRY * max(end[0], 1):
            report.add(0, "", "invalid_archive", f"the central directory is {end[1]} bytes for {end[0]} entries",
                       _REPACK)  # fmt: skip
        else:
            zf = zipfile.ZipFile(fp)
            if len(zf.infolist()) > limits.max_entries:
                report.add(0, "", "too_many_entries", f"the ZIP holds over {limits.max_entries} entries",
                           _SPLIT)  # fmt: skip
                zf.close()
            else:
                return SafeZip(fp, zf, limits, report, lines)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, struct.error) as err:
        report.add(0, "", "invalid_archive", f"the ZIP is corrupt ({err})", _REPACK)
    fp.close()
    return None
