"""Tests of the frame alignment helpers against docs/original.md §9.1 / §9.3, including the worked
example."""

import numpy as np
import pytest

from amylm_jax.data import align

# docs/original.md §9.3 worked example: 3.05 s clip, 32 tokens.
_EXAMPLE_TIMES = (
    [[0, 0.24]] * 4
    + [[0.24, 0.40]]
    + [[0.40, 0.56]] * 4
    + [[0.56, 0.72]]
    + [[0.72, 0.96]] * 2
    + [[0.96, 1.12], [1.12, 1.28]]
    + [[1.28, 1.52]] * 2
    + [[1.52, 1.84], [1.84, 2.00], [2.00, 2.16], [2.16, 2.32], [2.32, 2.40]]
    + [[2.40, 2.56]] * 2
    + [[2.56, 2.64]] * 4
    + [[2.64, 2.88]]
    + [[2.88, -1]] * 4
)
# (first frame, last frame) -> (first token, last token), from the spec.
_EXAMPLE_RANGES = [
    ((0, 2), (0, 3)),
    ((3, 4), (4, 4)),
    ((5, 6), (5, 8)),
    ((7, 8), (9, 9)),
    ((9, 11), (10, 11)),
    ((12, 13), (12, 12)),
    ((14, 15), (13, 13)),
    ((16, 18), (14, 15)),
    ((19, 22), (16, 16)),
    ((23, 24), (17, 17)),
    ((25, 26), (18, 18)),
    ((27, 28), (19, 19)),
    ((29, 29), (20, 20)),
    ((30, 31), (21, 22)),
    ((32, 32), (23, 26)),
    ((33, 35), (27, 27)),
    ((36, 38), (28, 31)),
]


def test_worked_example_token_ranges_per_frame():
    times = np.array(_EXAMPLE_TIMES, dtype=np.float64)
    assert times.shape == (32, 2)
    feats = np.eye(32, dtype=np.float32)  # token i's row is one-hot i
    out = align.llm_to_frames(feats, times, 3.05)
    assert out.shape == (39, 32)
    expected = np.zeros((39, 32), dtype=np.float32)
    for (k0, k1), (t0, t1) in _EXAMPLE_RANGES:
        expected[k0 : k1 + 1, t0 : t1 + 1] = 1.0 / (t1 - t0 + 1)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(
        align.llm_token_ranges(times, 3.05)[[0, 29, 32, 38]], [[0, 3], [20, 20], [23, 26], [28, 31]]
    )


def test_llm_prefix_sum_means_match_direct_means(rng):
    times = np.array(_EXAMPLE_TIMES, dtype=np.float64)
    feats = rng.normal(size=(32, 5)).astype(np.float16)
    out = align.llm_to_frames(feats, times, 3.05)
    ranges = align.llm_token_ranges(times, 3.05)
    direct = np.stack([feats[s : e + 1].astype(np.float64).mean(0) for s, e in ranges])
    np.testing.assert_allclose(out, direct, rtol=1e-6, atol=1e-6)
    assert out.dtype == np.float32


def test_llm_out_of_order_times_raise_unless_repaired():
    times = np.array([[0.0, 0.5], [0.6, 0.9], [0.4, 1.0]])
    feats = np.ones((3, 2), np.float32)
    with pytest.raises(ValueError, match="out of order: start of token 2"):
        align.llm_to_frames(feats, times, 1.0)
    with pytest.raises(ValueError, match="token 0 ends"):
        align.llm_to_frames(feats, np.array([[0.5, 0.2], [0.5, 0.9], [0.9, 1.0]]), 1.0)
    out = align.llm_to_frames(feats, times, 1.0, repair=True)
    np.testing.assert_allclose(out, 1.0)  # means of ones: never a negated partial sum


def test_llm_overlapping_windows_clamp_end_to_start():
    # Token 0's window contains token 1's: b_k < a_k; without the clamp e_k < s_k (D4).
    times = np.array([[0.0, 0.5], [0.1, 0.5], [0.5, -1]])
    feats = np.array([[1.0], [2.0], [3.0]], np.float32)
    ranges = align.llm_token_ranges(times, 1.0)
    assert np.all(ranges[:, 1] >= ranges[:, 0])
    out = align.llm_to_frames(feats, times, 1.0)
    assert np.all(out >= 1.0) and np.all(out <= 3.0)


def test_llm_rejects_bad_shapes_and_values():
    with pytest.raises(ValueError, match="3 tokens but times have 2"):
        align.llm_to_frames(np.zeros((3, 2)), np.zeros((2, 2)), 1.0)
    with pytest.raises(ValueError, match="NaN"):
        align.llm_to_frames(np.zeros((1, 2)), np.array([[0.0, np.nan]]), 1.0)
    with pytest.raises(ValueError, match="negative time"):
        align.llm_to_frames(np.zeros((1, 2)), np.array([[-0.5, 1.0]]), 1.0)


def test_full_frame_count_exact_multiples():
    assert align.full_frame_count(3.05) == 39
    assert align.full_frame_count(13440 / 24000) == 7  # 7.000000000000001 in floats
    assert align.full_frame_count(1.0) == 13
    with pytest.raises(ValueError):
        align.full_frame_count(0.0)


def test_wavlm_frame_count_conv_stack():
    assert align.wavlm_frame_count(48800) == 152  # 3.05 s at 16 kHz
    assert align.wavlm_frame_count(16000) == 49
    assert align.wavlm_frame_count(400) == 1
    assert align.wavlm_frame_count(399) == 0


def test_wavlm_pool_index_ranges_and_means(rng):
    np.testing.assert_array_equal(align.pool_ranges(5, 3), [[0, 2], [1, 4], [3, 5]])
    np.testing.assert_array_equal(align.pool_ranges(2, 4), [[0, 1], [0, 1], [1, 2], [1, 2]])
    feats = rng.normal(size=(152, 4)).astype(np.float16)
    out = align.wavlm_to_frames(feats, 39)
    ranges = align.pool_ranges(152, 39)
    for k, (a, b) in enumerate(ranges):
        assert a == (k * 152) // 39 and b == -(-(k + 1) * 152 // 39)
        np.testing.assert_allclose(out[k], feats[a:b].astype(np.float64).mean(0), rtol=1e-6)
    assert out.dtype == np.float32 and out.shape == (39, 4)


def test_inject_silence_gaps_and_trailing_end_of_audio():
    words = [
        {"text": "world", "start": 0.7, "end": 1.0},
        {"word": "hello", "start": 0.2, "end": 0.6},
        {"word": "again", "start": 1.0, "end": 1.4},
    ]
    out = align.inject_silence(words)
    assert out == [
        {"word": "<silence>", "start": 0.0, "end": 0.2},
        {"word": "hello", "start": 0.2, "end": 0.6},
        {"word": "<silence>", "start": 0.6, "end": 0.7},
        {"word": "world", "start": 0.7, "end": 1.0},
        {"word": "again", "start": 1.0, "end": 1.4},
        {"word": "<silence>", "start": 1.4, "end": -1.0},
    ]
    assert align.alignment_text(out) == ("<silence> hello <silence> world again <silence>")
    assert align.has_silence_injected(out) and not align.has_silence_injected(words)
    # A word starting at 0 gets no leading silence; overlaps keep the running max end.
    out = align.inject_silence(
        [{"word": "a", "start": 0, "end": 0.5}, {"word": "b", "start": 0.3, "end": 0.4}]
    )
    assert [w["word"] for w in out] == ["a", "b", "<silence>"] and out[-1]["start"] == 0.5


def test_shared_window_tokens_share_word_interval():
    words = align.inject_silence(
        [{"word": "hi", "start": 0.0, "end": 0.3}, {"word": "there", "start": 0.5, "end": 0.9}]
    )
    # "hi <silence> there <silence>" in pieces; " " strips to nothing.
    tokens = ["hi", " <", "sil", "ence", ">", " ", "the", "re", " <silence>"]
    times = align.token_times_shared_window(tokens, words)
    np.testing.assert_array_equal(
        times,
        [
            [0.0, 0.3],
            [0.3, 0.5],
            [0.3, 0.5],
            [0.3, 0.5],
            [0.3, 0.5],
            [0.5, 0.5],  # only spaces: [e_prev, e_prev]
            [0.5, 0.9],
            [0.5, 0.9],
            [0.9, -1.0],  # trailing silence, end of audio
        ],
    )


def test_shared_window_empty_word_text_and_tokens_after_last_word():
    words = [
        {"word": "ab", "start": 0.0, "end": 0.2},
        {"word": "", "start": 0.2, "end": 0.4},
        {"word": "c", "start": 0.4, "end": -1},
    ]
    tokens = ["a", "b", "xyz", "c", "extra", " ", "more"]
    times = align.token_times_shared_window(tokens, words)
    np.testing.assert_array_equal(
        times,
        [
            [0.0, 0.2],
            [0.0, 0.2],
            [0.2, 0.4],  # empty word text: budget = this token's length
            [0.4, -1.0],
            [-1.0, -1.0],  # after the last word: [e_prev, e_prev]
            [-1.0, -1.0],
            [-1.0, -1.0],
        ],
    )
    # The -1 sentinel in starts is resolved as end of audio by llm_to_frames.
    out = align.llm_to_frames(np.eye(7, dtype=np.float32), times, 1.0)
    assert out.shape == (13, 7) and np.all(np.isfinite(out))
    np.testing.assert_array_equal(align.token_times_shared_window(["a", "b"], []), np.zeros((2, 2)))
    # A leading token with no text before any word starts at the first word's start.
    t = align.token_times_shared_window([" ", "x"], [{"word": "x", "start": 0.1, "end": 0.2}])
    np.testing.assert_array_equal(t, [[0.1, 0.1], [0.1, 0.2]])


def test_window_pool_ranges_by_hand():
    # 10 frames at 50 Hz onto 3 frames at 12.5 Hz: windows 4t-2 .. 4t+5, clipped to the clip.
    np.testing.assert_array_equal(align.window_pool_ranges(10, 3), [[0, 6], [2, 10], [6, 10]])
    # A clip whose 50 Hz frames stop before its last 12.5 Hz frame's window: the last row.
    np.testing.assert_array_equal(align.window_pool_ranges(5, 3), [[0, 5], [2, 5], [4, 5]])
    feats = np.arange(10, dtype=np.float32)[:, None]
    np.testing.assert_allclose(align.wavlm_to_frames(feats, 3, "window")[:, 0], [2.5, 5.5, 7.5])
    with pytest.raises(ValueError, match="choose one of"):
        align.wavlm_to_frames(feats, 3, "mean")
