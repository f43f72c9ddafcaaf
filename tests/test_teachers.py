"""Tests of teacher extraction with tiny random models (no download): D1 trimming, LLM slicing."""

import numpy as np
import pytest

from amylm_jax.data import align, teachers


@pytest.fixture(scope="module")
def wavlm():
    return teachers.load_wavlm(teachers.TINY)


@pytest.fixture(scope="module")
def llm():
    return teachers.load_llm(teachers.TINY)


def _waves(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.normal(size=n)).astype(np.float32) for n in lengths]


def test_wavlm_batched_frames_trimmed_and_match_per_clip(wavlm):
    """D1 fix: batch padding never changes a clip's frame count or its targets."""
    lengths = [48800, 16000, 9000, 30017]
    waves = _waves(lengths)
    batched = wavlm.extract(waves)
    for wave, n, feats in zip(waves, lengths, batched, strict=True):
        assert feats.shape == (align.wavlm_frame_count(n), wavlm.dim)
        single = wavlm.extract([wave])[0]
        assert single.shape == feats.shape
        t_full = align.full_frame_count(n / 16000)
        pooled_b, pooled_s = (
            align.wavlm_to_frames(feats, t_full),
            align.wavlm_to_frames(single, t_full),
        )
        rel = np.linalg.norm(pooled_b - pooled_s) / np.linalg.norm(pooled_s)
        assert rel < 1e-3, rel
    assert batched[0].shape[0] == 152  # 3.05 s clip, not the padded batch length


def test_tiny_models_are_deterministic(wavlm, llm):
    again = teachers.load_wavlm(teachers.TINY)
    wave = _waves([8000])
    np.testing.assert_array_equal(again.extract(wave)[0], wavlm.extract(wave)[0])
    assert wavlm.dim == 32 and llm.dim == 32
    ids = llm.tokenizer("a <silence> b", add_special_tokens=False)["input_ids"]
    assert ids == teachers.tiny_tokenizer()("a <silence> b", add_special_tokens=False)["input_ids"]


def test_llm_features_sliced_and_timed(llm):
    words_a = align.inject_silence(
        [{"word": "hello", "start": 0.1, "end": 0.5}, {"word": "world", "start": 0.6, "end": 0.9}]
    )
    words_b = align.inject_silence([{"word": "x", "start": 0.0, "end": 0.2}])
    (feats_a, times_a), (feats_b, times_b) = llm.extract([words_a, words_b])
    text_a = align.alignment_text(words_a)
    n_a = len(llm.tokenizer(text_a, add_special_tokens=False)["input_ids"])
    assert feats_a.shape == (n_a, llm.dim) and times_a.shape == (n_a, 2)
    assert n_a == len(text_a.encode())  # byte-level vocabulary, no special tokens added
    assert feats_b.shape[0] == len("x <silence>") < n_a  # cut to its own length, not padded
    # Unbatched extraction gives the same rows: right padding does not leak (causal LM).
    single_b, times_single = llm.extract([words_b])[0]
    np.testing.assert_allclose(feats_b, single_b, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(times_b, times_single)
    # Tokens of "hello" share its window; trailing silence ends at -1 (end of audio).
    np.testing.assert_array_equal(times_a[10:15], [[0.1, 0.5]] * 5)
    assert times_a[-1, 1] == -1.0
    # hidden_states[-2]: not the final (normed) layer.
    import torch

    ids = torch.tensor([llm.tokenizer(text_a, add_special_tokens=False)["input_ids"]])
    with torch.inference_mode():
        hs = llm.model(input_ids=ids, output_hidden_states=True).hidden_states
    assert len(hs) == 3
    np.testing.assert_allclose(feats_a, hs[-2][0].numpy(), rtol=1e-5, atol=1e-5)


def test_local_path_round_trip(tmp_path, wavlm, llm):
    wavlm.model.save_pretrained(tmp_path / "w")
    wavlm.feature_extractor.save_pretrained(tmp_path / "w")
    llm.model.save_pretrained(tmp_path / "l")
    llm.tokenizer.save_pretrained(tmp_path / "l")
    w2 = teachers.load_wavlm(str(tmp_path / "w"))
    l2 = teachers.load_llm(str(tmp_path / "l"))
    wave = _waves([12000])
    np.testing.assert_allclose(w2.extract(wave)[0], wavlm.extract(wave)[0], atol=1e-6)
    words = align.inject_silence([{"word": "hi", "start": 0.0, "end": 0.3}])
    np.testing.assert_allclose(l2.extract([words])[0][0], llm.extract([words])[0][0], atol=1e-6)


def test_missing_teachers_fail_fast_with_advice(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(teachers.TeacherLoadError, match="offline.*--wavlm=/path/to/model"):
        teachers.load_wavlm("microsoft/wavlm-large")
    with pytest.raises(teachers.TeacherLoadError, match="offline.*--llm=/path/to/model"):
        teachers.load_llm("Qwen/Qwen3-1.7B")
    with pytest.raises(teachers.TeacherLoadError, match="no such directory"):
        teachers.load_llm(str(tmp_path / "missing"))


def test_too_short_audio_is_an_error(wavlm):
    with pytest.raises(ValueError, match="too short for WavLM"):
        wavlm.extract(_waves([16000, 300]))
