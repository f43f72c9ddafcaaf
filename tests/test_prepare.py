"""Tests of the offline store build: contents, resume, input formats, bad clips, CLI."""

import json

import numpy as np
import pytest
import soundfile as sf

from amylm_jax.data import align, audio, teachers
from amylm_jax.data import extract as prepare
from amylm_jax.data.store import check_store, open_store


@pytest.fixture(scope="module")
def tiny():
    return teachers.load_wavlm(teachers.TINY), teachers.load_llm(teachers.TINY)


class Tampered:
    """Wraps a teacher and corrupts the output of batch item ``index`` with ``fn``."""

    def __init__(self, inner, index, fn):
        self.inner, self.index, self.fn, self.calls = inner, index, fn, 0
        self.name, self.dim = inner.name, inner.dim

    def extract(self, items):
        self.calls += 1
        out = self.inner.extract(items)
        if self.index is not None and self.index < len(out):
            out[self.index] = self.fn(out[self.index])
        return out


def _words(*spans):
    return [{"word": f"w{i}", "start": s, "end": e} for i, (s, e) in enumerate(spans)]


def _write(tmp_path, name, seconds, rate=16000, seed=0):
    rng = np.random.default_rng(seed)
    sf.write(tmp_path / name, (0.1 * rng.normal(size=int(seconds * rate))).astype(np.float32), rate)
    return name


def _manifest(tmp_path, records, name="align.jsonl"):
    (tmp_path / name).write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return tmp_path / name


def _good_records(tmp_path):
    a_words = _words((0.1, 0.5), (0.6, 1.0))
    b_words = _words((0.0, 0.4), (0.4, 1.2), (1.5, 1.9))
    return [
        {"clip_id": "a", "audio": _write(tmp_path, "a.wav", 1.3), "words": a_words,
         "transcript": "w0 w1"},
        {"clip_id": "b", "audio": _write(tmp_path, "b.flac", 2.05, rate=22050, seed=1),
         "words": b_words},
    ]  # fmt: skip


def test_store_contents_match_alignment_of_teacher_outputs(tmp_path, tiny):
    wavlm, llm = tiny
    records = _good_records(tmp_path)
    manifest = prepare.build_store(_manifest(tmp_path, records), tmp_path / "store", wavlm, llm,
                                   batch_size=2, progress=False)  # fmt: skip
    assert manifest["num_clips"] == 2 and manifest["skipped"] == []
    assert manifest["teachers"] == {"wavlm": "tiny-random", "llm": "tiny-random"}
    assert check_store(tmp_path / "store")["num_clips"] == 2
    store = open_store(tmp_path / "store")
    for i, rec in enumerate(records):
        got = store[i]
        waves = audio.load_resampled(tmp_path / rec["audio"])
        np.testing.assert_array_equal(got["audio"], audio.to_int16(waves[24000]))
        duration = len(waves[24000]) / 24000
        t_full = align.full_frame_count(duration)
        assert got["duration"] == duration and got["wavlm"].shape == (t_full, 32)
        w_ref = align.wavlm_to_frames(wavlm.extract([waves[16000]])[0], t_full)
        np.testing.assert_allclose(got["wavlm"], w_ref, rtol=2e-3, atol=2e-3)
        words = align.inject_silence(rec["words"])
        feats, times = llm.extract([words])[0]
        l_ref = align.llm_to_frames(feats, times, duration)
        np.testing.assert_allclose(got["llm"], l_ref, rtol=2e-3, atol=2e-3)
    assert store[0]["transcript"] == "w0 w1" and store[1]["transcript"] == "w0 w1 w2"
    # Grouping fields: the source recording defaults to the record's audio path.
    assert store.group_fields == ["source"]
    assert store.clip_groups("source") == ["a.wav", "b.flac"]


def test_store_without_llm_features(tmp_path, tiny):
    """``--llm=none``: no LLM teacher; every record has zero-width LLM features."""
    wavlm, _ = tiny
    records = _good_records(tmp_path)
    manifest = prepare.build_store(_manifest(tmp_path, records), tmp_path / "s", wavlm, "none",
                                   progress=False)  # fmt: skip
    assert manifest["llm_dim"] == 0 and manifest["teachers"]["llm"] == "none"
    store = open_store(tmp_path / "s")
    for i in range(2):
        assert store[i]["llm"].shape == (store[i]["wavlm"].shape[0], 0)
    assert check_store(tmp_path / "s")["num_clips"] == 2


def test_grouping_fields_are_carried_per_clip(tmp_path, tiny):
    records = _good_records(tmp_path)
    records[0].update(speaker="spk1", source="book.mp3", voice="en-us")
    records[1].update(speaker=7)
    path = _manifest(tmp_path, records)
    prepare.build_store(path, tmp_path / "s1", *tiny, progress=False)
    store = open_store(tmp_path / "s1")
    assert store.clip_groups("speaker") == ["spk1", "7"]
    assert store.clip_groups("source") == ["book.mp3", "b.flac"]
    prepare.build_store(path, tmp_path / "s2", *tiny, progress=False, group_fields=("voice",))
    assert open_store(tmp_path / "s2").clip_groups("voice") == ["en-us", None]
    records[1]["speaker"] = {"name": "x"}
    with pytest.raises(prepare.ClipError, match="'b'.*speaker.*string or number"):
        prepare.build_store(_manifest(tmp_path, records), tmp_path / "s3", *tiny, progress=False)


def test_window_wavlm_pooling(tmp_path, tiny):
    """``wavlm_pooling="window"``: targets pooled by the centred kernel-8 stride-4 window; the
    cache refuses to mix poolings."""
    wavlm, llm = tiny
    records = _good_records(tmp_path)
    path = _manifest(tmp_path, records)
    manifest = prepare.build_store(path, tmp_path / "w", wavlm, llm, progress=False,
                                   wavlm_pooling="window")  # fmt: skip
    assert manifest["wavlm_pooling"].startswith("centred average pool, kernel 8, stride 4")
    store = open_store(tmp_path / "w")
    for i, rec in enumerate(records):
        waves = audio.load_resampled(tmp_path / rec["audio"])
        frames = wavlm.extract([waves[16000]])[0]
        t_full = align.full_frame_count(len(waves[24000]) / 24000)
        want = np.stack([frames[max(0, 4 * t - 2) : 4 * t + 6].mean(axis=0) for t in range(t_full)])
        np.testing.assert_allclose(store[i]["wavlm"], want, rtol=2e-3, atol=2e-3)
        adaptive = align.wavlm_to_frames(frames, t_full)
        assert not np.allclose(store[i]["wavlm"], adaptive, rtol=2e-3, atol=2e-3)
    with pytest.raises(ValueError, match="WavLM pooling 'window'"):
        prepare.build_store(path, tmp_path / "w", wavlm, llm, progress=False, overwrite=True)
    with pytest.raises(ValueError, match="choose one of adaptive, window"):
        prepare.build_store(path, tmp_path / "x", wavlm, llm, wavlm_pooling="mean")


def test_resume_skips_cached_clips_and_redoes_changed_ones(tmp_path, tiny):
    records = _good_records(tmp_path)
    path = _manifest(tmp_path, records)
    wavlm = Tampered(tiny[0], None, None)
    prepare.build_store(path, tmp_path / "s", wavlm, tiny[1], batch_size=1, progress=False)
    assert wavlm.calls == 2 and len(list((tmp_path / "s.work").glob("*.npz"))) == 2
    first = open_store(tmp_path / "s")[1]["llm"].copy()
    with pytest.raises(FileExistsError):
        prepare.build_store(path, tmp_path / "s", wavlm, tiny[1], progress=False)
    prepare.build_store(path, tmp_path / "s", wavlm, tiny[1], overwrite=True, progress=False)
    assert wavlm.calls == 2  # everything came from the cache
    records[1]["words"] = _words((0.0, 0.2), (0.4, 1.2))
    _manifest(tmp_path, records)
    prepare.build_store(path, tmp_path / "s", wavlm, tiny[1], overwrite=True, progress=False)
    assert wavlm.calls == 3 and not np.array_equal(open_store(tmp_path / "s")[1]["llm"], first)
    with pytest.raises(ValueError, match="built with teachers"):
        prepare.build_store(path, tmp_path / "t", "other", tiny[1], cache_dir=tmp_path / "s.work")


def test_input_formats_agree(tmp_path, tiny):
    wavlm, llm = tiny
    records = _good_records(tmp_path)
    prepare.build_store(
        _manifest(tmp_path, records), tmp_path / "jsonl", wavlm, llm, progress=False
    )
    (tmp_path / "list.json").write_text(json.dumps(records))
    prepare.build_store(tmp_path / "list.json", tmp_path / "json", wavlm, llm, progress=False)
    # The original's column: alignment_json with silence already injected, "text" keys.
    original = [
        {"segment_id": r["clip_id"], "audio": str(tmp_path / r["audio"]),
         "alignment_json": json.dumps({"word": [{"text": w["word"], "start": w["start"],
                                                 "end": w["end"]}
                                                for w in align.inject_silence(r["words"])],
                                       "original_text": "asr text"})}
        for r in records
    ]  # fmt: skip
    prepare.build_store(
        original, tmp_path / "orig", wavlm, llm, base_dir="/", keep_cache=False, progress=False
    )
    assert not (tmp_path / "orig.work").exists()
    stores = [open_store(tmp_path / n) for n in ("jsonl", "json", "orig")]
    for i in range(2):
        for s in stores[1:]:
            for key in ("audio", "wavlm", "llm"):
                np.testing.assert_array_equal(s[i][key], stores[0][i][key])
    assert stores[2][0]["transcript"] == "asr text"


def _nan(x):
    return np.full_like(x, np.nan)


def _narrow(x):
    return x[:, :5]


def _bad_llm_nan(out):
    return (_nan(out[0]), out[1])


@pytest.mark.parametrize(
    "case,match",
    [
        ("missing_words", "missing alignment"),
        ("unknown_audio", "audio file not found"),
        ("unreadable", "cannot read audio"),
        ("empty", "audio is empty"),
        ("too_short", "audio too short"),
        ("overlap", "token times out of order"),
        ("wavlm_nan", "wavlm features contain NaN"),
        ("llm_nan", "llm features contain NaN"),
        ("wrong_dim", r"wavlm features have shape \(\d+, 5\)"),
        ("beyond_audio", "alignment reaches 5.00 s"),
    ],
)
def test_bad_clips_error_or_counted_skip(tmp_path, tiny, case, match):
    wavlm, llm = tiny
    good = _good_records(tmp_path)[0]
    bad = {"clip_id": "bad", "audio": _write(tmp_path, "bad.wav", 1.0), "words": _words((0.1, 0.5))}
    if case == "missing_words":
        bad["words"] = []
    elif case == "unknown_audio":
        bad["audio"] = "nowhere.wav"
    elif case == "unreadable":
        (tmp_path / "bad.wav").write_bytes(b"garbage")
    elif case == "empty":
        sf.write(tmp_path / "bad.wav", np.zeros(0, np.float32), 16000)
    elif case == "too_short":
        _write(tmp_path, "bad.wav", 0.05)
    elif case == "overlap":
        bad["words"] = _words((0.0, 0.9), (0.2, 0.5))
    elif case == "beyond_audio":
        bad["words"] = _words((0.1, 5.0))
    fns = {"wavlm_nan": ("w", _nan), "llm_nan": ("l", _bad_llm_nan), "wrong_dim": ("w", _narrow)}
    if case in fns:
        which, fn = fns[case]
        wavlm = Tampered(wavlm, 1, fn) if which == "w" else wavlm
        llm = Tampered(llm, 1, fn) if which == "l" else llm
    path = _manifest(tmp_path, [good, bad])
    with pytest.raises(prepare.ClipError, match=f"clip 'bad': .*{match}"):
        prepare.build_store(path, tmp_path / "s", wavlm, llm, progress=False)
    # A fresh cache, so the tampered teachers see the same batch again.
    manifest = prepare.build_store(path, tmp_path / "s", wavlm, llm, skip_bad=True,
                                   cache_dir=tmp_path / "c2", progress=False)  # fmt: skip
    assert manifest["num_clips"] == 1 and len(manifest["skipped"]) == 1
    assert manifest["skipped"][0]["clip_id"] == "bad"
    assert manifest["skipped"][0]["reason"] and open_store(tmp_path / "s")[0]["clip_id"] == "a"


def test_manifest_errors(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"clip_id": "a"}\nnot json\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        prepare.read_alignment_records(tmp_path / "m.jsonl")
    with pytest.raises(ValueError, match="record 0 has no clip_id"):
        prepare.parse_record({"audio": "x.wav"}, tmp_path, 0)
    _write(tmp_path, "x.wav", 0.5)
    with pytest.raises(prepare.ClipError, match="clip 'x': malformed word entry"):
        prepare.parse_record({"clip_id": "x", "audio": "x.wav", "words": [{"start": 0, "end": 1}]},
                             tmp_path, 0)  # fmt: skip
    with pytest.raises(prepare.ClipError, match="clip 'x': word 0 'a' ends before it starts"):
        rec = {"clip_id": "x", "audio": "x.wav", "words": [{"word": "a", "start": 0.4, "end": 0.2}]}
        prepare.parse_record(rec, tmp_path, 0)


def test_cli_check_and_usage(tmp_path, tiny, capsys):
    from amylm_jax import prepare as cli

    prepare.build_store(_manifest(tmp_path, _good_records(tmp_path)), tmp_path / "s", *tiny,
                        progress=False)  # fmt: skip
    assert cli.main([f"--check={tmp_path / 's'}"]) == 0
    assert json.loads(capsys.readouterr().out)["num_clips"] == 2
    assert cli.main([f"--check={tmp_path / 'missing'}"]) == 2
    assert "no feature store" in capsys.readouterr().err
    assert cli.main([f"--check={tmp_path / 's'}", f"--manifest={tmp_path}"]) == 2
    assert "exactly one of" in capsys.readouterr().err


def test_two_shards_joined_equal_one_process_and_resume_clip_by_clip(tmp_path):
    """``prepare`` in 2 processes (one block of the manifest each) then ``--join`` holds the
    records of a one-process build, in the same order. A shard whose process died part-way
    (its part store unfinished, only some clips cached) redoes only the missing clips."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from amylm_jax.data.demo import demo_corpus_dir
    from amylm_jax.data.extract import part_name

    root = Path(__file__).resolve().parents[1]
    manifest = demo_corpus_dir() / "alignments.jsonl"
    common = [f"--manifest={manifest}", f"--out={tmp_path / 'sharded'}", "--wavlm=tiny-random",
              "--llm=tiny-random"]  # fmt: skip
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}

    def shard(i):
        return subprocess.Popen(
            [sys.executable, "-m", "amylm_jax.prepare", *common, "--num_shards=2",
             f"--shard_index={i}"],
            cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    procs = [shard(0), shard(1)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outs]
    assert [json.loads(o)["num_clips"] for o, _ in outs] == [24, 24]

    # Shard 1 "died" after 10 of its clips: no part store, 14 clips missing from its cache.
    part = tmp_path / "sharded" / "parts" / part_name(1, 2)
    cache = part.with_name(part.name + ".work")
    import shutil

    shutil.rmtree(part)
    cached = sorted(cache.glob("*.npz"))
    assert len(cached) == 24
    for path in cached[10:]:
        path.unlink()
    kept = {path: path.stat().st_mtime_ns for path in cached[:10]}
    again = shard(1)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-2000:]
    assert all(path.stat().st_mtime_ns == t for path, t in kept.items())  # not redone
    assert len(list(cache.glob("*.npz"))) == 24

    from amylm_jax import prepare as cli

    assert cli.main(["--join", f"--out={tmp_path / 'sharded'}"]) == 0
    joined = open_store(tmp_path / "sharded")
    single_manifest = prepare.build_store(manifest, tmp_path / "single", progress=False)
    single = open_store(tmp_path / "single")
    assert len(joined) == len(single) == single_manifest["num_clips"] == 48
    assert joined.clip_ids == single.clip_ids
    assert joined.clip_groups("source") == single.clip_groups("source")
    assert joined.clip_groups("source")[0] == "wavs/demo_000.wav"
    for name in ("wavlm", "llm"):
        for a, b in zip(joined.feature_stats(name), single.feature_stats(name), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for i in range(len(single)):
        a, b = joined[i], single[i]
        assert a["clip_id"] == b["clip_id"] and a["transcript"] == b["transcript"]
        for key in ("audio", "wavlm", "llm"):
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{a['clip_id']} {key}")
    assert check_store(tmp_path / "sharded")["num_clips"] == 48


def test_join_refuses_missing_parts_and_env_gives_the_shard(tmp_path):
    from amylm_jax.data.extract import join_parts, resolve_shards, shard_from_env

    (tmp_path / "s" / "parts" / "00000-of-00002").mkdir(parents=True)
    with pytest.raises(ValueError, match="00001-of-00002.*rerun those shards"):
        join_parts(tmp_path / "s")
    with pytest.raises(FileNotFoundError, match="no part stores"):
        join_parts(tmp_path / "empty")
    assert shard_from_env({}) == (1, 0)
    array = {"SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5"}
    assert shard_from_env(array) == (4, 2)
    assert shard_from_env({"SLURM_NTASKS": "3", "SLURM_PROCID": "1"}) == (3, 1)
    tpu = {"TPU_WORKER_HOSTNAMES": "h0,h1,h2,h3", "TPU_WORKER_ID": "3"}
    assert shard_from_env(tpu) == (4, 3)
    # Flags win over the environment; one flag alone is refused.
    assert resolve_shards(None, None, tpu) == (4, 3)
    assert resolve_shards(2, 1, tpu) == (2, 1)
    with pytest.raises(ValueError, match="give both --num_shards and --shard_index"):
        resolve_shards(2, None, {})
