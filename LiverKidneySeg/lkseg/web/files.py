"""Files the web page may see and send: a jailed data folder, checked uploads, a DICOM series picker.

- :class:`DataRoot` maps the page's relative paths into one allowed folder and refuses anything
  that would leave it (``..``, absolute paths elsewhere, symlinks pointing out).
- :func:`save_upload` accepts only what the core can read as a CT, judged by the CONTENT (magic
  bytes and headers), not the name: NIfTI (``.nii``/``.nii.gz``, single file), NRRD with its data
  inside, MetaImage ``.mha`` (data inside), one DICOM file, or a ``.zip`` of DICOM files. It
  writes a temporary file and renames it, so a refused or failed upload leaves nothing behind;
  zip archives are checked against path tricks (zip-slip) and decompression bombs before and
  while extracting.
- :func:`list_series` lists the image series of a DICOM folder through :mod:`lkseg.io.dicom`.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import re
import secrets
import shutil
import struct
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lkseg.errors import InputError
from lkseg.io.atomic import full_suffix
from lkseg.io.dicom import is_dicom_file, list_dicom_series

__all__ = [
    "ACCEPTED",
    "MAX_UNZIPPED_BYTES",
    "MAX_UPLOAD_BYTES",
    "DataRoot",
    "SeriesChoice",
    "list_series",
    "save_upload",
    "sniff",
]

#: Largest upload accepted by default (bytes); the CLI can change it.
MAX_UPLOAD_BYTES = 2 * 1024**3
#: Largest total a zip may expand to, and the largest voxel data an image header may announce.
MAX_UNZIPPED_BYTES = 8 * 1024**3
#: Most files a zip may hold.
MAX_ZIP_MEMBERS = 20000
#: A zip member expanding more than this many times (and over 1 MiB) is treated as a bomb.
MAX_ZIP_RATIO = 1000
ACCEPTED = (
    "accepted: NIfTI (.nii, .nii.gz), NRRD with its data inside (.nrrd), MetaImage .mha, "
    "a DICOM file, or a .zip of DICOM files"
)
#: Canonical suffix of each accepted kind (the saved file's name ends with it).
SUFFIX = {"nifti": ".nii", "nifti-gz": ".nii.gz", "nrrd": ".nrrd", "mha": ".mha", "dicom": ".dcm", "zip": ""}
_IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
_ZIP_JUNK = re.compile(r"(^|/)(__MACOSX/|\.[^/]*$|Thumbs\.db$|desktop\.ini$)", re.IGNORECASE)
_NRRD_BYTES = {
    "signed char": 1, "int8": 1, "int8_t": 1, "uchar": 1, "unsigned char": 1, "uint8": 1, "uint8_t": 1,
    "short": 2, "short int": 2, "signed short": 2, "signed short int": 2, "int16": 2, "int16_t": 2,
    "ushort": 2, "unsigned short": 2, "unsigned short int": 2, "uint16": 2, "uint16_t": 2,
    "int": 4, "signed int": 4, "int32": 4, "int32_t": 4, "uint": 4, "unsigned int": 4, "uint32": 4,
    "uint32_t": 4, "longlong": 8, "long long": 8, "long long int": 8, "signed long long": 8,
    "signed long long int": 8, "int64": 8, "int64_t": 8, "ulonglong": 8, "unsigned long long": 8,
    "unsigned long long int": 8, "uint64": 8, "uint64_t": 8, "float": 4, "double": 8,
}  # fmt: skip
_MET_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
              "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
              "MET_DOUBLE": 8}  # fmt: skip


def _gib(n: int) -> str:
    return f"{n / 1024**3:.2f} GiB" if n >= 1024**3 else f"{n / 1024**2:.1f} MiB"


# -- the data folder -----------------------------------------------------------------------------------


class DataRoot:
    """The one folder whose contents the page may browse and open.

    Paths from the page are relative to it (``""`` is the folder itself); :meth:`resolve`
    refuses any path that ends up outside it once ``..`` and symlinks are resolved.
    """

    def __init__(self, root: str | Path):
        root = Path(root).expanduser()
        if not root.is_dir():
            raise InputError("the data folder does not exist or is not a folder", root)
        self.root = root.resolve(strict=True)

    def resolve(self, relative: str | Path = "") -> Path:
        """The absolute, symlink-free path of ``relative`` inside the root.

        An absolute path is accepted only when it lies inside the root. Nothing is decoded: a name
        like ``%2e%2e`` is taken literally (a file of that name inside the root).

        Raises:
            InputError: the path leaves the root, or holds a NUL or control character.
        """
        text = str(relative if relative is not None else "")
        if any(ord(c) < 32 for c in text):
            raise InputError(f"the path {text!r} holds a control character")
        candidate = Path(text)
        full = candidate if candidate.is_absolute() else self.root / candidate
        resolved = full.resolve(strict=False)
        if resolved != self.root and self.root not in resolved.parents:
            raise InputError(f"{text!r} is outside the data folder; only files under {self.root} can be opened")
        return resolved

    def relative(self, path: str | Path) -> str:
        """``path`` (inside the root) as the page shows it: relative, with ``/``."""
        rel = self.resolve(path).relative_to(self.root)
        return "" if rel == Path(".") else rel.as_posix()

    def listdir(self, relative: str | Path = "") -> list[dict]:
        """The entries of a folder inside the root: folders first, then files, by name.

        Hidden entries (``.name``) and symlinks leading out of the root are left out. Each entry
        is ``{"name", "path" (relative to the root), "kind", "size"}``; kind is ``"dir"``,
        ``"dicom-folder"`` (a folder with DICOM files directly in it), ``"image"`` (NIfTI, NRRD,
        MetaImage or a DICOM file) or ``"other"``; size is bytes for files, None for folders.

        Raises:
            InputError: outside the root, missing, or not a folder.
        """
        folder = self.resolve(relative)
        if not folder.is_dir():
            raise InputError("is not a folder", self.relative(folder) or ".")
        entries = []
        try:
            children = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            raise InputError(f"cannot list the folder ({exc.strerror})", self.relative(folder) or ".") from exc
        for entry in children:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            try:
                real = self.resolve(path)
            except InputError:
                continue  # a symlink pointing out of the root: not shown
            try:
                is_dir = real.is_dir()
                size = None if is_dir else real.stat().st_size
            except OSError:
                continue  # a broken symlink
            kind = ("dicom-folder" if _has_dicom(real) else "dir") if is_dir else _file_kind(real)
            entries.append({"name": entry.name, "path": self.relative(path), "kind": kind, "size": size})
        entries.sort(key=lambda e: (e["size"] is not None, e["name"].lower()))
        return entries


def _has_dicom(folder: Path, max_probe: int = 20) -> bool:
    try:
        with os.scandir(folder) as it:
            for n, entry in enumerate(it):
                if n >= max_probe:
                    break
                if entry.is_file() and not entry.name.startswith(".") and is_dicom_file(entry.path):
                    return True
    except OSError:
        return False
    return False


def _file_kind(path: Path) -> str:
    if full_suffix(path) in _IMAGE_SUFFIXES:
        return "image"
    if full_suffix(path) in ("", ".ima", ".dicom") and is_dicom_file(path):
        return "image"
    return "other"


# -- uploads ---------------------------------------------------------------------------------------------


def _nifti_kind(head: bytes) -> tuple[str, int] | None:
    """("single"|"pair", voxel bytes announced) of a NIfTI-1/2 header, or None."""
    for endian in ("<", ">"):
        if len(head) >= 348 and struct.unpack(endian + "i", head[:4])[0] == 348:
            magic = head[344:348]
            dims = struct.unpack(endian + "8h", head[40:56])
            bitpix = struct.unpack(endian + "h", head[72:74])[0]
        elif len(head) >= 540 and struct.unpack(endian + "i", head[:4])[0] == 540:
            magic = head[4:8]
            dims = struct.unpack(endian + "8q", head[16:80])
            bitpix = struct.unpack(endian + "h", head[14:16])[0]
        else:
            continue
        if magic not in (b"n+1\0", b"ni1\0", b"n+2\0", b"ni2\0"):
            return None
        ndim = min(max(int(dims[0]), 1), 7)
        voxels = 1
        for d in dims[1 : ndim + 1]:
            voxels *= max(int(d), 1)
        return ("single" if magic[1:2] == b"+" else "pair"), voxels * max(int(bitpix), 1) // 8
    return None


def _header_fields(head: bytes, separator: str) -> dict[str, str]:
    fields = {}
    text = head.decode("latin-1")
    for line in text.splitlines()[1 if separator == ":" else 0 :]:
        if separator == ":" and not line.strip():
            break  # end of the NRRD header
        if line.startswith("#") or separator not in line:
            continue
        key, _, value = line.partition(separator)
        fields[key.strip().lower()] = value.strip()
        if separator == "=" and key.strip().lower() == "elementdatafile":
            break  # the last MetaImage header field
    return fields


def _product(values: str) -> int:
    n = 1
    for v in values.split():
        n *= max(int(float(v)), 1)
    return n


def sniff(head: bytes, name: str = "") -> str:
    """The kind of an upload from its first bytes (at least 1 KiB when available): ``"nifti"``,
    ``"nifti-gz"``, ``"nrrd"``, ``"mha"``, ``"dicom"`` or ``"zip"``.

    Raises:
        InputError: any other content, with what it looks like and what is accepted.
    """
    label = name or "the upload"
    if not head:
        raise InputError(f"{label} is empty; {ACCEPTED}")
    if head[:2] == b"\x1f\x8b":
        try:
            inner = gzip.GzipFile(fileobj=io.BytesIO(head)).read(540)
        except (OSError, EOFError, zlib.error):
            inner = b""
        info = _nifti_kind(inner)
        if info is None:
            raise InputError(f"{label} is a gzip file but not a gzipped NIfTI image; {ACCEPTED}")
        if info[0] == "pair":
            raise InputError(f"{label} is the header of a NIfTI .hdr/.img pair (voxels in another file); {ACCEPTED}")
        return "nifti-gz"
    info = _nifti_kind(head)
    if info is not None:
        if info[0] == "pair":
            raise InputError(
                f"{label} is the header of a NIfTI .hdr/.img pair (voxels in another file); save it as one .nii; {ACCEPTED}"
            )
        return "nifti"
    if head.startswith(b"NRRD000"):
        fields = _header_fields(head, ":")
        if "data file" in fields or "datafile" in fields:
            detached = fields.get("data file") or fields.get("datafile")
            raise InputError(
                f"{label} is a detached NRRD header (.nhdr) whose voxels are in {detached!r}; "
                f"save it as one .nrrd; {ACCEPTED}"
            )
        return "nrrd"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if head[:4] in (b"PK\x05\x06", b"PK\x07\x08"):
        raise InputError(f"{label} is an empty or split zip archive; {ACCEPTED}")
    text = head[:1024]
    if re.match(rb"\s*(ObjectType|NDims|DimSize|ElementType|ElementDataFile|BinaryData)\s*=", text):
        data_file = _header_fields(head, "=").get("elementdatafile", "")
        if data_file.upper() != "LOCAL":
            raise InputError(
                f"{label} is a MetaImage header (.mhd) whose voxels are in {data_file or 'another file'!r}; "
                f"save it as one .mha; {ACCEPTED}"
            )
        return "mha"
    for magic, what in (
        (b"\x7fELF", "a program (ELF executable)"),
        (b"MZ", "a Windows program (EXE/DLL)"),
        (b"#!", "a script"),
        (b"\xcf\xfa\xed\xfe", "a macOS program (Mach-O)"),
        (b"\xca\xfe\xba\xbe", "a macOS program or Java class"),
        (b"%PDF", "a PDF document"),
        (b"\x89PNG", "a PNG picture (2D), not a CT volume"),
        (b"\xff\xd8\xff", "a JPEG picture (2D), not a CT volume"),
        (b"Rar!", "a RAR archive"),
        (b"7z\xbc\xaf", "a 7-Zip archive"),
    ):
        if head.startswith(magic):
            raise InputError(f"{label} is {what}; {ACCEPTED}")
    printable = sum(1 for b in text if 32 <= b < 127 or b in (9, 10, 13))
    if printable >= 0.95 * len(text):
        raise InputError(f"{label} is a text file, not an image; {ACCEPTED}")
    raise InputError(f"{label} is not a recognised image format; {ACCEPTED}")


def _announced_bytes(kind: str, head: bytes) -> int | None:
    """Voxel bytes an image header announces (None when it cannot be told from the head)."""
    try:
        if kind == "nifti":
            return _nifti_kind(head)[1]
        if kind == "nifti-gz":
            return _nifti_kind(gzip.GzipFile(fileobj=io.BytesIO(head)).read(540))[1]
        if kind == "nrrd":
            fields = _header_fields(head, ":")
            return _product(fields["sizes"]) * _NRRD_BYTES.get(fields["type"].lower(), 8)
        if kind == "mha":
            fields = _header_fields(head, "=")
            channels = int(fields.get("elementnumberofchannels", "1"))
            return _product(fields["dimsize"]) * _MET_BYTES.get(fields["elementtype"].upper(), 8) * channels
    except (KeyError, ValueError, TypeError, OSError, EOFError, zlib.error, struct.error):
        return None
    return None


def _safe_stem(name: str) -> str:
    base = re.split(r"[\\/]", str(name or ""))[-1]
    suffix = full_suffix(base)
    for known in (".zip", ".gz"):
        if not suffix and base.lower().endswith(known):
            suffix = known
    stem = base[: len(base) - len(suffix)] if suffix else base
    stem = re.sub(r"[^A-Za-z0-9._ -]+", "_", stem).strip(" ._")[:80]
    return stem or "upload"


def _unique(dest_dir: Path, stem: str, suffix: str) -> Path:
    path = dest_dir / f"{stem}{suffix}"
    n = 1
    while path.exists() or path.is_symlink():
        path = dest_dir / f"{stem}-{n}{suffix}"
        n += 1
    return path


def _copy_limited(data, target: Path, max_bytes: int, label: str) -> int:
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = [data]
    if isinstance(data, (list, tuple)):  # trame's file input gives the content as a list of chunks
        size = sum(len(chunk) for chunk in data)
        if size > max_bytes:
            raise InputError(f"{label} is {_gib(size)}; the upload limit is {_gib(max_bytes)}")
        with open(target, "wb") as out:
            for chunk in data:
                out.write(chunk)
        return size
    size = 0
    with open(target, "wb") as out:
        while chunk := data.read(1 << 20):
            size += len(chunk)
            if size > max_bytes:
                raise InputError(f"{label} is over the upload limit of {_gib(max_bytes)}")
            out.write(chunk)
    return size


def save_upload(
    name: str,
    data: bytes | Sequence[bytes] | BinaryIO,
    dest_dir: str | Path,
    max_bytes: int | None = None,
    *,
    max_unzipped_bytes: int | None = None,
) -> Path:
    """Check an uploaded file by its content and save it in ``dest_dir``.

    Args:
        name: the file name the browser gave (only its base name is used, sanitised; the suffix
            is the canonical one of the detected format, e.g. ``ct.nii.gz``).
        data: the bytes, a list of byte chunks (trame's file input state ``content``), or a
            binary stream read in 1 MiB chunks.
        dest_dir: where to save (created when missing). Existing files are never overwritten
            (``-1``, ``-2``... are appended to the name).
        max_bytes: the upload limit (None: the module's :data:`MAX_UPLOAD_BYTES` at call time).
        max_unzipped_bytes: what a zip may expand to and an image header may announce
            (default :data:`MAX_UNZIPPED_BYTES`, at least ``max_bytes``).

    Returns:
        The saved file, or for a zip the folder holding its DICOM files (other members, e.g.
        DICOMDIR or a viewer program, are not extracted).

    Raises:
        InputError: empty, over the limit, not an accepted format (the message says what it looks
            like and what is accepted), a detached header, a damaged or dangerous zip. Nothing is
            left in ``dest_dir`` then.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    max_bytes = MAX_UPLOAD_BYTES if max_bytes is None else int(max_bytes)
    max_unzipped = max(max_unzipped_bytes or MAX_UNZIPPED_BYTES, max_bytes)
    label = repr(re.split(r"[\\/]", str(name or "upload"))[-1][:120])
    stem = _safe_stem(name)
    tmp = dest_dir / f".upload-{os.getpid()}-{secrets.token_hex(6)}.part"
    try:
        _copy_limited(data, tmp, max_bytes, label)
        with open(tmp, "rb") as fh:
            head = fh.read(64 * 1024)
        kind = sniff(head, label)
        if kind == "zip":
            return _extract_dicom_zip(tmp, dest_dir, stem, label, max_unzipped)
        announced = _announced_bytes(kind, head)
        if announced is not None and announced > max_unzipped:
            raise InputError(
                f"{label}: its header announces {_gib(announced)} of voxels; the limit is {_gib(max_unzipped)}"
            )
        target = _unique(dest_dir, stem, SUFFIX[kind])
        os.replace(tmp, target)
        return target
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _member_parts(member: str, label: str) -> list[str]:
    parts = [p for p in re.split(r"[\\/]+", member) if p not in ("", ".")]
    if member.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", member) or ".." in parts or not parts:
        raise InputError(f"{label}: refused, the archive member {member!r} points outside the archive (zip-slip)")
    return parts


def _extract_dicom_zip(archive: Path, dest_dir: Path, stem: str, label: str, max_unzipped: int) -> Path:
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{label} is a damaged zip archive ({exc}); {ACCEPTED}") from exc
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        if len(infos) > MAX_ZIP_MEMBERS:
            raise InputError(f"{label} holds {len(infos)} files; at most {MAX_ZIP_MEMBERS} are accepted")
        declared = 0
        for info in infos:
            _member_parts(info.filename, label)
            if info.flag_bits & 0x1:
                raise InputError(f"{label} is encrypted (password-protected); upload an unencrypted zip")
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise InputError(f"{label}: refused, the archive member {info.filename!r} is a symbolic link")
            if info.file_size > (1 << 20) and info.file_size > MAX_ZIP_RATIO * max(info.compress_size, 1):
                raise InputError(
                    f"{label}: refused, {info.filename!r} would expand {info.file_size // max(info.compress_size, 1)} "
                    "times (a decompression bomb?)"
                )
            declared += info.file_size
        if declared > max_unzipped:
            raise InputError(f"{label} would expand to {_gib(declared)}; the limit is {_gib(max_unzipped)}")
        work = dest_dir / f".unzip-{os.getpid()}-{secrets.token_hex(6)}"
        work.mkdir()
        try:
            n_dicom, skipped, written = 0, 0, 0
            for index, info in enumerate(infos):
                if _ZIP_JUNK.search(info.filename.replace("\\", "/")):
                    skipped += 1
                    continue
                try:
                    with zf.open(info) as src:
                        head = src.read(132)
                        if len(head) < 132 or head[128:132] != b"DICM":
                            skipped += 1
                            continue
                        base = re.sub(r"[^A-Za-z0-9._-]+", "_", _member_parts(info.filename, label)[-1])[:60]
                        target = work / f"{index:05d}_{base}"
                        with open(target, "wb") as out:
                            out.write(head)
                            written += len(head)
                            while chunk := src.read(1 << 20):
                                written += len(chunk)
                                if written > max_unzipped:
                                    raise InputError(f"{label} expands beyond the limit of {_gib(max_unzipped)}")
                                out.write(chunk)
                except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
                    raise InputError(f"{label}: the archive member {info.filename!r} is damaged ({exc})") from exc
                n_dicom += 1
            if n_dicom == 0:
                raise InputError(f"{label} holds no DICOM files ({skipped} other file(s)); {ACCEPTED}")
            target = _unique(dest_dir, stem, "")
            os.replace(work, target)
            return target
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)


# -- DICOM series picker ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesChoice:
    """One image series the page can offer.

    Attributes:
        uid: SeriesInstanceUID (pass it to ``read_image(folder, series_uid=uid)``).
        description: SeriesDescription ("" when absent).
        n_files: number of files (slices).
        modality: CT, MR...
        size_ijk: (columns, rows, slices).
    """

    uid: str
    description: str
    n_files: int
    modality: str
    size_ijk: tuple[int, int, int]

    @property
    def label(self) -> str:
        size = "x".join(str(s) for s in self.size_ijk)
        return f"{self.modality or '?'} {self.description or '(no description)'}: {self.n_files} file(s), {size}"


def list_series(folder: str | Path) -> list[SeriesChoice]:
    """The DICOM image series under ``folder`` (recursively), as :func:`lkseg.io.dicom.list_dicom_series`
    finds them; non-image objects (SEG, RTSTRUCT, SR...) are left out.

    Raises:
        InputError: the folder is missing or holds no DICOM image series.
    """
    infos = list_dicom_series(folder)
    choices = [
        SeriesChoice(i.uid, i.description, i.num_files, i.modality, tuple(i.size))
        for i in infos
        if i.is_image and i.size
    ]
    if not choices:
        others = f" (only {', '.join(sorted({i.modality or '?' for i in infos}))} objects)" if infos else ""
        raise InputError(f"holds no DICOM image series{others}", folder)
    return choices
