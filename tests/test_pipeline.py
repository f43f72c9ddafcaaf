"""Grain pipeline: shapes, aligned crops, masks, exact resume, process shards, eval padding."""

import dataclasses

import numpy as np
import pytest

from amylm_jax.data import pipeline as P
from amylm_jax.data import store as S
from amylm_jax.data.audio import int16_to_float

DW, DL = 4, 3
# 0.5 s (shorter than the crop), 1 s exactly, and longer clips up to 3 s.
LENGTHS = [12000, 24000, 30000, 36000, 40000, 48000, 52000, 56000, 60000, 64000, 70000, 72000]


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    rng = np.random.default_rng(1)
    path = tmp_path_factory.mktemp("pipe") / "store"
    with S.StoreWriter(
        path, wavlm_dim=DW, llm_dim=DL, teachers={"wavlm": "w", "llm": "l"}, records_per_shard=5
    ) as w:
        for i, n in enumerate(LENGTHS):
            t = S.frames_for_duration(n / S.SAMPLE_RATE)
            # Features encode (clip, frame) so a crop can be traced back to its rows.
            frame_id = np.arange(t, dtype=np.float32)[:, None]
            w.add(
                {
                    "clip_id": f"clip{i:02d}",
                    "audio": rng.integers(-20000, 20000, n).astype(np.int16),
                    "wavlm": (i * 100 + frame_id + np.zeros((1, DW))).astype(np.float16),
                    "llm": rng.normal(size=(t, DL)).astype(np.float16),
                    "duration": n / S.SAMPLE_RATE,
                    "transcript": "",
                }
            )
    return str(path)


def _cfg(store_path, **kw):
    return P.DataConfig(store=store_path, **{"batch_size": 4, **kw})


def _take(it, n):
    return [next(it) for _ in range(n)]


def _equal(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _locate(store, batch, j):
    """(clip index, start sample) of example j, found from its audio alone."""
    audio = batch["audio"][j]
    for ci in range(len(store)):
        pcm = int16_to_float(store[ci]["audio"])
        for start in np.flatnonzero(pcm == audio[0]):
            seg = pcm[start : start + audio.size]
            if np.array_equal(seg, audio[: seg.size]) and not audio[seg.size :].any():
                return ci, int(start)
    raise AssertionError("example not found in store")


def test_split_by_fraction_and_by_ids(store_path):
    store = S.open_store(store_path)
    train, val = P.split_clips(store, _cfg(store_path))
    assert len(val) == round(12 * 0.2) and len(train) == 10
    assert set(train) | set(val) == set(range(12)) and not set(train) & set(val)
    again = P.split_clips(store, _cfg(store_path))
    assert np.array_equal(again[1], val)
    other = P.split_clips(store, _cfg(store_path, split_seed=7))[1]
    assert not np.array_equal(other, val)
    train2, val2 = P.split_clips(store, _cfg(store_path, val_clips=("clip03", "clip00")))
    assert list(val2) == [0, 3] and len(train2) == 10
    with pytest.raises(ValueError, match="nope"):
        P.split_clips(store, _cfg(store_path, val_clips=("nope",)))


def test_batch_shapes_aligned_crops_and_feature_rows(store_path):
    cfg = _cfg(store_path)
    store = S.open_store(store_path)
    it = P.make_train_iterator(cfg)
    batches = _take(it, 2)
    b = batches[0]
    assert b["audio"].shape == (4, 24000) and b["audio"].dtype == np.float32
    assert b["wavlm"].shape == (4, 13, DW) and b["llm"].shape == (4, 13, DL)
    assert b["mask"].shape == (4, 13) and b["weight"].shape == (4,)
    assert all(v.dtype == np.float32 for v in b.values())
    np.testing.assert_array_equal(b["weight"], 1.0)
    starts = []
    for batch in batches:
        for j in range(4):
            ci, start = _locate(store, batch, j)
            assert start % 1920 == 0
            rec = store[ci]
            f0, t_full = start // 1920, rec["wavlm"].shape[0]
            rows = rec["wavlm"][f0 : f0 + 13].astype(np.float32)
            np.testing.assert_array_equal(batch["wavlm"][j, : rows.shape[0]], rows)
            np.testing.assert_array_equal(
                batch["llm"][j, : rows.shape[0]], rec["llm"][f0 : f0 + 13].astype(np.float32)
            )
            expected_mask = (np.arange(f0, f0 + 13) < t_full).astype(np.float32)
            np.testing.assert_array_equal(batch["mask"][j], expected_mask)
            assert start + 24000 <= max(rec["audio"].size, 24000)
            starts.append(start)
    assert any(s > 0 for s in starts)


def test_short_clip_is_zero_padded_and_masked(store_path):
    cfg = _cfg(store_path)
    store = S.open_store(store_path)
    ex = P.crop_example(store[0], 0, cfg)  # 0.5 s clip: 12000 samples, 7 frames
    assert not ex["audio"][12000:].any() and ex["audio"][:12000].any()
    np.testing.assert_array_equal(ex["mask"], [1] * 7 + [0] * 6)
    assert not ex["wavlm"][7:].any() and not ex["llm"][7:].any()
    rng = np.random.default_rng(0)
    assert P.crop_start(12000, cfg, rng) == 0 and P.crop_start(24000, cfg, rng) == 0


def test_parity_switch_gives_unaligned_starts(store_path):
    cfg = _cfg(store_path, frame_aligned_crops=False)
    rng = np.random.default_rng(0)
    starts = [P.crop_start(72000, cfg, rng) for _ in range(200)]
    assert any(s % 1920 for s in starts) and max(starts) < 72000 - 24000
    store = S.open_store(store_path)
    ex = P.crop_example(store[11], 2500, cfg)  # features start at floor(2500 / 1920) = 1
    np.testing.assert_array_equal(ex["wavlm"][0], store[11]["wavlm"][1].astype(np.float32))
    aligned = [P.crop_start(72000, _cfg(store_path), rng) for _ in range(200)]
    assert all(s % 1920 == 0 for s in aligned) and max(aligned) == 72000 - 24000


def test_exact_resume_within_and_across_epochs(store_path):
    cfg = _cfg(store_path)
    assert P.steps_per_epoch(cfg) == 10 // 4
    reference = _take(P.make_train_iterator(cfg), 6)  # 3 epochs of 2 steps
    # epochs differ (new shuffle and crops), so resuming must restore the epoch too
    assert not _equal(reference[0], reference[2])
    for k in (1, 2, 3):  # k=2: the next batch opens a new epoch
        it = P.make_train_iterator(cfg)
        _take(it, k)
        state = it.get_state()
        fresh = P.make_train_iterator(cfg)
        fresh.set_state(state)
        assert _equal(next(fresh), reference[k])
        assert _equal(next(fresh), reference[k + 1])


def test_workers_give_same_batches_and_resume(store_path):
    reference = _take(P.make_train_iterator(_cfg(store_path)), 4)
    cfg = _cfg(store_path, worker_count=2)
    it = P.make_train_iterator(cfg)
    try:
        got = _take(it, 3)
        state = it.get_state()
    finally:
        it.close()
    assert all(_equal(a, b) for a, b in zip(got, reference[:3], strict=True))
    fresh = P.make_train_iterator(cfg)
    try:
        fresh.set_state(state)
        assert _equal(next(fresh), reference[3])
    finally:
        fresh.close()


def test_two_processes_get_disjoint_shards_covering_split(store_path):
    cfg = _cfg(store_path, val_fraction=0.0)
    store = S.open_store(store_path)
    train, _ = P.split_clips(store, cfg)
    assert P.steps_per_epoch(cfg, process_count=2) == (12 // 2) // 2
    seen = []
    for p in range(2):
        it = P.make_train_iterator(cfg, process_index=p, process_count=2)
        batches = _take(it, 3 * P.steps_per_epoch(cfg, process_count=2))  # 3 epochs
        assert batches[0]["audio"].shape == (2, 24000)
        seen.append({_locate(store, b, j)[0] for b in batches for j in range(2)})
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(int(i) for i in train)
    with pytest.raises(ValueError, match="divisible"):
        P.make_train_iterator(_cfg(store_path, batch_size=5), process_count=2)


def test_eval_pass_padding_and_weights(store_path):
    cfg = _cfg(store_path, val_clips=("clip00", "clip04", "clip11"))
    store = S.open_store(store_path)
    assert P.eval_steps(cfg) == 1
    batches = list(P.make_eval_iterator(cfg))
    assert len(batches) == 1
    b = batches[0]
    np.testing.assert_array_equal(b["weight"], [1, 1, 1, 0])
    for j, ci in enumerate([0, 4, 11]):
        pcm = int16_to_float(store[ci]["audio"][:24000])
        np.testing.assert_array_equal(b["audio"][j, : pcm.size], pcm)  # crop from the start
    assert not b["audio"][3].any() and not b["mask"][3].any() and not b["wavlm"][3].any()
    # two processes: same number of batches each, clips split between them
    per_proc = [list(P.make_eval_iterator(cfg, process_index=p, process_count=2)) for p in range(2)]
    assert [len(x) for x in per_proc] == [P.eval_steps(cfg, 2)] * 2 == [1, 1]
    weights = np.concatenate([b["weight"] for x in per_proc for b in x])
    assert weights.sum() == 3 and weights.shape == (4,)


def test_too_small_store_is_a_clear_error(store_path):
    with pytest.raises(ValueError, match="too few"):
        P.make_train_iterator(dataclasses.replace(_cfg(store_path), batch_size=64))


def test_orbax_checkpoint_of_the_iterator(store_path, tmp_path):
    import grain
    import orbax.checkpoint as ocp

    cfg = _cfg(store_path)
    reference = _take(P.make_train_iterator(cfg), 4)
    it = P.make_train_iterator(cfg)
    _take(it, 3)
    handler = {"data": grain.checkpoint.CheckpointHandler()}
    mgr = ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",), item_handlers=handler)
    mgr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mgr.wait_until_finished()
    fresh = P.make_train_iterator(cfg)
    mgr.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    assert _equal(next(fresh), reference[3])
