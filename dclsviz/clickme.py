"""ClickMe TFRecord shards without TensorFlow: framing, Example parsing, an offset index, the downloader.

The `tf.train.Example` protos are read by a small wire-format parser below, because the `protobuf`
package would need TensorFlow's .proto files compiled and shipped just to read three fields.

A record is framed as: uint64 length, uint32 masked CRC32C of the length bytes, the data, uint32 masked
CRC32C of the data (all little-endian). Its Example holds `image` (JPEG bytes), `heatmap` (single-channel
JPEG bytes) and `label` (int64), as the reference loader (serre-lab Harmonization
`harmonization/common/clickme_dataset.py`) expects.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Union

import crc32c
import numpy as np
import simplejpeg

from . import human
from .download import cache_root, fetch
from .files import write_json

# Where the reference loader downloads the validation shards from: f"{base}/val/val-{i}.tfrecords".
CLICKME_BASE_URL = "https://storage.googleapis.com/serrelab/prj_harmonization/dataset/click-me"
NB_VAL_SHARDS = 17
CLICKME_DIR_ENV = "DCLSVIZ_CLICKME_DIR"

INDEX_SUFFIX = ".dclsviz-index.json"
INDEX_VERSION = 2  # 2: damaged spans are kept with the offsets
REQUIRED_KEYS = ("image", "heatmap", "label")

_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")
_MASK_DELTA = 0xA282EAD8

PathLike = Union[str, os.PathLike]
# progress(file_number, n_files, done_bytes, total_bytes or None); file_number counts from 0.
ShardProgress = Callable[[int, int, int, Optional[int]], None]


class ClickMeFormatError(ValueError):
    """A shard or one of its records is damaged or not in the ClickMe format; the message says where."""


# --- TFRecord framing --------------------------------------------------------------------------------


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC32C: rotate right by 15 bits and add a constant."""
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def _frame(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return length + _FOOTER.pack(masked_crc32c(length)) + data + _FOOTER.pack(masked_crc32c(data))


# --- tf.train.Example wire format ----------------------------------------------------------------------


class _ProtoError(ValueError):
    pass


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    for i in range(10):
        if pos >= len(buf):
            raise _ProtoError("varint runs past the end of the message")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
    raise _ProtoError("varint longer than 10 bytes")


def _fields(buf: bytes) -> Iterator[tuple[int, int, Union[int, bytes]]]:
    """(field number, wire type, value) for each field; length-delimited values come as bytes."""
    pos, end = 0, len(buf)
    while pos < end:
        tag, pos = _varint(buf, pos)
        num, wire = tag >> 3, tag & 7
        if num == 0:
            raise _ProtoError("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            if pos + 8 > end:
                raise _ProtoError("fixed64 runs past the end of the message")
            value, pos = int.from_bytes(buf[pos : pos + 8], "little"), pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > end:
                raise _ProtoError(f"field {num}: {n} bytes announced, {end - pos} left")
            value, pos = buf[pos : pos + n], pos + n
        elif wire == 5:
            if pos + 4 > end:
                raise _ProtoError("fixed32 runs past the end of the message")
            value, pos = int.from_bytes(buf[pos : pos + 4], "little"), pos + 4
        else:
            raise _ProtoError(f"field {num}: unsupported wire type {wire}")
        yield num, wire, value


def _int64(u: int) -> int:
    return u - (1 << 64) if u >= 1 << 63 else u


def _parse_feature(buf: bytes) -> tuple[str, list]:
    kind, values = "empty", []
    for num, wire, value in _fields(buf):
        if wire != 2:
            continue
        # A oneof: the last list present wins, as protobuf's own parser decides.
        if num == 1:
            kind, values = "bytes", [bytes(v) for n, w, v in _fields(value) if n == 1 and w == 2]
        elif num == 2:
            kind, values = "float", _parse_floats(value)
        elif num == 3:
            kind, values = "int64", _parse_int64s(value)
    return kind, values


def _repeated(buf: bytes, scalar_wire: int, scalar, packed) -> list:
    """A repeated field 1 of a list message: each entry is one scalar (``scalar(value)``) or a packed run
    (``packed(bytes)``, the proto3 default that TensorFlow writes); a parser accepts both."""
    out: list = []
    for num, wire, value in _fields(buf):
        if num != 1:
            continue
        if wire == scalar_wire:
            out.append(scalar(value))
        elif wire == 2:
            out.extend(packed(value))
    return out


def _packed_int64s(value: bytes) -> list[int]:
    out, pos = [], 0
    while pos < len(value):
        v, pos = _varint(value, pos)
        out.append(_int64(v))
    return out


def _packed_floats(value: bytes) -> tuple[float, ...]:
    if len(value) % 4:
        raise _ProtoError("packed float list is not a multiple of 4 bytes")
    return struct.unpack(f"<{len(value) // 4}f", value)


def _parse_int64s(buf: bytes) -> list[int]:
    return _repeated(buf, 0, _int64, _packed_int64s)


def _parse_floats(buf: bytes) -> list[float]:
    return _repeated(buf, 5, lambda bits: struct.unpack("<f", struct.pack("<I", bits))[0], _packed_floats)


def parse_example(data: bytes) -> dict[str, tuple[str, list]]:
    """A serialized tf.train.Example as {key: (kind, values)}, kind being bytes, float, int64 or empty."""
    features: dict[str, tuple[str, list]] = {}
    for num, wire, value in _fields(data):
        if num != 1 or wire != 2:
            continue
        for fnum, fwire, entry in _fields(value):
            if fnum != 1 or fwire != 2:
                continue
            key, feature = "", b""
            for enum, ewire, v in _fields(entry):
                if enum == 1 and ewire == 2:
                    try:
                        key = bytes(v).decode("utf-8")
                    except UnicodeDecodeError as e:
                        raise _ProtoError(f"feature key is not UTF-8: {e}") from e
                elif enum == 2 and ewire == 2:
                    feature = v
            features[key] = _parse_feature(feature)
    return features


def _enc_varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _enc_len(num: int, payload: bytes) -> bytes:
    return _enc_varint(num << 3 | 2) + _enc_varint(len(payload)) + payload


def encode_example(features: dict[str, Union[bytes, int]]) -> bytes:
    """Serialize {key: bytes | int} as a tf.train.Example, keys sorted like TF's deterministic mode."""
    entries = b""
    for key in sorted(features):
        value = features[key]
        if isinstance(value, (bytes, bytearray)):
            feature = _enc_len(1, _enc_len(1, bytes(value)))
        elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            feature = _enc_len(3, _enc_len(1, _enc_varint(int(value))))
        else:
            raise TypeError(f"feature {key!r}: only bytes and int are written, got {type(value).__name__}")
        entries += _enc_len(1, _enc_len(1, key.encode("utf-8")) + _enc_len(2, feature))
    return _enc_len(1, entries)


# --- records ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClickMeRecord:
    """One ClickMe sample: the stored JPEG bytes and label, and where it came from."""

    shard: str
    index: int
    offset: int
    image_jpeg: bytes = field(repr=False)
    heatmap_jpeg: bytes = field(repr=False)
    label: int

    @property
    def where(self) -> str:
        """The record's place, for messages: shard, index and byte offset."""
        return f"{self.shard} record {self.index} (byte offset {self.offset})"

    def image_u8(self) -> np.ndarray:
        """The image, uint8 (H, W, 3), decoded as TF's decode_jpeg does."""
        try:
            return human.decode_jpeg(self.image_jpeg, gray=False)
        except ValueError as e:
            raise ClickMeFormatError(f"{self.where}: image: {e}") from e

    def heatmap_u8(self) -> np.ndarray:
        """The human heatmap, uint8 (H, W): ClickMe stores it as a one-channel JPEG."""
        try:
            colorspace = simplejpeg.decode_jpeg_header(self.heatmap_jpeg)[2]
        except Exception as e:
            raise ClickMeFormatError(f"{self.where}: heatmap: not a decodable JPEG: {e}") from e
        if colorspace != "Gray":
            # The reference reshapes the decoded heatmap to one channel and fails on anything else, so
            # converting a colour heatmap here would score data the reference cannot read.
            raise ClickMeFormatError(f"{self.where}: heatmap JPEG is {colorspace}, ClickMe heatmaps are one channel")
        try:
            return human.decode_jpeg(self.heatmap_jpeg, gray=True)
        except ValueError as e:
            raise ClickMeFormatError(f"{self.where}: heatmap: {e}") from e

    def image_224(self) -> np.ndarray:
        """The reference model input before normalisation: float32 (224, 224, 3), 0..255."""
        return human.clickme_image_224(self.image_u8())

    def human_map(self) -> np.ndarray:
        """The reference human map: float32 (224, 224)."""
        return human.human_map(self.heatmap_u8())


def _record_from_example(data: bytes, shard: str, index: int, offset: int) -> ClickMeRecord:
    where = f"{shard}: record {index} at byte offset {offset}"
    try:
        feats = parse_example(data)
    except _ProtoError as e:
        raise ClickMeFormatError(f"{where}: not a valid tf.train.Example: {e}") from e
    missing = [k for k in REQUIRED_KEYS if k not in feats]
    if missing:
        raise ClickMeFormatError(f"{where}: missing key(s) {missing}; ClickMe records hold {list(REQUIRED_KEYS)}")
    want = {"image": "bytes", "heatmap": "bytes", "label": "int64"}
    for key, kind in want.items():
        got_kind, values = feats[key]
        if got_kind != kind or len(values) != 1:
            raise ClickMeFormatError(
                f"{where}: {key!r} must hold exactly one {kind} value, found {len(values)} {got_kind} value(s)"
            )
    return ClickMeRecord(
        shard=shard,
        index=index,
        offset=offset,
        image_jpeg=feats["image"][1][0],
        heatmap_jpeg=feats["heatmap"][1][0],
        label=feats["label"][1][0],
    )


# --- shards -------------------------------------------------------------------------------------------


# How many bytes a resynchronising scan searches per read.
_RESYNC_CHUNK = 1 << 20


def _record_end(f, pos: int, size: int) -> tuple[Optional[int], str]:
    """(end, "") for a record whose header is whole and checks out at ``pos``, else (None, why)."""
    f.seek(pos)
    header = f.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None, f"truncated record header ({size - pos} bytes left)"
    length, length_crc = _HEADER.unpack(header)
    if masked_crc32c(header[:8]) != length_crc:
        return None, "bad length CRC"
    end = pos + _HEADER.size + length + _FOOTER.size
    if end > size:
        return None, (f"truncated record: it announces {length} bytes but the file ends "
                      f"{size - pos - _HEADER.size - _FOOTER.size} bytes into it")
    return end, ""


def _data_crc_ok(f, pos: int, end: int) -> bool:
    f.seek(pos + _HEADER.size)
    data = f.read(end - pos - _HEADER.size - _FOOTER.size)
    return masked_crc32c(data) == _FOOTER.unpack(f.read(_FOOTER.size))[0]


def _resync(f, start: int, size: int) -> Optional[int]:
    """The first offset after ``start`` where a whole record with a valid header CRC and data CRC begins.

    Both CRCs must match, so a false start inside damaged bytes is practically impossible. Candidates are
    prefiltered with numpy: a record that fits in the file has a length whose high bytes are zero.
    """
    zero_bytes = 8 - max(1, (size.bit_length() + 7) // 8)
    pos = start + 1
    while pos + _HEADER.size <= size:
        f.seek(pos)
        buf = f.read(_RESYNC_CHUNK + _HEADER.size)
        a = np.frombuffer(buf, np.uint8)
        n = len(a) - _HEADER.size + 1
        if n <= 0:
            break
        ok = np.ones(n, bool)
        for k in range(8 - zero_bytes, 8):
            ok &= a[k:k + n] == 0
        for c in np.flatnonzero(ok):
            cand = pos + int(c)
            end, _ = _record_end(f, cand, size)
            if end is not None and _data_crc_ok(f, cand, end):
                return cand
        pos += n
    return None


def _scan_offsets(path: Path, size: int) -> tuple[list[int], list[tuple[int, str]]]:
    """Record offsets and the damaged spans, as (byte offset, reason).

    A healthy shard costs one 12-byte header read per record (data CRCs are checked when a record is read).
    Damage costs only where it is: after a bad header the scan resynchronises on the next whole record; a
    truncated tail ends the index after the last whole record.
    """
    offsets: list[int] = []
    damaged: list[tuple[int, str]] = []
    with open(path, "rb") as f:
        pos = 0
        while pos < size:
            end, why = _record_end(f, pos, size)
            if end is not None:
                offsets.append(pos)
                pos = end
                continue
            nxt = None if why.startswith("truncated") else _resync(f, pos, size)
            if nxt is None:
                damaged.append((pos, f"{why}; bytes {pos}-{size} hold no whole record after it"))
                break
            damaged.append((pos, f"{why}; bytes {pos}-{nxt} skipped, the next whole record starts at {nxt}"))
            pos = nxt
    return offsets, damaged


class ClickMeShard:
    """Random access to the records of one ClickMe TFRecord shard.

    The byte offset of every record is found once and kept in `cache_root()/clickme-index/`, never beside the
    shard; the index file is named after the shard's resolved path, size and modification time, so a changed
    shard gets a fresh index.

    Damage stays contained: records are numbered over the whole records found, and `damaged` lists what
    the index had to skip as (byte offset, reason). A record whose data CRC fails raises for that record only.
    """

    def __init__(self, path: PathLike):
        self.path = Path(path)
        try:
            st = self.path.stat()
        except OSError as e:
            raise FileNotFoundError(f"ClickMe shard {self.path}: {e.strerror or e}") from e
        if not stat.S_ISREG(st.st_mode):
            raise ClickMeFormatError(f"{self.path} is not a file")
        if st.st_size == 0:
            raise ClickMeFormatError(f"{self.path} is empty: a ClickMe shard holds at least one record")
        self.size = st.st_size
        self._fingerprint = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        self.index_path: Optional[Path] = None
        self.damaged: list[tuple[int, str]] = []
        self.offsets: list[int] = self._load_or_build_index()
        if not self.offsets:
            said = "; ".join(f"byte offset {o}: {why}" for o, why in self.damaged)
            raise ClickMeFormatError(f"{self.path} holds no readable record ({said})")

    # index ------------------------------------------------------------------------------------------

    def _index_file(self) -> Path:
        # The cache, never the shard's folder (a repository's assets, a shared kit): the name hashes the
        # resolved path, size and mtime, so a changed or moved shard can never meet an old index.
        st = self._fingerprint
        key = hashlib.sha256(f"{self.path.resolve()}|{st['size']}|{st['mtime_ns']}".encode()).hexdigest()[:24]
        return cache_root() / "clickme-index" / f"{self.path.name}-{key}{INDEX_SUFFIX}"

    def _read_index(self, p: Path) -> Optional[tuple[list[int], list[tuple[int, str]]]]:
        try:
            payload = json.loads(p.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(payload, dict) or payload.get("version") != INDEX_VERSION:
            return None
        if payload.get("fingerprint") != self._fingerprint:
            return None
        offsets, damaged = payload.get("offsets"), payload.get("damaged")
        if not isinstance(offsets, list) or not all(type(o) is int for o in offsets):
            return None
        if any(b <= a for a, b in zip(offsets, offsets[1:])) or (offsets and not 0 <= offsets[-1] < self.size):
            return None
        if not isinstance(damaged, list) or not all(
                isinstance(d, list) and len(d) == 2 and type(d[0]) is int and isinstance(d[1], str) for d in damaged):
            return None
        return offsets, [(o, why) for o, why in damaged]

    def _load_or_build_index(self) -> list[int]:
        p = self._index_file()
        found = self._read_index(p)
        if found is not None:
            self.index_path = p
            offsets, self.damaged = found
            return offsets
        offsets, self.damaged = _scan_offsets(self.path, self.size)
        payload = {"version": INDEX_VERSION, "shard": str(self.path.resolve()), "fingerprint": self._fingerprint,
                   "offsets": offsets, "damaged": [list(d) for d in self.damaged]}
        try:
            write_json(p, payload, indent=None)
            self.index_path = p
        except OSError:
            pass  # an unwritable cache costs a rescan next time, nothing else
        return offsets

    # records ----------------------------------------------------------------------------------------

    def __len__(self) -> int:
        """The number of readable records: those whose framing the index found whole."""
        return len(self.offsets)

    def __repr__(self) -> str:
        return f"ClickMeShard({str(self.path)!r}, {len(self)} records)"

    def read_bytes(self, i: int) -> bytes:
        """The serialized Example of record i, after checking both CRCs."""
        offset = self.offsets[i]
        with open(self.path, "rb") as f:
            f.seek(offset)
            header = f.read(_HEADER.size)
            if len(header) < _HEADER.size:
                raise ClickMeFormatError(f"{self.path}: truncated record header at byte offset {offset}")
            length, length_crc = _HEADER.unpack(header)
            if masked_crc32c(header[:8]) != length_crc:
                raise ClickMeFormatError(f"{self.path}: bad length CRC at byte offset {offset}")
            data = f.read(length)
            footer = f.read(_FOOTER.size)
        if len(data) < length or len(footer) < _FOOTER.size:
            raise ClickMeFormatError(f"{self.path}: record at byte offset {offset} is truncated")
        if masked_crc32c(data) != _FOOTER.unpack(footer)[0]:
            raise ClickMeFormatError(f"{self.path}: bad data CRC in the record at byte offset {offset} (damaged)")
        return data

    def __getitem__(self, i: int) -> ClickMeRecord:
        if not isinstance(i, (int, np.integer)) or isinstance(i, bool):
            raise TypeError(f"shard indices are integers, got {type(i).__name__}")
        n = len(self)
        j = int(i) + n if i < 0 else int(i)
        if not 0 <= j < n:
            raise IndexError(f"{self.path} has {n} readable records (0 to {n - 1}), no record {i}")
        return _record_from_example(self.read_bytes(j), str(self.path), j, self.offsets[j])

    def __iter__(self) -> Iterator[ClickMeRecord]:
        for i in range(len(self)):
            yield self[i]


def write_shard(path: PathLike, records: Iterable[tuple[bytes, bytes, int]]) -> int:
    """Write (image_jpeg, heatmap_jpeg, label) tuples as a ClickMe TFRecord shard; returns the count.

    Keys are sorted, as TF writes them with deterministic serialization, so the same records give the
    same bytes. The file appears complete or not at all.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    try:
        with open(tmp, "wb") as f:
            for image_jpeg, heatmap_jpeg, label in records:
                ex = encode_example({"image": bytes(image_jpeg), "heatmap": bytes(heatmap_jpeg), "label": int(label)})
                f.write(_frame(ex))
                n += 1
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n


def parse_spec(spec: str) -> tuple[Path, int]:
    """'path/to/shard.tfrecords:INDEX' -> (path, index); the last ':' separates, so drive letters work."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"expected SHARD:INDEX, e.g. val-0.tfrecords:12, got {spec!r}")
    path, index = spec.rsplit(":", 1)
    if not path or not re.fullmatch(r"[0-9]+", index.strip()):
        raise ValueError(f"expected SHARD:INDEX with a non-negative integer index, got {spec!r}")
    return Path(path), int(index)


def read_record(spec: str) -> ClickMeRecord:
    """The record named by 'path/to/shard.tfrecords:INDEX'."""
    path, index = parse_spec(spec)
    return ClickMeShard(path)[index]


# --- the real validation shards -----------------------------------------------------------------------


def val_shard_urls(base_url: str = CLICKME_BASE_URL) -> list[str]:
    """The 17 validation shard URLs, in the reference loader's order."""
    return [f"{base_url}/val/val-{i}.tfrecords" for i in range(NB_VAL_SHARDS)]


def download_val_shards(
    dest: Optional[PathLike] = None,
    progress: Optional[ShardProgress] = None,
    *,
    base_url: str = CLICKME_BASE_URL,
) -> list[Path]:
    """Fetch the ClickMe validation shards into `dest` (default `cache_root()/clickme`); resumable.

    Shards already present are kept. `progress(file_number, n_files, done_bytes, total_bytes)` is
    called as bytes arrive. Raises download.DownloadError naming the URL that failed.
    """
    folder = Path(dest) if dest is not None else cache_root() / "clickme"
    urls = val_shard_urls(base_url)
    paths = []
    for k, url in enumerate(urls):
        cb = (lambda done, total, k=k: progress(k, len(urls), done, total)) if progress else None
        paths.append(fetch(url, folder / url.rsplit("/", 1)[1], progress=cb))
    return paths


def _shard_order(p: Path) -> tuple:
    # val-10 after val-9: the reference reads shards in numeric order.
    m = re.search(r"(\d+)(?:\.tfrecords?)?$", p.name)
    return (p.name[: m.start()] if m else p.name, int(m.group(1)) if m else -1, p.name)


def find_local_shards(folder: Optional[PathLike] = None) -> list[Path]:
    """ClickMe shards in a folder: `folder`, else $DCLSVIZ_CLICKME_DIR, else `cache_root()/clickme`.

    Recognises the download names (`val-N.tfrecords`), the names Keras' cache gives the reference's
    downloads (`clickme_val_N`) and any other `*.tfrecord(s)` file; sorted in numeric shard order.
    Returns [] when the folder does not exist.
    """
    if folder is None:
        env = os.environ.get(CLICKME_DIR_ENV)
        folder = Path(env).expanduser() if env else cache_root() / "clickme"
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [
        p
        for p in folder.iterdir()
        if p.is_file() and (p.suffix in (".tfrecords", ".tfrecord") or re.fullmatch(r"clickme_val_[0-9]+", p.name))
    ]
    return sorted(found, key=_shard_order)
