"""Demo corpus: format, exact word times, reproducibility; demo store build, cache and lock."""

import importlib.util
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from amylm_jax.data import demo
from amylm_jax.data import pipeline as P
from amylm_jax.data import store as S

CORPUS = demo.demo_corpus_dir()
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_demo_corpus.py"


def _entries():
    return [json.loads(line) for line in (CORPUS / "alignments.jsonl").read_text().splitlines()]


def test_corpus_format_and_exact_word_times():
    entries = _entries()
    assert 48 <= len(entries) <= 64
    assert len({e["clip_id"] for e in entries}) == len(entries)
    assert sum(f.stat().st_size for f in CORPUS.rglob("*")) < 5e6
    for e in entries:
        info = sf.info(CORPUS / e["audio"])
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        x, _ = sf.read(CORPUS / e["audio"], dtype="int16")
        assert 1.0 <= x.size / 16000 <= 4.0
        words = e["words"]
        assert [w["word"] for w in words] == [
            "".join(c for c in t if c.isalnum() or c == "'") for t in e["transcript"].split()
        ]
        edges = [0] + [round(t * 16000) for w in words for t in (w["start"], w["end"])] + [x.size]
        assert edges == sorted(edges)
        # word-by-word synthesis: everything between words is digital silence, every word
        # starts and ends on a sample above the trim threshold
        for a, b in zip(edges[0::2], edges[1::2], strict=True):
            assert not x[a:b].any(), (e["clip_id"], a, b)
        for w in words:
            seg = x[round(w["start"] * 16000) : round(w["end"] * 16000)]
            assert seg.size > 0 and seg[0] != 0 and seg[-1] != 0


def _load_script():
    spec = importlib.util.spec_from_file_location("make_demo_corpus", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_generator_reproduces_committed_clips(tmp_path):
    mod = _load_script()
    entries = _entries()
    assert len(entries) == len(mod.SENTENCES)
    for i in (0, 17):  # two clips, two voices; the whole set takes several seconds
        pcm, entry = mod.make_clip(i, mod.SENTENCES[i], tmp_path)
        assert entry == entries[i]
        committed, _ = sf.read(CORPUS / entry["audio"], dtype="int16")
        np.testing.assert_array_equal(pcm, committed)


def _fake_build_store(calls):
    """Stand-in for prepare.build_store: a 3-clip store, slow enough to overlap callers."""

    def build(manifest, out_dir, **kw):
        calls.append((Path(manifest), kw))
        rng = np.random.default_rng(0)
        with S.StoreWriter(
            out_dir, wavlm_dim=2, llm_dim=2, teachers={"wavlm": "t", "llm": "t"}
        ) as w:
            threading.Event().wait(0.2)
            for i in range(3):
                n = 24000 + 1920 * i
                t = S.frames_for_duration(n / 24000)
                w.add(
                    {
                        "clip_id": f"c{i}",
                        "audio": rng.integers(-99, 99, n).astype(np.int16),
                        "wavlm": np.zeros((t, 2), np.float16),
                        "llm": np.zeros((t, 2), np.float16),
                        "duration": n / 24000,
                        "transcript": "",
                    }
                )
        return {}

    return build


def test_demo_store_is_built_once_under_lock(tmp_path, monkeypatch):
    import amylm_jax.data.demo as demo

    calls = []
    monkeypatch.setattr(demo, "build_store", _fake_build_store(calls))
    monkeypatch.setenv("AMYLM_CACHE", str(tmp_path / "cache"))
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(demo.resolve_store("demo")))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = tmp_path / "cache" / f"demo_store_{demo.DEMO_STORE_VERSION}"
    assert results == [expected] * 3 and len(calls) == 1
    assert calls[0][0] == CORPUS / "alignments.jsonl"
    assert calls[0][1]["wavlm"] == calls[0][1]["llm"] == "tiny-random"
    assert S.open_store(expected).clip_ids == ["c0", "c1", "c2"]
    assert demo.build_demo_store(force=True) == expected and len(calls) == 2


def test_real_demo_store_feeds_the_pipeline(tmp_path):
    path = demo.build_demo_store(tmp_path / "demo_store")
    report = S.check_store(path)
    assert report["num_clips"] == len(_entries())
    assert report["teachers"] == {"wavlm": "tiny-random", "llm": "tiny-random"}
    cfg = P.DataConfig(store=str(path), batch_size=8)
    batch = next(P.make_train_iterator(cfg))
    assert batch["audio"].shape == (8, 24000) and np.abs(batch["audio"]).max() > 0.1
    assert batch["wavlm"].shape == (8, 13, report["wavlm_dim"])
    assert np.isfinite(batch["llm"]).all() and batch["mask"].all()
