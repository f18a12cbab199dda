"""Speech-like demo audio: WAV (``wave``) and a tiny pure-Python FLAC encoder.

Audio is a sequence of fixed-size blocks taken from a small palette (a few "voices" and
quiet room noise), so hours of sound are written in well under a second: each palette
block is encoded once; per FLAC frame only the header and its CRCs are computed (the
CRC-16 over the cached frame body is combined using CRC linearity).
"""
from __future__ import annotations

import array
import hashlib
import math
import os
import random
import struct
import sys
import wave
from pathlib import Path
from typing import BinaryIO, Iterable

BLOCK = 2048                      # samples per block / FLAC frame
_SR_CODES = {8000: 0b0100, 16000: 0b0101, 22050: 0b0110, 24000: 0b0111, 32000: 0b1000,
             44100: 0b1001, 48000: 0b1010}


def _crc8_table() -> list[int]:
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = ((c << 1) ^ 0x07) & 0xFF if c & 0x80 else (c << 1) & 0xFF
        t.append(c)
    return t


def _crc16_table() -> list[int]:
    t = []
    for i in range(256):
        c = i << 8
        for _ in range(8):
            c = ((c << 1) ^ 0x8005) & 0xFFFF if c & 0x8000 else (c << 1) & 0xFFFF
        t.append(c)
    return t


CRC8 = _crc8_table()
CRC16 = _crc16_table()


def crc8(data: bytes, crc: int = 0) -> int:
    for b in data:
        crc = CRC8[crc ^ b]
    return crc


def crc16(data: bytes, crc: int = 0) -> int:
    t = CRC16
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ t[(crc >> 8) ^ b]
    return crc


class _Crc16Shift:
    """crc16 of ``n`` zero bytes from any start state, as two table look-ups (CRC is linear)."""

    def __init__(self, n: int) -> None:
        zeros = bytes(n)
        basis = [crc16(zeros, 1 << k) for k in range(16)]
        self.hi = [self._apply(basis, v << 8) for v in range(256)]
        self.lo = [self._apply(basis, v) for v in range(256)]

    @staticmethod
    def _apply(basis: list[int], s: int) -> int:
        r = 0
        for k in range(16):
            if s >> k & 1:
                r ^= basis[k]
        return r

    def __call__(self, s: int) -> int:
        return self.hi[s >> 8] ^ self.lo[s & 0xFF]


def _utf8_number(n: int) -> bytes:
    """FLAC's UTF-8-like coding of the frame number."""
    if n < 0x80:
        return bytes([n])
    for nbytes, limit in ((2, 0x800), (3, 0x10000), (4, 0x200000), (5, 0x4000000), (6, 0x80000000)):
        if n < limit:
            out = []
            for _ in range(nbytes - 1):
                out.append(0x80 | (n & 0x3F))
                n >>= 6
            first = ((0xFF << (8 - nbytes)) & 0xFF) | n
            return bytes([first] + out[::-1])
    raise ValueError("frame number too large")


# ---- the palette ---------------------------------------------------------------------

def palette(rate: int, voices: int, seed: int, variants: int = 4) -> list[list[float]]:
    """Blocks of float samples in -1..1: [silence x2] + ``variants`` per voice (speech-like)."""
    rng = random.Random(seed)
    blocks: list[list[float]] = []
    for _ in range(2):
        blocks.append([rng.gauss(0.0, 0.004) for _ in range(BLOCK)])
    two_pi = 2 * math.pi
    for v in range(voices):
        f0 = 95.0 + 140.0 * ((v * 0.37) % 1.0)          # distinct pitch per voice
        harmonics = [(h, 0.55 / h * (1.0 + 0.3 * math.sin(v + h))) for h in range(1, 6)]
        for k in range(variants):
            f = f0 * (1.0 + 0.06 * (k - variants / 2) / variants)
            syl = 3.0 + 1.5 * rng.random()              # syllables per second
            phase = rng.random()
            block = []
            for i in range(BLOCK):
                t = i / rate
                env = 0.15 + 0.85 * max(0.0, math.sin(math.pi * ((t * syl + phase) % 1.0)))
                s = sum(a * math.sin(two_pi * h * f * t) for h, a in harmonics)
                block.append(max(-1.0, min(1.0, 0.45 * env * s + rng.gauss(0.0, 0.01))))
            blocks.append(block)
    return blocks


def voice_block(voice: int, n: int, variants: int = 4) -> int:
    """Palette index of voice ``voice`` (0-based), variant from a running counter."""
    return 2 + voice * variants + n % variants


def silence_block(n: int) -> int:
    return n % 2


def _pcm(block: list[float], bits: int, signed8: bool) -> array.array:
    if bits == 16:
        return array.array("h", (int(x * 32767) for x in block))
    if signed8:
        return array.array("b", (int(x * 127) for x in block))
    return array.array("B", (128 + int(x * 127) for x in block))


# ---- writers -------------------------------------------------------------------------

def write_wav(path: Path, rate: int, bits: int, blocks: list[list[float]], sequence: Iterable[int],
              last_len: int = BLOCK) -> int:
    """Write a mono WAV of the palette blocks in ``sequence``; returns its size."""
    pcm = []
    for b in blocks:
        a = _pcm(b, bits, signed8=False)
        if bits == 16 and sys.byteorder == "big":
            a.byteswap()
        pcm.append(a.tobytes())
    seq = list(sequence)
    width = bits // 8
    with _atomic(path) as f:
        w = wave.open(f, "wb")
        w.setnchannels(1)
        w.setsampwidth(width)
        w.setframerate(rate)
        for n, idx in enumerate(seq):
            data = pcm[idx]
            if n == len(seq) - 1:
                data = data[: last_len * width]
            w.writeframesraw(data)
        w.close()
    return path.stat().st_size


def write_flac(path: Path, rate: int, bits: int, blocks: list[list[float]], sequence: Iterable[int],
               last_len: int = BLOCK) -> int:
    """Write a mono FLAC (verbatim subframes, correct CRCs and MD5); returns its size."""
    if bits not in (8, 16):
        raise ValueError("bits must be 8 or 16")
    seq = list(sequence)
    total = (len(seq) - 1) * BLOCK + last_len if seq else 0
    bodies: list[bytes] = []      # subframe header + big-endian samples
    body_crc: list[int] = []
    md5_le: list[bytes] = []
    for b in blocks:
        a = _pcm(b, bits, signed8=True)
        le = a
        if bits == 16 and sys.byteorder == "big":
            le = array.array("h", a)
            le.byteswap()
        md5_le.append(le.tobytes())
        be = array.array(a.typecode, a)
        if bits == 16 and sys.byteorder == "little":
            be.byteswap()
        body = b"\x02" + be.tobytes()          # VERBATIM subframe, no wasted bits
        bodies.append(body)
        body_crc.append(crc16(body))
    shift = _Crc16Shift(len(bodies[0]))
    sr_code = _SR_CODES.get(rate, 0)
    bps_code = {8: 0b001, 16: 0b100}[bits]
    md5 = hashlib.md5()
    with _atomic(path) as f:
        f.write(b"fLaC")
        streaminfo = struct.pack(">HH", BLOCK, BLOCK) + (0).to_bytes(3, "big") + (0).to_bytes(3, "big")
        packed = (rate << 44) | (0 << 41) | ((bits - 1) << 36) | total   # rate20 ch3 bps5 total36
        streaminfo += packed.to_bytes(8, "big")
        md5_pos = 4 + 4 + len(streaminfo)
        streaminfo += bytes(16)
        f.write(bytes([0x80, 0, 0, len(streaminfo)]) + streaminfo)   # last metadata block
        for n, idx in enumerate(seq):
            last = n == len(seq) - 1 and last_len != BLOCK
            bs_code = 0b0111 if last else 0b1011
            head = bytes([0xFF, 0xF8, (bs_code << 4) | sr_code, (0 << 4) | (bps_code << 1)])
            head += _utf8_number(n)
            if last:
                head += struct.pack(">H", last_len - 1)
            if sr_code == 0:
                pass      # sample rate from STREAMINFO
            head += bytes([crc8(head)])
            if last:
                body = bodies[idx][: 1 + last_len * bits // 8]
                crc = crc16(body, crc16(head))
                md5.update(md5_le[idx][: last_len * bits // 8])
            else:
                body = bodies[idx]
                crc = shift(crc16(head)) ^ body_crc[idx]
                md5.update(md5_le[idx])
            f.write(head)
            f.write(body)
            f.write(struct.pack(">H", crc))
        f.seek(md5_pos)
        f.write(md5.digest())
    return path.stat().st_size


class _atomic:
    """Write to ``name.tmp`` and rename into place on success (never a partial final file)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.f: BinaryIO | None = None

    def __enter__(self) -> BinaryIO:
        self.f = open(self.tmp, "w+b")
        return self.f

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.f is not None
        try:
            if exc_type is None:
                self.f.flush()
                os.fsync(self.f.fileno())
        finally:
            self.f.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def sequence_for(duration: float, rate: int, speech: list[tuple[float, float, int]]) -> tuple[list[int], int]:
    """Palette indices for ``duration`` seconds given (start, end, voice) spans; + last block length."""
    n_samples = max(1, int(round(duration * rate)))
    n_blocks = (n_samples + BLOCK - 1) // BLOCK
    last_len = n_samples - (n_blocks - 1) * BLOCK
    seq = []
    spans = sorted(speech)
    j = 0
    for n in range(n_blocks):
        t = (n + 0.5) * BLOCK / rate
        while j < len(spans) and spans[j][1] < t:
            j += 1
        if j < len(spans) and spans[j][0] <= t <= spans[j][1]:
            seq.append(voice_block(spans[j][2], n))
        else:
            seq.append(silence_block(n))
    return seq, last_len
