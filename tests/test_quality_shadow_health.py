"""Shadow scoring with real engines (tiny.en served, base as the shadow), and input-audio health on
clean, clipped, noisy and quiet versions of the same speech made by sox."""

from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.audio import decode_audio
from service.audio_health import measure
from service.cli import quality_report
from service.quality.store import SampleStore
from tests.conftest import ADMIN, ADMIN_TOKEN, SENTENCES, serve
from tests.test_hardening_server import wait_until

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np
    import numpy.typing as npt

    from service.audio_health import AudioHealth


KEYWORDS = {"fox": "fox", "weather": "weather", "meeting": "report", "numbers": "apples"}


def _variants(speech_dir: Path, folder: Path) -> dict[str, Path]:
    """The weather sentence clean, driven into clipping, under pink noise, and 30 dB quieter."""
    clean = speech_dir / "weather.wav"
    out = {"clean": clean}
    for name, effect in (("clipped", ["gain", "18"]), ("quiet", ["gain", "-30"])):
        out[name] = folder / f"{name}.wav"
        subprocess.run(["sox", "-q", str(clean), str(out[name]), *effect], check=True)
    noise = folder / "noise.wav"
    duration = subprocess.run(["soxi", "-D", str(clean)], capture_output=True, text=True, check=True).stdout.strip()
    rate = subprocess.run(["soxi", "-r", str(clean)], capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(
        ["sox", "-q", "-n", "-r", rate, "-c", "1", str(noise), "synth", duration, "pinknoise", "vol", "0.3"], check=True
    )
    out["noisy"] = folder / "noisy.wav"
    subprocess.run(["sox", "-q", "-m", str(clean), str(noise), str(out["noisy"])], check=True)
    return out


def h_samples(path: Path) -> npt.NDArray[np.float32]:
    with open(path, "rb") as fh:
        return decode_audio(fh, max_seconds=60).read()


def _health(path: Path) -> AudioHealth:
    health = measure(h_samples(path))
    assert health is not None
    return health


def test_input_health_moves_the_right_way(speech_dir: Path, tmp_path: Path) -> None:
    h = {name: _health(path) for name, path in _variants(speech_dir, tmp_path).items()}
    print({name: health for name, health in h.items()})
    clean = h["clean"]
    assert -35 < clean.level_dbfs < -5 and clean.clipping_ratio == 0 and clean.snr_db > 30
    # Clipped: a share of samples at full scale, and louder.
    assert h["clipped"].clipping_ratio > 0.01 and h["clipped"].level_dbfs > clean.level_dbfs + 5
    # Quiet: 30 dB down (the level gate is relative, so a gain change shows whole)...
    assert h["quiet"].level_dbfs == pytest.approx(clean.level_dbfs - 30, abs=1)
    # ...and more of it under the silence floor.
    assert h["quiet"].silence_ratio > clean.silence_ratio + 0.2
    # Noisy: the pauses fill with noise: no silence left, and a far lower SNR.
    assert h["noisy"].silence_ratio < 0.05 < clean.silence_ratio and h["noisy"].snr_db < clean.snr_db - 15
    assert measure(h_samples(speech_dir / "fox.wav")[:100]) is None


@pytest.mark.slow
def test_shadow_scoring_and_input_health_through_the_real_server(speech_dir: Path, tmp_path: Path) -> None:
    env = {
        "ASR_QUALITY_SAMPLE_RATE": "1",
        "ASR_QUALITY_INTERVAL_SECONDS": "1",
        "ASR_ADMIN_TOKEN": ADMIN_TOKEN,
        "ASR_SHADOW_MODEL": "embedded:base",
        "ASR_SHADOW_INTERVAL_SECONDS": "1",
    }
    variants = _variants(speech_dir, tmp_path)
    with serve(env, tmp_path, ready_timeout=180) as server:
        for name in SENTENCES:
            path = speech_dir / f"{name}.mp3"
            r = httpx.post(server.url + "/transcribe", files={"file": (path.name, path.read_bytes())}, timeout=60)
            assert r.status_code == 200, r.text
        for name in ("clipped", "quiet"):
            r = httpx.post(server.url + "/transcribe", files={"file": (f"{name}.wav", variants[name].read_bytes())})
            assert r.status_code == 200, r.text

        def metrics() -> dict[str, float]:
            text = httpx.get(server.url + "/metrics", timeout=10).text
            values: dict[str, float] = {}
            for family in text_string_to_metric_families(text):
                for s in family.samples:
                    key = s.name + "".join(f",{k}={v}" for k, v in sorted(s.labels.items()))
                    values[key] = s.value
            return values

        # Every kept sample gets its shadow transcription while the service is idle.
        wait_until(
            lambda: metrics().get("asr_quality_shadow_scored_samples_total,language=en", 0) >= 6, 120, "shadowed"
        )
        m = metrics()
        assert m["asr_quality_shadow_reference_words_total,language=en"] > 40
        assert m["asr_quality_shadow_seconds_total"] > 0
        # Input health by model, and the codec / sample-rate mix (espeak-ng's 22050 Hz in MP3 and WAV).
        assert m["asr_input_audio_total,codec=mp3float,sample_rate=22050"] == 4
        assert m["asr_input_audio_total,codec=pcm_s16le,sample_rate=22050"] == 2
        assert m["asr_input_clipping_ratio_count,model=whisper-tiny.en"] == 6
        assert m["asr_input_clipping_ratio_bucket,le=0.0,model=whisper-tiny.en"] == 5  # only the clipped one clips
        assert m["asr_input_level_dbfs_bucket,le=-45.0,model=whisper-tiny.en"] >= 1  # the quiet one
        # Human references for the four sentences: the report puts shadow WER beside true WER.
        samples = httpx.get(server.url + "/v1/samples?limit=100", headers=ADMIN).json()["items"]
        for item in samples:
            said = next((n for n, key in KEYWORDS.items() if key in item["hypothesis"].lower()), None)
            if said is not None:
                reference = {"text": SENTENCES[said]}
                httpx.put(server.url + f"/v1/samples/{item['id']}/reference", json=reference, headers=ADMIN)
        wait_until(lambda: metrics().get("asr_quality_scored_samples_total,language=en", 0) >= 4, 30, "scored")
    [row] = quality_report(SampleStore(tmp_path / "quality", 1000, 30).scored())
    print(row)
    assert row["shadowed"] >= 4 and row["true_on_shadowed"] is not None and row["shadow_on_shadowed"] is not None
    # base is the stronger engine: tiny.en's disagreement with it is of the order of its true WER.
    assert abs(row["shadow_on_shadowed"] - row["true_on_shadowed"]) < 0.15
