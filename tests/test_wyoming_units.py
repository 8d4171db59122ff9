"""The Wyoming adapter's pieces that need no server: framing checks and audio conversion."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from wyoming.event import async_read_event

from service.wyoming.audio import AudioFormat, Converter, FormatError, check_format
from service.wyoming.framing import FrameError, GuardedReader, version_tuple


async def read(data: bytes, limit: int = 1 << 20) -> tuple[object, GuardedReader]:
    stream = asyncio.StreamReader()
    stream.feed_data(data)
    stream.feed_eof()
    guarded = GuardedReader(stream, limit)
    return await async_read_event(guarded), guarded  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_a_well_formed_event_is_read_with_its_version() -> None:
    event, guarded = await read(b'{"type": "audio-chunk", "version": "1.10.2", "payload_length": 4}\n\x01\x00\x02\x00')
    assert getattr(event, "type", None) == "audio-chunk" and getattr(event, "payload", None) == b"\x01\x00\x02\x00"
    assert guarded.version == (1, 10, 2)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"not json\n", "invalid_event"),
        (b'"a string"\n', "invalid_event"),
        (b'{"data": {}}\n', "invalid_event"),
        (b'{"type": "describe", "data": [1]}\n', "invalid_event"),
        (b'{"type": "audio-chunk", "payload_length": true}\n', "invalid_event"),
        (b'{"type": "audio-chunk", "payload_length": 2000000}\n', "event_too_large"),
        (b'{"type": "x", "data_length": 600000, "payload_length": 600000}\n', "event_too_large"),
    ],
)
async def test_a_header_that_lies_is_refused_before_anything_more_is_read(data: bytes, code: str) -> None:
    with pytest.raises(FrameError) as refused:
        await read(data)
    assert refused.value.code == code


@pytest.mark.anyio
async def test_bad_data_is_told_apart_from_the_end_of_the_stream() -> None:
    event, guarded = await read(b'{"type": "transcribe", "data_length": 5}\n"abc"')
    assert event is None and guarded.mid_event
    event, guarded = await read(b'{"type": "transcri')  # the client left mid-line
    assert event is None and not guarded.mid_event


def test_version_tuple() -> None:
    assert version_tuple("1.7.0") == (1, 7, 0) and version_tuple("1.10.2") > (1, 7)
    assert version_tuple("one") is None and version_tuple(7) is None


@pytest.mark.parametrize(("rate", "width", "channels"), [(4000, 2, 1), (96000, 2, 1), (16000, 0, 1), (16000, 2, 9)])
def test_formats_outside_the_accepted_ranges_are_refused(rate: int, width: int, channels: int) -> None:
    with pytest.raises(FormatError):
        check_format(rate, width, channels)
    with pytest.raises(FormatError):
        check_format(True, 2, 1)


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_every_width_and_a_downmix_give_the_same_signal(width: int) -> None:
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(1600) / 16_000)).astype(np.float64)
    scale = {1: 127, 2: 32767, 3: 8388607, 4: 2147483647}[width]
    ints = np.round(tone * scale).astype(np.int64)
    stereo = np.repeat(ints, 2)  # the same in both channels
    if width == 1:
        data = (stereo + 128).astype(np.uint8).tobytes()
    elif width == 3:
        data = b"".join(int(v).to_bytes(3, "little", signed=True) for v in stereo)
    else:
        data = stereo.astype({2: "<i2", 4: "<i4"}[width]).tobytes()
    out = Converter(check_format(16_000, width, 2)).convert(data)
    assert out.dtype == np.float32 and out.size == 1600
    assert np.max(np.abs(out - tone)) < 2 / scale + 1e-6


def test_resampling_keeps_length_and_pitch_across_chunks() -> None:
    rate = 44_100
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate) * 32767).astype("<i2").tobytes()
    converter = Converter(AudioFormat(rate, 2, 1))
    parts = [converter.convert(tone[i : i + 1764]) for i in range(0, len(tone), 1764)]  # 20 ms chunks
    out = np.concatenate([*parts, converter.flush()])
    assert abs(out.size - 16_000) <= 32
    spectrum = np.abs(np.fft.rfft(out[:16_000]))
    assert abs(int(np.argmax(spectrum)) - 440) <= 2  # 1 Hz per bin over one second


def test_a_chunk_of_part_of_a_frame_is_refused() -> None:
    with pytest.raises(FormatError):
        Converter(AudioFormat(16_000, 2, 2)).convert(b"\0" * 6)


def test_the_bench_trims_espeaks_trailing_silence_so_that_none_means_none() -> None:
    from bench.wyoming import trim_tail

    rate = 16_000
    tone = (0.5 * 32767 * np.sin(np.arange(rate) * 2 * np.pi * 440 / rate)).astype(np.int16)
    tail = np.zeros(int(0.43 * rate), np.int16)  # espeak-ng's own, after every utterance
    trimmed = np.frombuffer(trim_tail(np.concatenate([tone, tail]).tobytes()), np.int16)
    loud = np.nonzero(np.abs(tone) > 328)[0][-1] + 1
    assert trimmed.size == loud + int(0.05 * rate)  # the speech, and 50 ms after it
    assert np.array_equal(trimmed[:loud], tone[:loud])
    assert trim_tail(tail.tobytes()) == tail.tobytes()  # nothing loud: left as it is
