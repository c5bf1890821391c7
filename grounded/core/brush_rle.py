"""Label Studio's brush RLE, encoded and decoded with NumPy: the same bytes and arrays as label-studio-sdk's
``label_studio_sdk.converter.brush`` (``mask2rle``, ``decode_rle``), which build and read the stream a bit at
a time in Python (about 0.3 s to decode one ragged 600x400 mask; ``tests/test_label_studio.py`` compares
both ways on many masks).

The stream (the format of Label Studio's front end, ``@thi.ng/rle-pack``): a 32-bit value count, the word
size minus one (5 bits), four run-length field sizes minus one (4 bits each), then records: a 1 bit and a
run (2 bits choose the length field, the length minus one, one word repeated) or a 0 bit and that many
literal words; zero bits up to the next byte, at least one. A mask is written as RGBA bytes (each pixel's
value 0 or 255 four times), as the SDK's ``mask2rle`` writes it: word size 8, field sizes 3, 4, 8 and 16.
"""

from __future__ import annotations

import numpy as np

__all__ = ["decode_brush", "encode_brush"]

_FIELDS = (3, 4, 8, 16)  # the run-length field sizes mask2rle writes
_LONGEST = 1 << 16  # the longest run one record holds


def encode_brush(mask: np.ndarray) -> list[int]:
    """The brush RLE bytes (as ints) of a boolean ``(H, W)`` mask of at least one pixel:
    ``mask2rle(mask.astype(uint8) * 255)``."""
    flat = np.asarray(mask).astype(bool, copy=False).ravel()
    if not flat.size:
        raise ValueError("brush RLE: the mask has no pixels")
    num = 4 * flat.size
    header = f"{num:032b}{7:05b}" + "".join(f"{size - 1:04b}" for size in _FIELDS)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate([[0], change])
    lengths = 4 * np.diff(np.append(starts, flat.size))  # each pixel is 4 equal values
    values = np.where(flat[starts], 255, 0).astype(np.int64)
    # runs longer than one record holds: records of 65,536, then the rest (at most 65,536)
    chunks = np.maximum(1, -(-lengths // _LONGEST))
    last = lengths - _LONGEST * (chunks - 1)
    run = np.repeat(np.arange(len(lengths)), chunks)
    length = np.full(len(run), _LONGEST, dtype=np.int64)
    length[np.cumsum(chunks) - 1] = last
    value = values[run]
    # each record: a run of one as one literal word, else a run in the shortest field that holds it (the
    # 16-bit field for every record of a run longer than 256, its last one too, as the SDK writes them)
    long = (lengths > 256)[run]
    field = np.where(long, 3, np.searchsorted(np.array([8, 16, 256]), length, side="left"))
    width = np.array(_FIELDS)[field]
    single = (length == 1) & ~long
    flag = np.where(single, 0, 1)
    field = np.where(single, 0, field)
    width = np.where(single, 3, width)
    count = np.where(single, 0, length - 1)
    nbits = 1 + 2 + width + 8
    code = (flag << (nbits - 1)) | (field << (nbits - 3)) | (count << 8) | value
    # every record's bits, most significant first
    record = np.repeat(np.arange(len(code)), nbits)
    offset = np.arange(len(record)) - np.repeat(np.cumsum(nbits) - nbits, nbits)
    body = ((code[record] >> (nbits[record] - 1 - offset)) & 1).astype(np.uint8)
    head = np.frombuffer(header.encode("ascii"), dtype=np.uint8) - ord("0")
    total = len(head) + len(body)
    pad = np.zeros(8 - total % 8, dtype=np.uint8)  # the SDK pads 8 zero bits when already whole bytes
    return np.packbits(np.concatenate([head, body, pad])).tolist()


def decode_brush(rle: list[int] | bytes) -> np.ndarray:
    """The flat ``uint8`` values of a brush RLE (``decode_rle``: RGBA bytes for a mask, ``H * W * 4``).

    Raises ``ValueError`` on a stream that ends early, runs past its value count, or holds values outside
    0-255."""
    data = np.asarray(list(rle) if isinstance(rle, bytes) else rle, dtype=np.int64)
    if data.size and (data.min() < 0 or data.max() > 255):
        raise ValueError("brush RLE: values must be bytes (0-255)")
    raw = data.astype(np.uint8)
    nbits = 8 * len(raw)
    # 40 bits from each byte on: any read of up to 32 bits at bit p is in the window of byte p // 8
    padded = np.concatenate([raw, np.zeros(5, dtype=np.uint8)]).astype(np.uint64)
    windows: np.ndarray = np.zeros(len(raw), dtype=np.uint64)
    for k in range(5):
        windows = (windows << np.uint64(8)) | padded[k : k + len(raw)]
    window = windows.tolist()
    position = 0

    def read(size: int) -> int:
        nonlocal position
        if position + size > nbits:
            raise ValueError("brush RLE: the stream ends early")
        word = (window[position >> 3] >> (8 - (position & 7))) & 0xFFFFFFFF
        position += size
        return word >> (32 - size)

    num = read(32)
    word_size = read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    values: list[int] = []
    ends: list[int] = []  # where each run (or literal word) ends; only the last can pass num
    i = 0
    word_mask = (1 << word_size) - 1
    # per length field: the shift and mask of the length, the shift of the word, the record's bits
    fields = [(29 - n, (1 << n) - 1, 29 - n - word_size, 3 + n + word_size) for n in sizes]
    longest = 3 + max(sizes) + word_size
    append_value, append_end = values.append, ends.append
    while i < num:
        if longest <= 32 and position + longest <= nbits:  # a run's record in one 32-bit read
            word = (window[position >> 3] >> (8 - (position & 7))) & 0xFFFFFFFF
            if word >> 31:
                length_shift, length_mask, word_shift, step = fields[(word >> 29) & 3]
                i += 1 + ((word >> length_shift) & length_mask)
                append_value((word >> word_shift) & word_mask)
                append_end(i)
                position += step
                continue
        repeated = read(1)
        j = i + 1 + read(sizes[read(2)])
        if repeated:
            append_value(read(word_size))
            append_end(j)
            i = j
        else:
            if j > num:
                raise ValueError("brush RLE: literal words run past the value count")
            for k in range(i + 1, j + 1):
                append_value(read(word_size))
                append_end(k)
            i = j
    if ends:
        ends[-1] = min(ends[-1], num)  # the SDK's slice stops at the end
    lengths = np.diff(np.array(ends, dtype=np.int64), prepend=0)
    out = np.repeat(np.array(values, dtype=np.int64), lengths)
    if out.size and out.max() > 255:
        raise ValueError(f"brush RLE: a {word_size}-bit word above 255 (the values are bytes)")
    return out.astype(np.uint8)
