from __future__ import annotations

import io
import itertools
import subprocess
from typing import TYPE_CHECKING

import numpy as np
import pytest

from service.audio import DecodedAudio, decode_audio, load_file
from service.errors import AudioDecodeError, AudioTooLongError, EmptyUploadError, UnsupportedMediaError
from service.windowing import plan_windows
from tests.conftest import CONTAINERS

if TYPE_CHECKING:
    from pathlib import Path


def _truncated(path: Path, tmp_path: Path) -> Path:
    data = path.read_bytes()
    out = tmp_path / f"half-{path.name}"
    out.write_bytes(data[: len(data) // 2])
    return out


@pytest.mark.parametrize("ext", CONTAINERS)
def test_every_container_decodes_to_16k_mono_of_the_same_length(speech_dir: Path, ext: str) -> None:
    reference = load_file(speech_dir / "fox.wav")
    audio = load_file(speech_dir / f"fox.{ext}")
    assert audio.sample_rate == 16_000
    samples = audio.read()
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert audio.duration == pytest.approx(reference.duration, abs=0.05)
    assert 0.01 < float(np.sqrt(np.mean(samples**2))) < 1.0  # speech, not silence or garbage


def test_empty_upload() -> None:
    with pytest.raises(EmptyUploadError):
        decode_audio(io.BytesIO(b""), max_seconds=60)


@pytest.mark.parametrize(
    "payload",
    [b"hello, this is plain text and not audio at all\n" * 20, bytes(range(256)) * 40, b"%PDF-1.4\n" + b"x" * 4000],
)
def test_not_audio_is_unsupported_media(payload: bytes) -> None:
    with pytest.raises(UnsupportedMediaError):
        decode_audio(io.BytesIO(payload), max_seconds=60)


def test_video_without_audio_is_unsupported_media(tmp_path: Path) -> None:
    video = tmp_path / "silent.mp4"
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=duration=1:size=64x64:rate=5", str(video)],
        check=True,
    )
    with pytest.raises(UnsupportedMediaError, match="no audio stream"):
        load_file(video)


@pytest.mark.parametrize("ext", ["wav", "flac", "m4a", "webm"])
def test_truncated_audio_is_a_decode_error(speech_dir: Path, tmp_path: Path, ext: str) -> None:
    with pytest.raises(AudioDecodeError, match="truncated"):
        load_file(_truncated(speech_dir / f"fox.{ext}", tmp_path))


def test_corrupt_container_header_is_a_decode_error(speech_dir: Path, tmp_path: Path) -> None:
    data = bytearray((speech_dir / "fox.flac").read_bytes())
    data[8:400] = b"\x00" * 392  # keep the fLaC magic, destroy the stream info
    path = tmp_path / "corrupt.flac"
    path.write_bytes(bytes(data))
    with pytest.raises(AudioDecodeError):
        load_file(path)


def test_audio_longer_than_the_limit_stops_decoding_early(speech_dir: Path) -> None:
    with pytest.raises(AudioTooLongError, match="limit of 1 s"):
        load_file(speech_dir / "fox.wav", max_seconds=1.0)


def test_long_audio_spills_to_disk_and_reads_back_identically(speech_dir: Path) -> None:
    in_memory = load_file(speech_dir / "weather.ogg")
    with open(speech_dir / "weather.ogg", "rb") as fh:
        spilled = decode_audio(fh, max_seconds=60, spill_seconds=0.5)
    assert in_memory.in_memory and not spilled.in_memory
    assert spilled.num_samples == in_memory.num_samples
    np.testing.assert_array_equal(spilled.read(8000, 24000), in_memory.read(8000, 24000))
    np.testing.assert_array_equal(spilled.read(), in_memory.read())
    spilled.close()


def test_windows_cover_the_audio_and_cut_in_the_quiet() -> None:
    rate = 16_000
    rng = np.random.default_rng(1)
    loud = rng.normal(0, 0.3, rate * 100).astype(np.float32)
    loud[rate * 55 : rate * 56] = 0.0  # a silent second inside the search span of the first cut
    windows = list(plan_windows(DecodedAudio.from_array(loud), window_seconds=60))
    assert windows[0][0] == 0 and windows[-1][1] == len(loud)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(windows))
    assert rate * 55 <= windows[0][1] <= rate * 56
    assert all(stop - start <= 60 * rate for start, stop in windows)
