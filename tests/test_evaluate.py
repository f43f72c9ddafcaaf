"""Codec evaluation: metric functions against hand-computed values, the CLI end to end.

The end-to-end tests evaluate a 2-step demo run (8 virtual devices, as the other tests) on a
few validation clips; WER goes through an injected transcriber, never a real ASR model.
"""

from __future__ import annotations

import glob
import json
import math
import os
import struct

import numpy as np
import pytest

from amylm_jax import evaluate as ev
from amylm_jax.evaluate import metrics as em


# ------------------------------------------------------------------------------- waveforms
def test_si_sdr_scaled_copy_and_known_noise(rng):
    s = rng.standard_normal(24000)
    assert em.si_sdr(s, 0.3 * s + 0.7) > 100.0  # scale and DC offset are ignored
    n = rng.standard_normal(24000)
    s0, n0 = s - s.mean(), n - n.mean()
    n0 -= np.dot(n0, s0) / np.dot(s0, s0) * s0  # orthogonal to the zero-mean target
    n0 *= math.sqrt(np.dot(s0, s0) / np.dot(n0, n0) / 100.0)  # |n|^2 = |s|^2 / 100
    assert em.si_sdr(s, s0 + n0) == pytest.approx(20.0, abs=1e-9)
    assert em.si_sdr(s, 2.0 * (s0 + n0)) == pytest.approx(20.0, abs=1e-9)
    assert em.si_sdr(np.zeros(100), rng.standard_normal(100)) == -math.inf
    with pytest.raises(ValueError, match="differ in length"):
        em.si_sdr(s, s[:-1])


def test_spectral_distances(rng):
    x = 0.1 * rng.standard_normal(12000)
    assert em.mel_distance(x, x) == 0.0
    assert em.stft_distance(x, x) == 0.0
    # Doubling the amplitude shifts every (unclamped) log10 magnitude by log10(2).
    assert em.mel_distance(x, 2 * x) == pytest.approx(math.log10(2.0), abs=1e-9)
    assert em.stft_distance(x, 2 * x) == pytest.approx(math.log10(2.0), abs=1e-6)
    assert em.stft_distance(x, x + 0.05 * rng.standard_normal(x.size)) > 0.01
    mag = em.stft_magnitude(x, 256, 64)
    assert mag.shape == (1 + x.size // 64, 129)


@pytest.fixture(scope="module")
def speech():
    """One real utterance of the demo store (espeak speech, 24 kHz float)."""
    from amylm_jax.data.audio import int16_to_float
    from amylm_jax.data.demo import resolve_store
    from amylm_jax.data.store import open_store

    return int16_to_float(open_store(resolve_store("demo"))[0]["audio"])


def test_stoi_and_pesq_of_speech(speech, rng):
    pytest.importorskip("pystoi")
    pytest.importorskip("pesq")
    value, reason = em.stoi(speech, speech)
    assert reason == "" and value == pytest.approx(1.0, abs=1e-6)
    noisy = speech + 0.05 * rng.standard_normal(speech.size).astype(np.float32)
    worse, _ = em.stoi(speech, noisy)
    assert 0.0 < worse < value
    best, reason = em.pesq_wb(speech, speech)
    assert reason == "" and best > 4.5
    low, _ = em.pesq_wb(speech, noisy)
    assert 1.0 <= low < best
    none, reason = em.pesq_wb(np.zeros(24000), np.zeros(24000))
    assert none is None and reason.startswith("pesq:")


# ------------------------------------------------------------------------------- codes
def test_codebook_stats_and_bitrate():
    usage, entropy = em.codebook_stats(np.array([[0, 0, 1, 1], [2, 2, 2, 2], [0, 1, 2, 3]]), 4)
    np.testing.assert_allclose(usage, [0.5, 0.25, 1.0])
    np.testing.assert_allclose(entropy, [0.5, 0.0, 1.0])  # log 2 / log 4, 0, log 4 / log 4
    assert em.bitrate(9, 2048, 12.5) == 1237.5
    assert em.bitrate(2, 2048, 12.5) == 275.0
    assert em.bitrate(1, 2048, 12.5) == 137.5
    assert [(v.name, v.num_codebooks) for v in ev.decode_variants(9)] == [
        ("all", 9),
        ("cb0_1", 2),
        ("cb0", 1),
    ]
    assert [v.num_codebooks for v in ev.decode_variants(2)] == [2, 1]


# ------------------------------------------------------------------------------- WER
def test_normalize_text():
    assert em.normalize_text("Hello, World!  It's <COMMA> well-known.") == [
        "hello",
        "world",
        "its",
        "well",
        "known",
    ]
    assert em.normalize_text(" ... ") == []


def test_word_errors_hand_cases():
    a = "the cat sat on the mat".split()
    assert em.word_errors(a, a) == (0, 0, 0)
    assert em.word_errors(a, "the dog sat on the mat".split()) == (1, 0, 0)
    assert em.word_errors(a, "the cat on the mat".split()) == (0, 1, 0)
    assert em.word_errors(a, "the cat sat down on the mat".split()) == (0, 0, 1)
    assert em.word_errors(a, "cat sat on a mat today".split()) == (1, 1, 1)
    assert em.word_errors(a, []) == (0, 6, 0)
    assert em.word_errors([], ["uh", "um"]) == (0, 0, 2)


def test_corpus_wer():
    out = em.corpus_wer(["A b, c d.", "E F"], ["a b c", "e f g h"])
    assert out["wer"] == 0.5  # (1 deletion + 2 insertions) / 6 reference words
    assert (out["deletions"], out["insertions"], out["reference_words"]) == (1, 2, 6)
    assert em.corpus_wer(["Don't stop!"], ["dont stop"])["wer"] == 0.0
    with pytest.raises(ValueError, match="no words"):
        em.corpus_wer(["..."], ["x"])


# ------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def run(demo_checkpoint_copy):
    """A private copy of the shared 2-step demo run (checkpoint at step 2); evaluate writes here."""
    workdir = str(demo_checkpoint_copy)
    return workdir


def _event_tags(path: str) -> set[str]:
    """Scalar tags of one TensorBoard event file (TFRecord framing, CRCs not checked)."""
    from tensorboardX.proto import event_pb2

    tags = set()
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos < len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
        tags.update(v.tag for v in event.summary.value)
        pos += 12 + length + 4
    return tags


def test_cli_end_to_end(run, tmp_path, capsys):
    tb = os.path.join(run, "tensorboard")
    before = set(glob.glob(os.path.join(tb, "events.out.tfevents.*")))
    out = tmp_path / "eval.json"
    assert ev.main([f"--workdir={run}", "--max_clips=3", f"--out={out}"]) == 0
    printed = capsys.readouterr().out
    assert "SI-SDR" in printed and "WER skipped" in printed

    result = json.loads(out.read_text())
    assert result["step"] == 2
    assert result["clips"] == {"evaluated": 3, "validation_total": 10}
    assert len(result["per_clip"]) == 3 and result["audio_seconds"] > 3.0
    assert list(result["variants"]) == ["all", "cb0_1", "cb0"]
    for name, k in (("all", 4), ("cb0_1", 2), ("cb0", 1)):
        v = result["variants"][name]
        assert v["num_codebooks"] == k
        assert v["bitrate_bps"] == k * 6 * 12.5  # demo: 64 bins
        assert math.isfinite(v["si_sdr"])
        assert v["mel_distance"] > 0 and v["stft_distance"] > 0
        assert (v["stoi"] is None and "stoi" in v["notes"]) or 0.0 <= v["stoi"] <= 1.0
        assert (v["pesq"] is None and "pesq" in v["notes"]) or 1.0 <= v["pesq"] <= 4.65
        assert v["wer"] is None and "asr_model" in v["notes"]["wer"]
    assert "asr_model" in result["wer"]["skipped"]
    assert [c["index"] for c in result["codebooks"]] == [0, 1, 2, 3]
    for cb in result["codebooks"]:
        assert 1 / 64 <= cb["usage"] <= 1.0
        assert 0.0 <= cb["entropy"] <= 1.0
        assert 0.0 <= cb["ema_usage"] <= 1.0
    assert result["settings"]["mel_distance"]["n_fft"] == 1024

    new = set(glob.glob(os.path.join(tb, "events.out.tfevents.*"))) - before
    assert len(new) == 1
    tags = _event_tags(new.pop())
    assert {"eval/all/si_sdr", "eval/cb0/mel_distance", "eval/codebook/usage_0"} <= tags


def test_wer_with_injected_transcriber(run, tmp_path):
    from amylm_jax.checkpoint import Checkpointer
    from amylm_jax.data.demo import resolve_store
    from amylm_jax.data.pipeline import split_clips
    from amylm_jax.data.store import open_store

    ckpt = Checkpointer(run, read_only=True)
    cfg = ckpt.restore_config()
    ckpt.close()
    store = open_store(resolve_store(cfg.data.store))
    refs = [store[int(i)]["transcript"] for i in split_clips(store, cfg.data)[1][:2]]
    pending = list(refs)
    seen = []

    def fake(audios):  # [original, all, cb0_1, cb0] per clip, clips in validation order
        seen.append(len(audios))
        ref = pending.pop(0)
        return [ref, ref.upper(), ref + " extra", ""]

    result = ev.evaluate(
        run, max_clips=2, transcriber=fake, out=str(tmp_path / "w.json"), tensorboard=False
    )
    assert seen == [4, 4] and not pending
    n_words = sum(len(em.normalize_text(r)) for r in refs)
    assert result["wer"]["original"]["wer"] == 0.0
    assert result["wer"]["clips"] == 2
    assert result["variants"]["all"]["wer"] == 0.0
    assert result["variants"]["cb0_1"]["wer"] == pytest.approx(2 / n_words)
    assert result["variants"]["cb0"]["wer"] == 1.0
    assert result["per_clip"][0]["asr"]["cb0_1"] == refs[0] + " extra"
    assert json.loads((tmp_path / "w.json").read_text())["variants"]["cb0"]["wer"] == 1.0


def test_clear_errors(run, tmp_path, capsys):
    from amylm_jax.data.demo import resolve_store
    from amylm_jax.data.store import StoreWriter, open_store

    empty = tmp_path / "empty"
    empty.mkdir()
    assert ev.main([f"--workdir={empty}"]) == 2
    assert "holds no checkpoints" in capsys.readouterr().err
    with pytest.raises(ev.EvaluationError, match="no such checkpoint"):
        ev.evaluate(run, step=7)
    demo = open_store(resolve_store("demo"))
    one = tmp_path / "one_clip_store"
    with StoreWriter(one, wavlm_dim=demo.wavlm_dim, llm_dim=demo.llm_dim, teachers={}) as w:
        w.add(demo[0])
    with pytest.raises(ev.EvaluationError, match="no validation clips"):
        ev.evaluate(run, store=str(one))


def test_hf_transcriber_on_a_tiny_random_model(tmp_path):
    """The --asr_model path: a transformers ASR pipeline over a local directory (random CTC)."""
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("transformers")

    vocab = {"<pad>": 0, "|": 1, "<unk>": 2, **{c: i + 3 for i, c in enumerate("abcdefgh'")}}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    tok = tf.Wav2Vec2CTCTokenizer(str(tmp_path / "vocab.json"), word_delimiter_token="|")
    fe = tf.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0)
    cfg = tf.Wav2Vec2Config(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(8, 8),
        conv_stride=(5, 4),
        conv_kernel=(10, 8),
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    tf.Wav2Vec2ForCTC(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    fe.save_pretrained(tmp_path)

    transcribe = ev.hf_transcriber(str(tmp_path))
    audio = 0.1 * np.random.default_rng(0).standard_normal(24000).astype(np.float32)
    texts = transcribe([audio, audio[:12000]])
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    assert texts == transcribe([audio, audio[:12000]])  # deterministic
    with pytest.raises(ev.EvaluationError, match="no such local path"):
        ev.hf_transcriber(str(tmp_path / "missing"))
