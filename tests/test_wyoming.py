"""The Wyoming server (service/wyoming) against a real server process and model, with the protocol
library's own async TCP client, as Home Assistant uses it; and raw bytes where a client lies."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.event import Event, async_read_event
from wyoming.info import Describe, Info

from bench.wyoming_client import Pcm, transcribe
from deploy.local_stack import free_port
from tests.conftest import SENTENCES, Server, serve, wait_until, wer
from tests.test_hardening_server import metric

pytestmark = pytest.mark.slow
MAX_STREAMS = 6
MAX_BYTES = 2_000_000
WY = {"entrypoint": "wyoming"}


@dataclass
class Wyoming:
    server: Server
    port: int

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        return metric(self.server, name, {**WY, **(labels or {})})


@pytest.fixture(scope="module")
def wy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Wyoming]:
    port = free_port()
    env = {
        "ASR_WYOMING_PORT": str(port),
        "ASR_WYOMING_MAX_UTTERANCE_BYTES": str(MAX_BYTES),
        "ASR_WYOMING_IDLE_SECONDS": "3",
        "ASR_WYOMING_SEND_TIMEOUT_SECONDS": "2",
        "ASR_MAX_STREAMS": str(MAX_STREAMS),
    }
    with serve(env, tmp_path_factory.mktemp("wyoming")) as server:
        yield Wyoming(server, port)


def sox(source: Path, out: Path, rate: int, channels: int, bits: int, encoding: str = "signed-integer") -> Pcm:
    """`source` as raw PCM in another format (sox; raw, since Python's wave reads 16-bit WAV only)."""
    args = ["-r", str(rate), "-c", str(channels), "-b", str(bits), "-e", encoding, "-t", "raw"]
    subprocess.run(["sox", str(source), *args, str(out)], check=True)
    return Pcm(out.read_bytes(), rate, bits // 8, channels)


def raw(kind: str, data: dict[str, Any] | None = None, payload: bytes = b"", version: str | None = "1.5.0") -> bytes:
    """One event as bytes, written by hand: for clients the library would not be (old, or lying)."""
    header: dict[str, Any] = {"type": kind}
    if version is not None:
        header["version"] = version
    body = json.dumps(data).encode() if data else b""
    if body:
        header["data_length"] = len(body)
    if payload:
        header["payload_length"] = len(payload)
    return json.dumps(header).encode() + b"\n" + body + payload


async def events_until(reader: asyncio.StreamReader, last: str, seconds: float = 60) -> list[Event]:
    """Events read until one of type `last` (or an error, or the end of the stream)."""
    out: list[Event] = []
    async with asyncio.timeout(seconds):
        while (event := await async_read_event(reader)) is not None:
            out.append(event)
            if event.type in (last, "error"):
                break
    return out


async def describe(port: int) -> Info:
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Describe().event())
        event = await asyncio.wait_for(client.read_event(), 30)
        assert event is not None and Info.is_type(event.type), event
        return Info.from_event(event)


# ---- describe, utterances, streaming --------------------------------------------------------


@pytest.mark.anyio
async def test_describe_lists_the_models_with_their_languages_and_attribution(wy: Wyoming) -> None:
    info = await describe(wy.port)
    assert len(info.asr) == 1
    program = info.asr[0]
    assert program.installed and program.supports_transcript_streaming
    assert [m.name for m in program.models] == ["whisper-tiny.en"]
    model = program.models[0]
    assert model.installed and model.languages == ["en"]
    assert model.attribution.url.startswith("https://") and "whisper-1" in (model.description or "")


@pytest.mark.anyio
async def test_an_utterance_sent_in_real_time_gets_its_words_streamed_before_the_stop(
    wy: Wyoming, speech_dir: Path
) -> None:
    utterances = wy.metric("asr_stream_finalisation_seconds_count")
    # As Home Assistant sends it: 20 ms chunks in real time, then the 0.7 s of silence its VAD waits for.
    audio = Pcm.from_wav(speech_dir / "meeting.wav").with_silence(0.7)
    answer = await transcribe("127.0.0.1", wy.port, audio)
    assert answer.error is None
    assert answer.text is not None and wer(SENTENCES["meeting"], answer.text) <= 0.25, answer.text
    assert answer.language == "en"
    kinds = [e.type for _, e in answer.events]
    assert kinds[0] == "transcript-start" and kinds[-2:] == ["transcript", "transcript-stop"], kinds
    early = [text for at, text in answer.chunks if at < 0]
    assert early, f"no transcript-chunk before the audio-stop: {answer.chunks}"
    assert SENTENCES["meeting"].lower().startswith(early[0].strip().lower()[:3])
    print(f"latency after audio-stop {answer.latency:.2f} s; chunks {answer.chunks}")
    assert wy.metric("asr_stream_finalisation_seconds_count") == utterances + 1
    assert wy.metric("asr_stream_audio_seconds_total") >= audio.seconds - 0.1


@pytest.mark.anyio
async def test_a_client_before_streaming_gets_the_plain_transcript(wy: Wyoming, speech_dir: Path) -> None:
    audio = Pcm.from_wav(speech_dir / "fox.wav")
    fmt = {"rate": audio.rate, "width": audio.width, "channels": audio.channels}
    reader, writer = await asyncio.open_connection("127.0.0.1", wy.port)
    try:  # wyoming 1.5 (before transcript streaming), all at once
        writer.write(raw("transcribe", {"language": "en"}) + raw("audio-start", fmt))
        chunks = range(0, len(audio.data), 8820)
        writer.write(b"".join(raw("audio-chunk", fmt, audio.data[i : i + 8820]) for i in chunks))
        writer.write(raw("audio-stop"))
        events = await events_until(reader, "transcript")
    finally:
        writer.close()
    assert [e.type for e in events] == ["transcript"]
    assert wer(SENTENCES["fox"], events[0].data["text"]) <= 0.25, events[0].data


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("rate", "channels", "bits", "encoding"),
    [
        (44100, 2, 16, "signed-integer"),
        (8000, 1, 16, "signed-integer"),
        (16000, 1, 8, "unsigned-integer"),
        (48000, 3, 24, "signed-integer"),
        (16000, 1, 32, "signed-integer"),
    ],
)
async def test_other_formats_are_converted_as_an_upload_of_them_is_decoded(
    wy: Wyoming, speech_dir: Path, tmp_path: Path, rate: int, channels: int, bits: int, encoding: str
) -> None:
    audio = sox(speech_dir / "weather.wav", tmp_path / "audio.raw", rate, channels, bits, encoding)
    answer = await transcribe("127.0.0.1", wy.port, audio, chunk_ms=100, realtime=False)
    # The same audio as a WAV upload, decoded by the service's own PyAV path: the same words.
    wav = tmp_path / "audio.wav"
    subprocess.run(["sox", *raw_format(audio, encoding), str(tmp_path / "audio.raw"), str(wav)], check=True)
    files = {"file": ("audio.wav", wav.read_bytes())}
    upload = await asyncio.to_thread(httpx.post, wy.server.url + "/transcribe", files=files, timeout=60)
    name = f"{rate} Hz, {channels} channels, {bits} bits"
    assert answer.text is not None and wer(upload.json()["text"], answer.text) <= 0.1, (name, answer.text, upload.text)
    # 8 kHz and 8-bit audio lose what tiny.en needs for "The weather today"; the rest comes through.
    assert "from the west" in answer.text.lower(), (name, answer.text)


def raw_format(audio: Pcm, encoding: str) -> list[str]:
    return ["-r", str(audio.rate), "-c", str(audio.channels), "-b", str(audio.width * 8), "-e", encoding, "-t", "raw"]


@pytest.mark.anyio
async def test_models_are_chosen_by_id_or_alias_and_unknown_ones_are_errors(wy: Wyoming, speech_dir: Path) -> None:
    audio = Pcm.from_wav(speech_dir / "fox.wav")
    for name in ("whisper-tiny.en", "whisper-1"):
        answer = await transcribe("127.0.0.1", wy.port, audio, chunk_ms=100, realtime=False, model=name)
        assert answer.text is not None and wer(SENTENCES["fox"], answer.text) <= 0.25, (name, answer.text)
    unknown = await transcribe("127.0.0.1", wy.port, audio, chunk_ms=100, realtime=False, model="large-v9")
    assert unknown.error is not None and unknown.error.code == "model_not_found" and unknown.text is None
    german = await transcribe("127.0.0.1", wy.port, audio, chunk_ms=100, realtime=False, language="de")
    assert german.error is not None and "language" in german.error.text and german.text is None


# ---- refusals ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_formats_not_accepted_get_error_events_and_the_connection_goes_on(wy: Wyoming) -> None:
    refused = wy.metric("asr_stream_events_rejected_total", {"reason": "unsupported"})
    async with AsyncTcpClient("127.0.0.1", wy.port) as client:
        formats = [(4000, 2, 1), (16000, 5, 1), (16000, 2, 0), ("fast", 2, 1)]
        for rate, width, channels in formats:
            fmt = {"rate": rate, "width": width, "channels": channels}
            await client.write_event(Event("audio-start", fmt))
            await client.write_event(Event("audio-chunk", fmt, b"\0\0" * 160))
            await client.write_event(AudioStop().event())
            error = await asyncio.wait_for(client.read_event(), 10)
            assert error is not None and error.type == "error", (fmt, error)
            assert error.data["code"] == "unsupported_audio_format" and "accepted" in error.data["text"]
        # A chunk of half a sample, in an accepted format:
        await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=b"\0\0\0").event())
        error = await asyncio.wait_for(client.read_event(), 10)
        assert error is not None and error.data["code"] == "invalid_audio"
        await client.write_event(AudioStop().event())
        await client.write_event(Describe().event())
        info = await asyncio.wait_for(client.read_event(), 10)
        assert info is not None and Info.is_type(info.type), "the connection did not go on"
    assert wy.metric("asr_stream_events_rejected_total", {"reason": "unsupported"}) >= refused + 4


@pytest.mark.anyio
async def test_oversize_utterances_get_error_events(wy: Wyoming) -> None:
    # 6 s of 48 kHz stereo 32-bit is 2.3 MB, past ASR_WYOMING_MAX_UTTERANCE_BYTES (2 MB).
    fat = Pcm(b"\0" * (48_000 * 8 * 6), 48_000, 4, 2)
    answer = await transcribe("127.0.0.1", wy.port, fat, chunk_ms=500, realtime=False)
    assert answer.error is not None and answer.error.code == "utterance_too_large" and answer.text is None
    # 61 s of 16 kHz mono 16-bit is 1.95 MB, within the bytes, past ASR_WYOMING_MAX_UTTERANCE_SECONDS (60).
    long = Pcm(b"\0" * (16_000 * 2 * 61), 16_000)
    answer = await transcribe("127.0.0.1", wy.port, long, chunk_ms=1000, realtime=False)
    assert answer.error is not None and answer.error.code == "utterance_too_long" and answer.text is None
    assert wy.metric("asr_stream_events_rejected_total", {"reason": "too_large"}) >= 2


@pytest.mark.anyio
async def test_connections_past_the_stream_limit_are_refused(wy: Wyoming) -> None:
    await until_no_connections(wy)
    clients = [AsyncTcpClient("127.0.0.1", wy.port) for _ in range(MAX_STREAMS)]
    try:
        for client in clients:
            await client.connect()
            await client.write_event(Describe().event())
            assert await asyncio.wait_for(client.read_event(), 10) is not None
        assert wy.metric("asr_streams_active") == MAX_STREAMS
        async with AsyncTcpClient("127.0.0.1", wy.port) as extra:
            refusal = await asyncio.wait_for(extra.read_event(), 10)
            assert refusal is not None and refusal.data["code"] == "too_many_streams"
            assert await asyncio.wait_for(extra.read_event(), 10) is None, "the refused connection stays open"
    finally:
        for client in clients:
            await client.disconnect()
    await until_no_connections(wy)


@pytest.mark.anyio
async def test_idle_and_slow_clients_are_closed(wy: Wyoming) -> None:
    idle = wy.metric("asr_streams_closed_total", {"reason": "idle_timeout"})
    async with AsyncTcpClient("127.0.0.1", wy.port) as client:
        event = await asyncio.wait_for(client.read_event(), 20)  # sends nothing: 3 s later, told and closed
        assert event is not None and event.data["code"] == "idle_timeout"
        assert await asyncio.wait_for(client.read_event(), 10) is None
    assert wy.metric("asr_streams_closed_total", {"reason": "idle_timeout"}) == idle + 1
    # A client that asks and asks and never reads: its answers fill the sockets, then it is left.
    slow = wy.metric("asr_streams_closed_total", {"reason": "slow_consumer"})
    _, writer = await asyncio.open_connection("127.0.0.1", wy.port)
    try:
        writer.write(raw("describe", version="1.10.2") * 40_000)
        await until(lambda: wy.metric("asr_streams_closed_total", {"reason": "slow_consumer"}) > slow, 60)
    finally:
        writer.transport.abort()
    await until_no_connections(wy)


@pytest.mark.anyio
async def test_a_client_that_drops_mid_utterance_frees_its_work(wy: Wyoming, tmp_path: Path) -> None:
    story = tmp_path / "story.wav"
    text = " ".join(["Our team opened the new office in the old harbour district last spring."] * 6)
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "160", "-w", str(story), text], check=True)
    audio = Pcm.from_wav(story)
    assert audio.seconds > 25
    served = metric(wy.server, "asr_audio_processed_seconds_total")
    fmt = {"rate": audio.rate, "width": audio.width, "channels": audio.channels}
    step = audio.rate * audio.width  # 1 s chunks
    # 1: partials and early finals in flight when the client goes (half the audio in real time).
    async with AsyncTcpClient("127.0.0.1", wy.port) as client:
        await client.write_event(AudioStart(**fmt).event())
        for offset in range(0, len(audio.data) // 2, step // 5):
            await client.write_event(AudioChunk(audio=audio.data[offset : offset + step // 5], **fmt).event())
            await asyncio.sleep(0.2)
    await until_idle(wy)
    # 2: the final of 25 s and more in flight when the client goes, right after its audio-stop.
    async with AsyncTcpClient("127.0.0.1", wy.port) as client:
        await client.write_event(AudioStart(**fmt).event())
        for offset in range(0, len(audio.data), step):
            await client.write_event(AudioChunk(audio=audio.data[offset : offset + step], **fmt).event())
        await client.write_event(AudioStop().event())
    await until_idle(wy)
    assert metric(wy.server, "asr_audio_processed_seconds_total") == served, "a decode for a client gone finished"
    # And the server goes on.
    assert (await describe(wy.port)).asr


# ---- what a client may send ---------------------------------------------------------------


FUZZ = [
    b"\x00\x01\x02garbage without a newline",
    b"not json at all\n",
    b"[1, 2, 3]\n",
    b'{"no": "type"}\n',
    b'{"type": 42}\n',
    b'{"type": "audio-chunk", "payload_length": 1099511627776}\n',
    b'{"type": "audio-chunk", "payload_length": -5}\n',
    b'{"type": "describe", "data_length": "ten"}\n',
    b'{"type": "transcribe", "data_length": 7}\n[1,2,3]',
    b'{"type": "transcribe", "data_length": 3}\n123',
    b'{"type": "transcribe", "data": [1]}\n',
    b"x" * 70_000 + b"\n",
    b'{"type": "audio-chunk", "payload_length": 100}\n' + b"\0" * 10,  # then the client leaves
]
PCM16 = {"rate": 16000, "width": 2, "channels": 1}
ODD = [
    raw("transcribe", {"name": 5, "language": ["en"]}),
    raw("transcribe", {"language": "klingon"}),
    raw("audio-chunk", {"rate": 16000}, b"\0\0"),
    raw("audio-chunk", {"rate": 16000, "width": 2, "channels": 1}),
    raw("audio-start", PCM16) + raw("audio-start", PCM16),
    raw("audio-chunk", PCM16, b"\1\0" * 800) + raw("audio-chunk", {**PCM16, "rate": 8000}, b"\1\0" * 800),
    raw("audio-stop", {"timestamp": "soon"}),
    raw("synthesize", {"text": "hello"}),
    raw("ping", {"text": 7}),
    raw("describe", {"extra": "x" * 1000}),
    raw("audio-stop") * 3,
]  # fmt: skip


@pytest.mark.anyio
async def test_garbage_and_odd_events_never_take_the_server_down(wy: Wyoming) -> None:
    rng = random.Random(25)
    cases = [*FUZZ, *ODD, *(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 3000))) for _ in range(12))]
    for case in cases:
        reader, writer = await asyncio.open_connection("127.0.0.1", wy.port)
        try:
            writer.write(case)
            await writer.drain()
            if case not in ODD:
                writer.write_eof()
            async with asyncio.timeout(20):
                while await async_read_event(reader) is not None:
                    pass
        except (ConnectionError, TimeoutError):
            pass  # an odd-event connection goes on until its idle timeout, or the server reset it
        finally:
            writer.close()
    assert (await describe(wy.port)).asr
    ready = await asyncio.to_thread(httpx.get, wy.server.url + "/readyz", timeout=10)
    assert ready.status_code == 200
    await until_no_connections(wy)
    log = wy.server.log()
    defects = [line for line in log.splitlines() if "service.wyoming" in line and " ERROR " in line]
    assert defects == [] and "Traceback" not in log and "never retrieved" not in log, log[-3000:]


# ---- helpers ---------------------------------------------------------------------------------


async def until(condition: Any, seconds: float) -> None:
    await asyncio.to_thread(wait_until, condition, seconds, "the condition", 0.1)


async def until_no_connections(wy: Wyoming) -> None:
    await asyncio.to_thread(wait_until, lambda: wy.metric("asr_streams_active") == 0, 30, "no connection open", 0.1)


async def until_idle(wy: Wyoming) -> None:
    await until_no_connections(wy)
    busy = lambda: metric(wy.server, "asr_workers_busy") == 0 and metric(wy.server, "asr_queue_depth") == 0  # noqa: E731
    await asyncio.to_thread(wait_until, busy, 30, "the workers idle", 0.1)


# ---- discovery -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_zeroconf_announces_the_server_on_loopback(tmp_path: Path) -> None:
    from zeroconf import IPVersion
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

    from service.config import WyomingSettings
    from service.wyoming.zeroconf import SERVICE_TYPE
    from tests.conftest import make_settings, running_app

    port = free_port()
    name = f"asr-test-{port}"
    # Bound to loopback, so announced on loopback only: nothing leaves this host.
    wyoming = WyomingSettings(port=port, zeroconf=True, zeroconf_name=name)
    settings = make_settings(tmp_path).model_copy(update={"wyoming": wyoming})
    async with running_app(settings):
        browser = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
        try:
            info = AsyncServiceInfo(SERVICE_TYPE, f"{name}.{SERVICE_TYPE}")
            assert await info.async_request(browser.zeroconf, 5000), "the service was not found"
            assert info.port == port and info.parsed_addresses() == ["127.0.0.1"]
        finally:
            await browser.async_close()
        assert (await describe(port)).asr  # what was announced answers
