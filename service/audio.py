"""Decode any container/codec ffmpeg reads into 16 kHz mono float32, with PyAV.

Decoding streams frame by frame. Audio up to `spill_seconds` stays in memory; longer audio
spills to an unnamed temporary file and is read back in windows, so an hour-long upload
never needs its whole waveform in memory.

What goes wrong is told apart for the user:
- not audio at all (no container ffmpeg knows, or no audio stream): UnsupportedMediaError, 415;
- audio that is corrupt or truncated, or whose header declares an implausible sample rate or
  channel count: AudioDecodeError, 422;
- longer than allowed: AudioTooLongError, 413, raised before decoding when the container states
  its duration exactly, else as soon as the decoded samples pass the limit;
- the disk that long audio spills to is full: InsufficientStorageError, 507.

Work is bounded by what is decoded, never by what a header claims: a tiny WAV declaring a 1 Hz
sample rate would otherwise expand into hours of audio, and a few MB of Opus silence can hold
hours. The caller's cancel event is checked between frames.
"""

from __future__ import annotations

import logging
import math
import os
import struct
import sys
import tempfile
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

import av
import numpy as np

from service.backends.base import SAMPLE_RATE, Cancelled
from service.errors import (
    AudioDecodeError,
    AudioTooLongError,
    EmptyUploadError,
    InsufficientStorageError,
    ServiceError,
    UnsupportedMediaError,
    is_disk_full,
)

if TYPE_CHECKING:
    import threading

    import numpy.typing as npt

log = logging.getLogger(__name__)
_BYTES_PER_SAMPLE = 4  # float32

# Containers whose header states the exact duration: decoding much less means truncation.
# (MP3 is left out: without a Xing header ffmpeg estimates its duration from the bitrate.)
_EXACT_DURATION_FORMATS = ("mov", "mp4", "m4a", "matroska", "webm", "flac")
# Containers whose declared duration is trusted to refuse overlong audio before decoding it
# (Ogg's comes from the granule position of its last page, WAV's from its data chunk).
_TRUSTED_DURATION_FORMATS = (*_EXACT_DURATION_FORMATS, "ogg", "wav")
# Plausible source audio: telephone-band 4 kHz to 384 kHz studio masters, up to 64 channels.
MIN_SAMPLE_RATE = 4_000
MAX_SAMPLE_RATE = 384_000
MAX_CHANNELS = 64

# Leading bytes of audio containers: a file that starts like one but that ffmpeg cannot
# open is corrupt (422), not "not audio" (415).
_MAGIC = (
    (0, b"RIFF"),
    (0, b"ID3"),
    (0, b"fLaC"),
    (0, b"OggS"),
    (4, b"ftyp"),
    (0, b"\x1a\x45\xdf\xa3"),  # EBML: Matroska / WebM
    (0, b"#!AMR"),
    (0, b"FORM"),
    (0, b"caff"),
)


@dataclass(frozen=True)
class AudioInfo:
    """Where the audio came from: for logs and quality-sample metadata."""

    container: str
    codec: str
    source_rate: int
    source_channels: int


class DecodedAudio:
    """16 kHz mono float32 samples, in memory or spilled to an unnamed temporary file."""

    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        info: AudioInfo,
        memory: npt.NDArray[np.float32] | None,
        file: IO[bytes] | None,
        n: int,
        warnings: list[str] | None = None,
    ):
        self.info = info
        self._memory = memory
        self._file = file
        self.num_samples = n
        # What the client should know about its upload (e.g. it looks truncated).
        self.warnings = warnings or []

    @classmethod
    def from_array(cls, samples: npt.NDArray[np.float32], info: AudioInfo | None = None) -> DecodedAudio:
        """Wrap samples already at 16 kHz mono (warm-up, tests, benchmarks)."""
        info = info or AudioInfo("raw", "pcm_f32le", SAMPLE_RATE, 1)
        return cls(info, np.ascontiguousarray(samples, dtype=np.float32), None, len(samples))

    @property
    def duration(self) -> float:
        return self.num_samples / self.sample_rate

    @property
    def in_memory(self) -> bool:
        return self._memory is not None

    def read(self, start: int = 0, stop: int | None = None) -> npt.NDArray[np.float32]:
        """Return samples [start, stop) as a new array (a copy when spilled)."""
        stop = self.num_samples if stop is None else min(stop, self.num_samples)
        start = max(0, min(start, stop))
        if self._memory is not None:
            return self._memory[start:stop]
        assert self._file is not None
        data = os.pread(self._file.fileno(), (stop - start) * _BYTES_PER_SAMPLE, start * _BYTES_PER_SAMPLE)
        return np.frombuffer(data, dtype=np.float32).copy()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._memory = None


class _SampleSink:
    """Collects decoded chunks; past `spill_samples` moves them to a temporary file."""

    def __init__(self, spill_samples: int, spill_dir: str | None) -> None:
        self._chunks: list[npt.NDArray[np.float32]] = []
        self._spill_samples = spill_samples
        self._spill_dir = spill_dir
        self.file: IO[bytes] | None = None
        self.n = 0

    def add(self, chunk: npt.NDArray[np.float32]) -> None:
        self.n += len(chunk)
        if self.file is not None:
            self.file.write(chunk.tobytes())
            return
        self._chunks.append(chunk)
        if self.n > self._spill_samples:
            # Kept open until DecodedAudio.close(): unnamed, so the OS frees it even after a crash.
            self.file = tempfile.TemporaryFile(dir=self._spill_dir)  # noqa: SIM115
            for c in self._chunks:
                self.file.write(c.tobytes())
            self._chunks = []

    def keep_first(self, n: int) -> None:
        """Drop what was decoded past the first `n` samples (in memory only: n is small)."""
        assert self.file is None
        samples = np.concatenate(self._chunks)[:n]
        self._chunks, self.n = [samples], len(samples)

    def result(self, info: AudioInfo, warnings: list[str]) -> DecodedAudio:
        if self.file is not None:
            self.file.flush()
            return DecodedAudio(info, None, self.file, self.n, warnings)
        samples = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.float32)
        return DecodedAudio(info, samples.astype(np.float32, copy=False), None, self.n, warnings)

    def discard(self) -> None:
        if self.file is not None:
            self.file.close()


def _looks_like_audio_container(head: bytes) -> bool:
    if any(head[offset : offset + len(magic)] == magic for offset, magic in _MAGIC):
        return True
    # An MPEG audio frame sync (MP3, or AAC in ADTS): 11 set bits.
    return len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0


def _wav_declared_bytes(head: bytes) -> int | None:
    """Return the byte length the WAV header declares for its data chunk, if it says one."""
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(head):
        chunk_id, size = head[pos : pos + 4], struct.unpack("<I", head[pos + 4 : pos + 8])[0]
        if chunk_id == b"data":
            # Streaming writers put 0 or 0xFFFFFFFF when they do not know the length yet.
            return None if size in (0, 0xFFFFFFFF) else pos + 8 + size
        pos += 8 + size + (size & 1)
    return None


def decode_audio(
    source: IO[bytes],
    *,
    max_seconds: float,
    spill_seconds: float = 600.0,
    spill_dir: str | None = None,
    cancel: threading.Event | None = None,
    keep_seconds: float | None = None,
    enforce_length: bool | None = None,
) -> DecodedAudio:
    """Decode `source` (a seekable binary file) to 16 kHz mono float32; with `keep_seconds`, only
    its first seconds. A declared length over `max_seconds` is refused unless `enforce_length` is
    False (its default when only the first seconds are wanted).

    Raises EmptyUploadError, UnsupportedMediaError, AudioDecodeError, AudioTooLongError,
    InsufficientStorageError, or Cancelled when `cancel` is set.
    """
    enforce = keep_seconds is None if enforce_length is None else enforce_length
    try:
        return _decode(source, max_seconds, spill_seconds, spill_dir, cancel, keep_seconds, enforce)
    except (ServiceError, Cancelled):
        raise
    except OSError as exc:
        if is_disk_full(exc):
            raise InsufficientStorageError(
                "the service's temporary disk is full, so this audio cannot be decoded now; shorter audio still works"
            ) from exc
        raise
    except Exception as exc:
        # Only client bytes get here: whatever else PyAV raises on them (a stream without a
        # codec, a header field out of range) is a file we cannot decode, not a server fault.
        log.warning("undecodable upload (%s: %s)", type(exc).__name__, exc, exc_info=True)
        raise AudioDecodeError(f"the audio cannot be decoded ({type(exc).__name__})") from exc


def _decode(
    source: IO[bytes],
    max_seconds: float,
    spill_seconds: float,
    spill_dir: str | None,
    cancel: threading.Event | None,
    keep_seconds: float | None = None,
    enforce_length: bool = True,
) -> DecodedAudio:
    source.seek(0, os.SEEK_END)
    size = source.tell()
    source.seek(0)
    if size == 0:
        raise EmptyUploadError("the uploaded file is empty")
    head = source.read(4096)
    source.seek(0)
    try:
        container = av.open(source, mode="r")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        if _looks_like_audio_container(head):
            raise AudioDecodeError("the audio file is corrupt or truncated and cannot be opened") from exc
        raise UnsupportedMediaError("the upload is not an audio or video file that can be decoded") from exc
    sink = _SampleSink(int(spill_seconds * SAMPLE_RATE), spill_dir)
    try:
        with container:
            if not container.streams.audio:
                raise UnsupportedMediaError(f"the {container.format.name} file has no audio stream")
            stream = container.streams.audio[0]
            if stream.codec_context is None:
                raise AudioDecodeError(f"the {container.format.name} file's audio codec is unknown or unsupported")
            info = AudioInfo(
                container=container.format.name,
                codec=stream.codec_context.name,
                source_rate=stream.codec_context.sample_rate or 0,
                source_channels=stream.codec_context.channels or 0,
            )
            _check_plausible(info.source_rate, info.source_channels)
            declared = container.duration / av.time_base if container.duration else None
            trusted = any(name in _TRUSTED_DURATION_FORMATS for name in info.container.split(","))
            if enforce_length and trusted and declared is not None and declared > max_seconds + 1.0:
                raise AudioTooLongError(
                    f"the audio lasts {declared:.0f} s, longer than the limit of {max_seconds:.0f} s"
                )
            keep = None if keep_seconds is None else int(keep_seconds * SAMPLE_RATE)
            _decode_stream(container, stream, sink, _max_samples(max_seconds), cancel, keep)
        if sink.n == 0:
            raise AudioDecodeError("no audio samples could be decoded from the upload")
        decoded_seconds = sink.n / SAMPLE_RATE
        if keep is not None:
            return sink.result(info, [])
        _check_complete(info, declared, decoded_seconds, head, size)
        warnings = _ogg_truncation_warning(source, size, decoded_seconds) if info.container == "ogg" else []
        return sink.result(info, warnings)
    except BaseException:
        sink.discard()
        raise


def decode_pcm(
    source: IO[bytes],
    *,
    max_seconds: float,
    spill_seconds: float = 600.0,
    spill_dir: str | None = None,
    cancel: threading.Event | None = None,
    keep_seconds: float | None = None,
) -> DecodedAudio:
    """Read raw 16 kHz mono signed 16-bit little-endian PCM (what Bazarr sends with encode=false).

    Read in 1 MB steps, so a two-hour film never sits in memory whole. Raises EmptyUploadError,
    AudioTooLongError, InsufficientStorageError or Cancelled.
    """
    sink = _SampleSink(int(spill_seconds * SAMPLE_RATE), spill_dir)
    max_samples = _max_samples(max_seconds)
    keep = None if keep_seconds is None else int(keep_seconds * SAMPLE_RATE)
    source.seek(0)
    carry = b""
    try:
        while chunk := source.read(1 << 20):
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            data = carry + chunk
            whole = len(data) - len(data) % 2  # a sample may straddle two reads
            carry = data[whole:]
            sink.add(np.frombuffer(data[:whole], dtype="<i2").astype(np.float32) / 32768.0)
            if keep is not None and sink.n >= keep:
                sink.keep_first(keep)
                break
            if sink.n > max_samples:
                raise AudioTooLongError(f"the audio is longer than the limit of {max_samples / SAMPLE_RATE:.0f} s")
        if sink.n == 0:
            raise EmptyUploadError("the uploaded PCM holds no samples")
        return sink.result(AudioInfo("raw", "pcm_s16le", SAMPLE_RATE, 1), [])
    except OSError as exc:
        sink.discard()
        if is_disk_full(exc):
            raise InsufficientStorageError("the service's temporary disk is full; retry later") from exc
        raise
    except BaseException:
        sink.discard()
        raise


def _check_plausible(rate: int, channels: int) -> None:
    """Raise AudioDecodeError for a sample rate or channel count no real recording has (0: unknown)."""
    if rate and not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioDecodeError(
            f"the audio declares a sample rate of {rate} Hz; accepted are {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz"
        )
    if channels > MAX_CHANNELS:
        raise AudioDecodeError(f"the audio declares {channels} channels; at most {MAX_CHANNELS} are accepted")


def _decode_stream(
    container: av.container.InputContainer,
    stream: av.AudioStream,
    sink: _SampleSink,
    max_samples: int,
    cancel: threading.Event | None,
    keep: int | None = None,
) -> None:
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    checked = False
    try:
        for frame in container.decode(stream):
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            if not checked:
                # What the decoder really produces, where the header said nothing (raw streams).
                _check_plausible(frame.sample_rate, len(frame.layout.channels))
                checked = True
            frame.pts = None  # the resampler needs no timestamps and rejects odd ones
            for out in resampler.resample(frame):
                sink.add(_mono(out))
            if keep is not None and sink.n >= keep:
                sink.keep_first(keep)
                return
            if sink.n > max_samples:
                raise AudioTooLongError(f"the audio is longer than the limit of {max_samples / SAMPLE_RATE:.0f} s")
        for out in resampler.resample(None):
            sink.add(_mono(out))
    except av.error.FFmpegError as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise AudioDecodeError(
            f"the audio is corrupt or truncated: decoding failed after {sink.n / SAMPLE_RATE:.1f} s ({reason})"
        ) from exc
    if sink.n > max_samples:
        raise AudioTooLongError(f"the audio is longer than the limit of {max_samples / SAMPLE_RATE:.0f} s")


def _mono(frame: av.AudioFrame) -> npt.NDArray[np.float32]:
    return np.asarray(frame.to_ndarray(), dtype=np.float32).reshape(-1)


def _max_samples(max_seconds: float) -> int:
    """The sample limit for `max_seconds` (no limit when it is infinite)."""
    return sys.maxsize if math.isinf(max_seconds) else int(max_seconds * SAMPLE_RATE)


def _check_complete(info: AudioInfo, declared: float | None, decoded: float, head: bytes, size: int) -> None:
    """Raise AudioDecodeError when the container says the audio is longer than what decoded."""
    wav_end = _wav_declared_bytes(head) if info.container == "wav" else None
    if wav_end is not None and size < wav_end:
        raise AudioDecodeError(
            f"the WAV file is truncated: its header declares {wav_end} bytes but the upload has {size}"
        )
    exact = any(name in _EXACT_DURATION_FORMATS for name in info.container.split(","))
    if exact and declared and declared - decoded > max(0.5, 0.05 * declared):
        raise AudioDecodeError(
            f"the audio is truncated: the file declares {declared:.1f} s but only {decoded:.1f} s could be decoded"
        )


def _ogg_truncation_warning(source: IO[bytes], size: int, decoded_seconds: float) -> list[str]:
    """A warning when an Ogg file does not end with a complete end-of-stream page.

    Ogg states no total length up front, so a cut-off upload decodes cleanly up to the cut;
    only its tail tells: the last page must be whole and carry the end-of-stream flag (0x04).
    """
    tail_start = max(0, size - 70_000)  # a page is at most 65,307 bytes
    source.seek(tail_start)
    tail = source.read()
    source.seek(0)
    at = tail.rfind(b"OggS")
    complete = False
    while at != -1:
        header_end = at + 27
        if header_end <= len(tail) and tail[at + 4] == 0:  # stream structure version 0
            count = tail[at + 26]
            if header_end + count <= len(tail):
                page_end = header_end + count + sum(tail[header_end : header_end + count])
                complete = page_end == len(tail) and bool(tail[at + 5] & 0x04)
            break
        at = tail.rfind(b"OggS", 0, at)
    if complete:
        return []
    return [
        f"the Ogg file ends without its end-of-stream page, so it may be truncated: "
        f"the transcript covers the {decoded_seconds:.1f} s that could be decoded"
    ]


def load_file(path: str | os.PathLike[str], max_seconds: float = float("inf")) -> DecodedAudio:
    """Decode a file on disk (CLI, evaluation, benchmarks)."""
    with open(path, "rb") as fh:
        return decode_audio(fh, max_seconds=max_seconds)
