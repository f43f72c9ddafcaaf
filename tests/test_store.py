"""Feature store: round trip, validation errors naming the clip, atomic writes, check_store."""

import json
import pickle

import numpy as np
import pytest

from amylm_jax.data import store as S


def _record(rng, cid, n_samples, dw=4, dl=3):
    t = S.frames_for_duration(n_samples / S.SAMPLE_RATE)
    return {
        "clip_id": cid,
        "audio": rng.integers(-3000, 3000, n_samples).astype(np.int16),
        "wavlm": rng.normal(size=(t, dw)).astype(np.float16),
        "llm": rng.normal(size=(t, dl)).astype(np.float16),
        "duration": n_samples / S.SAMPLE_RATE,
        "transcript": f"words of {cid}",
    }


def _write(path, records, **kw):
    with S.StoreWriter(
        path, wavlm_dim=4, llm_dim=3, teachers={"wavlm": "w", "llm": "l"}, **kw
    ) as w:
        for r in records:
            w.add(r)
        w.skip("gone", "no words")
    return path


def test_round_trip_manifest_and_pickle(tmp_path, rng):
    # 13440 samples: float ceil(L/24000*12.5) is off by one there; both conventions accepted.
    lengths = [12000, 24000, 13440, 50000, 30001]
    recs = [_record(rng, f"c{i}", n) for i, n in enumerate(lengths)]
    _write(tmp_path / "s", recs, records_per_shard=2, extra_manifest={"source": "unit"})
    store = S.open_store(tmp_path / "s")
    assert len(store) == 5 and store.clip_ids == [f"c{i}" for i in range(5)]
    for i, r in enumerate(recs):
        got = store[i]
        for k in ("audio", "wavlm", "llm"):
            assert got[k].dtype == r[k].dtype
            np.testing.assert_array_equal(got[k], r[k])
        assert got["duration"] == r["duration"] and got["transcript"] == r["transcript"]
    m = store.manifest
    assert m["num_clips"] == 5 and m["sample_rate"] == 24000 and m["frame_rate"] == 12.5
    assert [s["num_records"] for s in m["shards"]] == [2, 2, 1]
    assert m["skipped"] == [{"clip_id": "gone", "reason": "no words"}]
    assert m["source"] == "unit" and m["teachers"] == {"wavlm": "w", "llm": "l"}
    assert m["total_seconds"] == pytest.approx(sum(lengths) / 24000)
    clone = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(clone[3]["llm"], recs[3]["llm"])
    report = S.check_store(tmp_path / "s")
    assert report["num_clips"] == 5 and report["num_skipped"] == 1


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r.update(wavlm=r["wavlm"][:, :3]), "wavlm must be"),
        (lambda r: r.update(llm=r["llm"][:-1]), "llm has"),
        (lambda r: r["wavlm"].__setitem__((0, 0), np.nan), "NaN"),
        (lambda r: r.update(audio=np.zeros(0, np.int16), duration=0.0), "non-empty"),
        (lambda r: r.update(duration=r["duration"] + 0.5), "does not match"),
    ],
)
def test_writer_rejects_bad_record_and_leaves_nothing(tmp_path, rng, mutate, message):
    bad = _record(rng, "bad_clip", 30000)
    mutate(bad)
    with pytest.raises(ValueError, match=f"bad_clip.*{message}|{message}.*bad_clip"):
        _write(tmp_path / "s", [_record(rng, "ok", 24000), bad])
    # atomic: the failed write leaves neither the store nor its temporary directory
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_duplicate_and_existing(tmp_path, rng):
    with pytest.raises(ValueError, match="duplicate"):
        _write(tmp_path / "s", [_record(rng, "a", 24000), _record(rng, "a", 24000)])
    _write(tmp_path / "s", [_record(rng, "a", 24000)])
    with pytest.raises(FileExistsError):
        _write(tmp_path / "s", [_record(rng, "b", 24000)])
    _write(tmp_path / "s", [_record(rng, "b", 24000)], overwrite=True)
    assert S.open_store(tmp_path / "s").clip_ids == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_check_store_detects_corruption(tmp_path, rng):
    path = _write(
        tmp_path / "s", [_record(rng, f"c{i}", 24000) for i in range(3)], records_per_shard=2
    )
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["num_clips"] = 4
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="num_clips"):
        S.check_store(path)
    manifest["num_clips"] = 3
    manifest["wavlm_dim"] = 5
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="clip 'c0'"):
        S.check_store(path)
    manifest["wavlm_dim"] = 4
    (path / "manifest.json").write_text(json.dumps(manifest))
    (path / "shard-00001.records").unlink()
    with pytest.raises(ValueError, match="missing shard"):
        S.check_store(path)


def test_corrupt_record_bytes_are_reported(tmp_path, rng):
    rec = _record(rng, "nan_clip", 24000)
    data = bytearray(S.encode_record(rec))
    decoded = S.decode_record(bytes(data))
    assert decoded["clip_id"] == "nan_clip"
    bad = dict(decoded, llm=np.full_like(decoded["llm"], np.inf))
    with pytest.raises(ValueError, match="nan_clip.*NaN or Inf"):
        S.validate_record(bad, 4, 3)


def test_resolve_store_messages(tmp_path, rng):
    with pytest.raises(FileNotFoundError, match="demo"):
        S.locate_store(tmp_path / "nowhere")
    path = _write(tmp_path / "s", [_record(rng, "a", 24000)])
    assert S.locate_store(str(path)) == path


def test_frames_for_duration():
    assert S.frames_for_duration(13440 / 24000) == 7
    assert S.frames_for_duration(1.0) == 13
    assert S.frames_for_duration(0.0801) == 2


def test_clip_ids_come_from_manifest_and_are_checked(tmp_path, rng):
    path = _write(tmp_path / "s", [_record(rng, c, 24000) for c in ("b", "a", "c")])
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["clip_ids"] == ["b", "a", "c"] == S.open_store(path).clip_ids
    manifest["clip_ids"] = ["a", "b", "c"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="clip_ids"):
        S.check_store(path)


def test_clip_groups_stay_aligned_with_the_records(tmp_path, rng):
    """A grouping field first seen on a later record, or missing from one, keeps its values
    aligned with the clip order (None where a clip has no value)."""
    groups = [{}, {"speaker": "a"}, {"speaker": "b", "source": "x.wav"}, {"source": ""}]
    recs = [{**_record(rng, f"c{i}", 4000), "groups": g} for i, g in enumerate(groups)]
    _write(tmp_path / "s", recs)
    store = S.open_store(tmp_path / "s")
    assert store.group_fields == ["source", "speaker"]
    assert store.clip_groups("speaker") == [None, "a", "b", None]
    assert store.clip_groups("source") == [None, None, "x.wav", None]
    with pytest.raises(KeyError, match="no grouping field 'voice'.*source, speaker"):
        store.clip_groups("voice")
    assert S.check_store(tmp_path / "s")["num_clips"] == 4


def test_feature_stats_are_the_mean_and_std_over_all_frames(tmp_path, rng):
    recs = [_record(rng, f"c{i}", n) for i, n in enumerate((4000, 24000, 31000))]
    store = S.open_store(_write(tmp_path / "s", recs))
    for name in ("wavlm", "llm"):
        frames = np.concatenate([np.asarray(r[name], np.float16) for r in recs]).astype(np.float64)
        mean, std = store.feature_stats(name)
        np.testing.assert_allclose(mean, frames.mean(0), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(std, frames.std(0), rtol=1e-6)
        assert store.manifest["feature_stats"][name]["frames"] == frames.shape[0]
    # Stores joined from parts: the merged statistics are those of all frames together.
    a = S.open_store(_write(tmp_path / "a", recs[:1])).manifest["feature_stats"]["wavlm"]
    b = S.open_store(_write(tmp_path / "b", recs[1:])).manifest["feature_stats"]["wavlm"]
    merged = S.merge_stats([a, b])
    np.testing.assert_allclose(merged["mean"], store.feature_stats("wavlm")[0], rtol=1e-6)
    np.testing.assert_allclose(merged["std"], store.feature_stats("wavlm")[1], rtol=1e-6)
    old = tmp_path / "s" / S.MANIFEST
    manifest = json.loads(old.read_text())
    del manifest["feature_stats"]
    old.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="no feature statistics.*rebuild"):
        S.open_store(tmp_path / "s").feature_stats("wavlm")
