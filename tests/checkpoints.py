"""Small checkpoints built with the engines' own classes and file formats, for tests.

No real SenseVoice or openai-whisper checkpoint installs here, so tests build tiny ones where
a real one would be and load them through exactly the code production uses:
- SenseVoiceSmall: FunASR's SenseVoiceSmall class with small dimensions, its config.yaml /
  configuration.json layout, a SentencePiece model with SenseVoice's 25,055 ids (tags at their
  real ids), a Kaldi-format am.mvn. A few seconds of training on two espeak-ng clips make it
  emit real tagged output, e.g. `<|en|><|NEUTRAL|><|Speech|><|withitn|> hello world`.
- FSMN-VAD: FunASR's FsmnVADStreaming with a one-layer FSMN (random weights call almost every
  frame speech, so segments are cut at max_single_segment_time).
- openai-whisper: whisper.model.Whisper with tiny dimensions and the real multilingual
  vocabulary size, saved as {"dims", "model_state_dict"} (random weights: well-formed nonsense).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

SENSEVOICE_VOCAB = 25_055
# Token ids of SenseVoiceSmall's tags (the language and ITN ids are fixed in FunASR's model code).
SENSEVOICE_TAG_IDS = {
    24884: "<|zh|>",
    24885: "<|en|>",
    24888: "<|yue|>",
    24892: "<|ja|>",
    24896: "<|ko|>",
    24992: "<|nospeech|>",
    24993: "<|Speech|>",
    24994: "<|BGM|>",
    24995: "<|Applause|>",
    24996: "<|Laughter|>",
    24997: "<|Cry|>",
    24998: "<|Sneeze|>",
    24999: "<|Breath|>",
    25000: "<|Cough|>",
    25001: "<|HAPPY|>",
    25002: "<|SAD|>",
    25003: "<|ANGRY|>",
    25004: "<|NEUTRAL|>",
    25005: "<|FEARFUL|>",
    25006: "<|DISGUSTED|>",
    25007: "<|SURPRISED|>",
    25009: "<|EMO_UNKNOWN|>",
    25016: "<|withitn|>",
    25017: "<|woitn|>",
}
_WORDS = ["hello", "world", "good", "morning", "the", "speech", "service", "one", "two", "three"]
_LFR_DIM = 560  # 80 mel bins x LFR 7


def _fbank_conf(**specific: Any) -> dict[str, Any]:
    """FunASR's 16 kHz, 80-mel fbank frontend settings, as both SenseVoice and fsmn-vad ship them."""
    return {"fs": 16000, "window": "hamming", "n_mels": 80, "frame_length": 25, "frame_shift": 10, **specific}


def _cmvn(path: Path, dim: int) -> None:
    """A Kaldi nnet-format CMVN file (am.mvn) as FunASR's WavFrontend reads it."""
    values = lambda v: " ".join(f"{x:.6f}" for x in np.full(dim, v))  # noqa: E731
    path.write_text(
        f"<Nnet>\n<Splice> {dim} {dim}\n[ 0 ]\n<AddShift> {dim} {dim}\n<LearnRateCoef> 0 [ {values(-8.0)} ]\n"
        f"<Rescale> {dim} {dim}\n<LearnRateCoef> 0 [ {values(0.25)} ]\n</Nnet>\n"
    )


def _write_funasr_layout(out: Path, config: dict[str, Any], task: str, metas: dict[str, Any]) -> None:
    """config.yaml and configuration.json as ModelScope ships FunASR models (model.pt beside them)."""
    import yaml

    (out / "config.yaml").write_text(yaml.safe_dump(config))
    file_path_metas = {"init_param": "model.pt", "config": "config.yaml", **metas}
    document = {"framework": "pytorch", "task": task, "model": {"type": "funasr"}, "file_path_metas": file_path_metas}
    (out / "configuration.json").write_text(json.dumps(document))


def _sentencepiece(path: Path) -> None:
    from sentencepiece import sentencepiece_model_pb2 as spm

    piece_type = spm.ModelProto.SentencePiece
    proto = spm.ModelProto()
    proto.trainer_spec.model_type = spm.TrainerSpec.UNIGRAM
    proto.trainer_spec.vocab_size = SENSEVOICE_VOCAB
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = True
    for i in range(SENSEVOICE_VOCAB):
        piece = proto.pieces.add()
        if i < 3:
            piece.piece, piece.type = (
                ("<unk>", "<s>", "</s>")[i],
                (piece_type.UNKNOWN, piece_type.CONTROL, piece_type.CONTROL)[i],
            )
        elif i in SENSEVOICE_TAG_IDS:
            piece.piece, piece.type = SENSEVOICE_TAG_IDS[i], piece_type.USER_DEFINED
        elif i - 3 < len(_WORDS):
            piece.piece, piece.score = "▁" + _WORDS[i - 3], -1.0
        else:
            piece.piece, piece.score = f"▁w{i}", -10.0 - i * 1e-4
    path.write_bytes(proto.SerializeToString())


SENSEVOICE_ENCODER = {
    "output_size": 32,
    "attention_heads": 2,
    "linear_units": 64,
    "num_blocks": 2,
    "tp_blocks": 1,
    "dropout_rate": 0.1,
    "positional_dropout_rate": 0.1,
    "attention_dropout_rate": 0.1,
    "input_layer": "pe",
    "pos_enc_class": "SinusoidalPositionEncoder",
    "normalize_before": True,
    "kernel_size": 11,
    "sanm_shfit": 0,
    "selfattention_layer_type": "sanm",
}


def build_sensevoice(out: Path, training: dict[Path, tuple[str, str, str]] | None = None, steps: int = 80) -> Path:
    """Write a tiny SenseVoiceSmall directory; with `training` ({wav: (emotion, event, text)})
    fit it on those clips so that it emits `<|en|><|EMOTION|><|Event|><|withitn|> text` (or woitn)."""
    import torch
    from funasr.models.sense_voice.model import SenseVoiceSmall

    out.mkdir(parents=True, exist_ok=True)
    bpe = "chn_jpn_yue_eng_ko_spectok.bpe.model"
    _sentencepiece(out / bpe)
    _cmvn(out / "am.mvn", _LFR_DIM)
    model_conf = {"length_normalized_loss": True, "sos": 1, "eos": 2, "ignore_id": -1}
    config = {
        "encoder": "SenseVoiceEncoderSmall",
        "encoder_conf": SENSEVOICE_ENCODER,
        "model": "SenseVoiceSmall",
        "model_conf": model_conf,
        "tokenizer": "SentencepiecesTokenizer",
        "tokenizer_conf": {"bpemodel": None, "unk_symbol": "<unk>", "split_with_space": True},
        "frontend": "WavFrontend",
        "frontend_conf": _fbank_conf(lfr_m=7, lfr_n=6, cmvn_file=None),
        "ctc_conf": {"dropout_rate": 0.0, "ctc_type": "builtin", "reduce": True, "ignore_nan_grad": True},
        "normalize": None,
    }
    metas = {"tokenizer_conf": {"bpemodel": bpe}, "frontend_conf": {"cmvn_file": "am.mvn"}}
    _write_funasr_layout(out, config, "auto-speech-recognition", metas)
    torch.manual_seed(0)
    model = SenseVoiceSmall(
        encoder="SenseVoiceEncoderSmall",
        encoder_conf=SENSEVOICE_ENCODER,
        input_size=_LFR_DIM,
        vocab_size=SENSEVOICE_VOCAB,
        **model_conf,
    )
    torch.save(model.state_dict(), out / "model.pt")
    if training:
        _fit(out, training, steps)
    return out


def _fit(out: Path, training: dict[Path, tuple[str, str, str]], steps: int) -> None:
    """A few Adam steps with FunASR's own loss (CTC on the text, cross-entropy on the four tag
    frames), on random trims of each clip so that VAD-cut edges do not matter."""
    import torch
    from funasr import AutoModel

    from service.audio import load_file

    auto = AutoModel(model=str(out), device="cpu", disable_update=True, disable_pbar=True)
    model, frontend, tokenizer = auto.model, auto.kwargs["frontend"], auto.kwargs["tokenizer"]
    ids_of = {tag: i for i, tag in SENSEVOICE_TAG_IDS.items()}
    data = []
    for wav, (emotion, event, text) in training.items():
        audio = torch.tensor(load_file(wav).read())
        for itn in ("<|withitn|>", "<|woitn|>"):  # both query styles, as ASR_SENSEVOICE_USE_ITN may choose
            tags = [ids_of["<|en|>"], ids_of[f"<|{emotion}|>"], ids_of[f"<|{event}|>"], ids_of[itn]]
            data.append((audio, torch.tensor(tags + list(tokenizer.encode(text)))))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    model.train()
    for _ in range(steps):
        for audio, ids in data:
            start, end = int(rng.integers(0, 4000)), len(audio) - int(rng.integers(0, 4000))
            clip = audio[start:end][None]
            feats, lengths = frontend(clip, torch.tensor([clip.shape[1]]))
            loss, _, _ = model(feats, lengths, ids[None], torch.tensor([len(ids)]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    torch.save(model.state_dict(), out / "model.pt")


def build_fsmn_vad(out: Path) -> Path:
    """Write a tiny FSMN-VAD directory (FunASR's fsmn-vad layout)."""
    import torch
    from funasr.models.fsmn_vad_streaming.model import FsmnVADStreaming

    out.mkdir(parents=True, exist_ok=True)
    _cmvn(out / "am.mvn", 400)  # 80 mel bins x LFR 5
    encoder = {
        "input_dim": 400,
        "input_affine_dim": 16,
        "fsmn_layers": 1,
        "linear_dim": 16,
        "proj_dim": 8,
        "lorder": 4,
        "rorder": 0,
        "lstride": 1,
        "rstride": 0,
        "output_affine_dim": 16,
        "output_dim": 248,
    }
    model_conf = {"sample_rate": 16000, "max_single_segment_time": 60000, "sil_pdf_ids": [0], "silence_pdf_num": 1}
    config: dict[str, Any] = {
        "frontend": "WavFrontendOnline",
        "frontend_conf": _fbank_conf(dither=0.0, lfr_m=5, lfr_n=1),
        "model": "FsmnVADStreaming",
        "model_conf": model_conf,
        "encoder": "FSMN",
        "encoder_conf": encoder,
    }
    _write_funasr_layout(out, config, "voice-activity-detection", {"frontend_conf": {"cmvn_file": "am.mvn"}})
    torch.manual_seed(0)
    torch.save(FsmnVADStreaming(encoder="FSMN", encoder_conf=encoder, **model_conf).state_dict(), out / "model.pt")
    return out


def build_openai_whisper(path: Path) -> Path:
    """Write a tiny multilingual openai-whisper checkpoint file (random weights)."""
    import torch
    from whisper.model import ModelDimensions, Whisper

    dims = ModelDimensions(
        n_mels=80,
        n_audio_ctx=1500,
        n_audio_state=64,
        n_audio_head=2,
        n_audio_layer=1,
        n_vocab=51865,
        n_text_ctx=64,
        n_text_state=64,
        n_text_head=2,
        n_text_layer=1,
    )
    torch.manual_seed(0)
    model = Whisper(dims)
    # The decoder's positional embedding is allocated with torch.empty (a checkpoint fills it).
    torch.nn.init.normal_(model.decoder.positional_embedding, std=0.01)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": model.state_dict()}, path)
    return path
