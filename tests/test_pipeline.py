"""Grain pipeline: shapes, aligned crops, masks, exact resume, process-count invariance, eval."""

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


def _concat(batches):
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def _clips(batch):
    """Clip index of each example, read from its first wavlm row (i * 100 + frame)."""
    return [int(row) // 100 for row in batch["wavlm"][:, 0, 0]]


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


def _grouped_store(tmp_path, speakers):
    path = tmp_path / "grouped"
    with S.StoreWriter(path, wavlm_dim=DW, llm_dim=DL, teachers={"wavlm": "w", "llm": "l"}) as w:
        for i, speaker in enumerate(speakers):
            t = S.frames_for_duration(1.0)
            w.add(
                {
                    "clip_id": f"c{i:02d}",
                    "audio": np.ones(24000, np.int16),
                    "wavlm": np.zeros((t, DW), np.float16),
                    "llm": np.zeros((t, DL), np.float16),
                    "duration": 1.0,
                    "groups": {} if speaker is None else {"speaker": speaker},
                }
            )
    return str(path)


def test_split_grouped_by_speaker_keeps_each_speaker_on_one_side(tmp_path):
    speakers = ["ann"] * 5 + ["bob"] * 3 + ["cy"] * 4 + ["dee"] * 2 + [None, None]
    path = _grouped_store(tmp_path, speakers)
    store = S.open_store(path)
    assert store.group_fields == ["speaker"]
    assert store.clip_groups("speaker") == speakers
    for seed in range(20):
        cfg = _cfg(path, val_group_by="speaker", val_fraction=0.25, split_seed=seed)
        train, val = P.split_clips(store, cfg)
        assert set(train) | set(val) == set(range(16)) and not set(train) & set(val)
        on_val = {speakers[i] for i in val if speakers[i]}
        on_train = {speakers[i] for i in train if speakers[i]}
        assert not on_val & on_train, (seed, on_val, on_train)
        # Whole groups until at least round(16 * 0.25) = 4 clips; the last group taken is
        # what pushed the count to 4 or more.
        assert len(val) >= 4 and len(train) >= 1
        assert np.array_equal(P.split_clips(store, cfg)[1], val)  # same seed, same split
    splits = {
        tuple(P.split_clips(store, _cfg(path, val_group_by="speaker", split_seed=s))[1])
        for s in range(20)
    }
    assert len(splits) > 3  # the seed decides which groups
    # Listed clips bring their whole speaker; a clip without a speaker comes alone.
    _, val = P.split_clips(store, _cfg(path, val_group_by="speaker", val_clips=("c06", "c14")))
    assert list(val) == [5, 6, 7, 14]
    with pytest.raises(ValueError, match=r"val_group_by='source'.*it has: speaker"):
        P.split_clips(store, _cfg(path, val_group_by="source"))
    # Without val_group_by the split is by clip, as before.
    _, val = P.split_clips(store, _cfg(path, val_fraction=0.25))
    assert len(val) == 4


def test_targets_standardised_with_the_store_statistics(store_path):
    store = S.open_store(store_path)
    cfg = _cfg(store_path, normalize_wavlm_targets=True)
    mean, std = store.feature_stats("wavlm")
    stats = P.target_stats(store, cfg)
    assert set(stats) == {"wavlm"}  # the LLM targets stay as stored
    ex = P.crop_example(store[0], 0, cfg, stats)  # 0.5 s clip: 7 real frames of 13
    raw = P.crop_example(store[0], 0, cfg)
    np.testing.assert_allclose(ex["wavlm"][:7], (raw["wavlm"][:7] - mean) / std, rtol=1e-6)
    assert not ex["wavlm"][7:].any()  # padding stays zero
    np.testing.assert_array_equal(ex["llm"], raw["llm"])
    batch = next(iter(P.make_train_dataset(cfg, store=store)))
    frames = np.concatenate([store[i]["wavlm"] for i in range(len(store))]).astype(np.float64)
    z = (frames - mean) / std
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std(0), 1.0, rtol=1e-5)
    real = batch["mask"] > 0
    assert np.abs(batch["wavlm"][real]).max() < np.abs(z).max() + 1e-5


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
    assert P.steps_per_epoch(cfg) == 3  # ceil(10 training clips / 4): no clip dropped
    reference = _take(P.make_train_iterator(cfg), 6)  # 24 examples: 2.4 passes over the clips
    # epochs differ (new shuffle and crops), so resuming must restore the epoch too
    assert not _equal(reference[0], reference[3])
    for k in (1, 2, 3):  # k=2: the next batch straddles two epochs
        it = P.make_train_iterator(cfg)
        _take(it, k)
        state = it.get_state()
        assert state == {"step": k}
        fresh = P.make_train_iterator(cfg)
        fresh.set_state(state)
        assert _equal(next(fresh), reference[k])
        assert _equal(next(fresh), reference[k + 1])
        # the state is absolute: restoring it into an iterator opened at start_step=k (what a
        # trainer does with its restored step) does not skip ahead a second time
        again = P.make_train_iterator(cfg, start_step=k)
        again.set_state(state)
        assert _equal(next(again), reference[k])
    # set_state after batches were drawn rewinds (and reopens the grain iterator)
    it = P.make_train_iterator(cfg)
    _take(it, 4)
    it.set_state({"step": 1})
    assert _equal(next(it), reference[1]) and it.get_state() == {"step": 2}
    with pytest.raises(ValueError, match="training-iterator state"):
        it.set_state({"next_index": 3})


def test_workers_give_same_batches_and_resume(store_path):
    reference = _take(P.make_train_iterator(_cfg(store_path)), 5)
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
        fresh.set_state(state)  # step 3 is in epoch 1; step 4 opens epoch 2
        assert _equal(next(fresh), reference[3])
        assert _equal(next(fresh), reference[4])
    finally:
        fresh.close()


@pytest.mark.parametrize("val_fraction", [0.0, 0.2])  # 12 clips / 3 steps; 10 clips / 2 steps
def test_process_batches_concatenate_to_the_single_process_batch(store_path, val_fraction):
    cfg = _cfg(store_path, val_fraction=val_fraction)
    steps = P.steps_per_epoch(cfg)
    assert steps == P.steps_per_epoch(cfg, process_count=2) == P.steps_per_epoch(cfg, 4)
    single = _take(P.make_train_iterator(cfg), 6)
    for count in (2, 4):
        per_proc = [
            _take(P.make_train_iterator(cfg, process_index=p, process_count=count), 6)
            for p in range(count)
        ]
        assert per_proc[0][0]["audio"].shape == (4 // count, 24000)
        for s in range(6):
            assert _equal(_concat([batches[s] for batches in per_proc]), single[s]), (count, s)
    with pytest.raises(ValueError, match="divisible"):
        P.make_train_iterator(_cfg(store_path, batch_size=5), process_count=2)
    with pytest.raises(ValueError, match="divisible"):
        P.steps_per_epoch(_cfg(store_path, batch_size=5), process_count=2)


def test_processes_split_each_epoch_disjointly(store_path):
    """Every clip is used exactly once per epoch (nothing dropped); within an epoch the two
    processes' clips are disjoint and together are the epoch's."""
    store = S.open_store(store_path)
    for val_fraction, n_train in ((0.0, 12), (0.2, 10)):  # 10 clips: epochs straddle batches
        cfg = _cfg(store_path, val_fraction=val_fraction)
        train = {int(i) for i in P.split_clips(store, cfg)[0]}
        assert len(train) == n_train
        steps = P.steps_per_epoch(cfg, process_count=2)
        assert steps == -(-n_train // 4)
        n_steps = -(-3 * n_train // 4)  # at least 3 whole passes
        single = _take(P.make_train_iterator(cfg), n_steps)
        per_proc = [
            _take(P.make_train_iterator(cfg, process_index=p, process_count=2), n_steps)
            for p in range(2)
        ]
        stream = [c for batch in single for c in _clips(batch)]
        # The example index of every row, so the per-process rows can be placed in epochs.
        owner = [p for s_ in range(n_steps) for p in (0, 0, 1, 1)]
        orders = []
        for e in range(3):
            epoch = stream[e * n_train : (e + 1) * n_train]
            assert sorted(epoch) == sorted(train)  # each clip once
            rows = range(e * n_train, (e + 1) * n_train)
            seen = [{stream[j] for j in rows if owner[j] == p} for p in range(2)]
            assert not seen[0] & seen[1] and seen[0] | seen[1] == set(epoch)
            orders.append(epoch)
        assert orders[0] != orders[1] != orders[2]  # reshuffled every epoch
        for p in range(2):
            got = [c for batch in per_proc[p] for c in _clips(batch)]
            want = [stream[j] for j in range(len(stream)) if owner[j] == p]
            assert got == want


def test_start_step_rejoins_after_process_count_change(store_path):
    """Kill a 2-process run after step k, restart with 1 process at step k: same data."""
    cfg = _cfg(store_path)  # 10 clips, batch 4: epochs straddle steps 2 and 5
    two = [_take(P.make_train_iterator(cfg, process_index=p, process_count=2), 6) for p in (0, 1)]
    for k in (1, 2, 3, 5):  # steps 2 and 5 straddle an epoch boundary
        one = P.make_train_iterator(cfg, start_step=k)
        assert one.get_state() == {"step": k}
        got = _take(one, 6 - k)
        for s in range(k, 6):
            assert _equal(got[s - k], _concat([two[0][s], two[1][s]])), (k, s)
    # and back from 1 to 2 processes
    single = _take(P.make_train_iterator(cfg), 5)
    halves = [
        next(P.make_train_iterator(cfg, process_index=p, process_count=2, start_step=4))
        for p in (0, 1)
    ]
    assert _equal(_concat(halves), single[4])
    # a state saved by a 2-process run is just the global step: it means the same with 1
    it = P.make_train_iterator(cfg, process_index=1, process_count=2)
    _take(it, 3)
    fresh = P.make_train_iterator(cfg)
    fresh.set_state(it.get_state())
    assert _equal(next(fresh), single[3])
    with pytest.raises(ValueError, match="start_step"):
        P.make_train_iterator(cfg, start_step=-1)


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
