"""Tests of importing the original HF dataset layout: round trip, D1 repair count, bad rows."""

import io
import json

import datasets
import numpy as np
import pytest
import soundfile as sf

from amylm_jax.data import align, audio, importer
from amylm_jax.data.extract import ClipError
from amylm_jax.data.store import check_store, open_store

DW, DL = 6, 4
LENGTHS = (16000, 24000, 11200)  # one extraction batch: all padded to the longest (D1)


def _times(n_tok, seconds):
    """Shared-window style times: pairs of tokens per word window, trailing window ends at -1."""
    edges = np.linspace(0.0, seconds * 0.8, n_tok // 2 + 1)
    times = [[edges[k // 2], edges[k // 2 + 1]] for k in range(n_tok)]
    times[-1] = times[-2] = [edges[-2], -1.0]
    return times


def _rows(rng):
    padded = align.wavlm_frame_count(max(LENGTHS))
    rows = []
    for i, n in enumerate(LENGTHS):
        n_tok = 6 + 2 * i
        rows.append(
            {
                "audio": {"array": (0.1 * rng.normal(size=n)).astype(np.float32),
                          "sampling_rate": 16000},
                "wavlm_feat": rng.normal(size=(padded, DW)).astype(np.float16).tolist(),
                "llm_feat": rng.normal(size=(n_tok, DL)).astype(np.float16).tolist(),
                "llm_times": _times(n_tok, n / 16000),
                "segment_id": f"seg{i}",
            }
        )  # fmt: skip
    return rows


def _save(tmp_path, rows, name="hf"):
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    datasets.Dataset.from_dict(cols).save_to_disk(str(tmp_path / name))
    return tmp_path / name


@pytest.mark.parametrize("repair", [True, False])
def test_round_trip_and_d1_repair_count(tmp_path, rng, repair):
    rows = _rows(rng)
    manifest = importer.import_hf_dataset(
        _save(tmp_path, rows), tmp_path / "store", repair_d1=repair, progress=False
    )
    assert manifest["num_clips"] == 3 and manifest["d1_padded"] == 2
    assert manifest["d1_repaired"] == (2 if repair else 0)
    assert manifest["wavlm_dim"] == DW and manifest["llm_dim"] == DL
    assert check_store(tmp_path / "store")["num_clips"] == 3
    store = open_store(tmp_path / "store")
    for i, row in enumerate(rows):
        rec = store[i]
        assert rec["clip_id"] == f"seg{i}"
        wave24 = audio.resample(row["audio"]["array"], 16000, 24000)
        np.testing.assert_array_equal(rec["audio"], audio.to_int16(wave24))
        duration = len(wave24) / 24000
        t_full = align.full_frame_count(duration)
        wavlm = np.asarray(row["wavlm_feat"], np.float32)
        if repair:
            wavlm = wavlm[: align.wavlm_frame_count(LENGTHS[i])]
        want_w = align.wavlm_to_frames(wavlm, t_full).astype(np.float16)
        want_l = align.llm_to_frames(
            np.asarray(row["llm_feat"], np.float32), np.asarray(row["llm_times"]), duration
        ).astype(np.float16)
        np.testing.assert_array_equal(rec["wavlm"], want_w)
        np.testing.assert_array_equal(rec["llm"], want_l)


def test_audio_feature_column_and_default_ids(tmp_path, rng):
    rows = _rows(rng)[:2]
    for r in rows:
        buf = io.BytesIO()
        sf.write(buf, r["audio"]["array"], 16000, format="WAV", subtype="FLOAT")
        r["audio"] = {"bytes": buf.getvalue(), "path": None}
        del r["segment_id"]
    ds = datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in rows[0]})
    ds = ds.cast_column("audio", datasets.Audio())  # decoding on, as in the original
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "hf"))
    importer.import_hf_dataset(tmp_path / "hf", tmp_path / "s", progress=False)
    store = open_store(tmp_path / "s")
    assert [store[i]["clip_id"] for i in range(2)] == ["000000", "000001"]
    assert store[1]["audio"].shape == (36000,)


def test_missing_columns_named(tmp_path, rng):
    rows = _rows(rng)
    for r in rows:
        del r["llm_times"]
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['llm_times'\]"):
        importer.import_hf_dataset(_save(tmp_path, rows), tmp_path / "s", progress=False)


def _corrupt(case, rows, rng):
    row = rows[1]
    if case == "nan":
        feats = np.asarray(row["llm_feat"])
        feats[0, 0] = np.nan
        row["llm_feat"] = feats.tolist()
    elif case == "dims":
        row["wavlm_feat"] = rng.normal(size=(74, DW + 1)).tolist()
    elif case == "order":
        row["llm_times"][3], row["llm_times"][4] = row["llm_times"][4], row["llm_times"][3]
    elif case == "zeros":
        row["llm_feat"] = np.zeros((len(row["llm_times"]), DL)).tolist()
    elif case == "short_wavlm":
        row["wavlm_feat"] = row["wavlm_feat"][:20]
    elif case == "empty_audio":
        row["audio"] = {"array": np.zeros(0, np.float32), "sampling_rate": 16000}
    elif case == "token_count":
        row["llm_times"] = row["llm_times"][:-1]


@pytest.mark.parametrize(
    "case,match",
    [
        ("nan", "llm_feat contains NaN"),
        ("dims", r"wavlm_feat has shape \(74, 7\), expected \[n, 6\]"),
        ("order", "llm_times: token times out of order"),
        ("zeros", "llm_feat is all zeros"),
        ("short_wavlm", "wavlm_feat has 20 frames but the audio implies 74"),
        ("empty_audio", "audio column: audio is empty"),
        ("token_count", "llm_times: LLM features have 8 tokens but times have 7"),
    ],
)
def test_bad_rows_error_or_counted_skip(tmp_path, rng, case, match):
    rows = _rows(rng)
    _corrupt(case, rows, rng)
    path = _save(tmp_path, rows)
    with pytest.raises(ClipError, match=f"clip 'seg1': {match}"):
        importer.import_hf_dataset(path, tmp_path / "s", progress=False)
    manifest = importer.import_hf_dataset(path, tmp_path / "s", skip_bad=True, progress=False)
    assert manifest["num_clips"] == 2
    assert [s["clip_id"] for s in manifest["skipped"]] == ["seg1"]
    if case == "order":
        fixed = importer.import_hf_dataset(path, tmp_path / "r", repair_times=True, progress=False)
        assert fixed["num_clips"] == 3 and fixed["times_repaired"] is True


def test_cli_import_mode(tmp_path, rng, capsys):
    from amylm_jax import prepare as cli

    path = _save(tmp_path, _rows(rng))
    argv = [f"--import_hf={path}", f"--out={tmp_path / 's'}", "--repair_d1"]
    assert cli.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num_clips"] == 3 and report["d1_repaired"] == 2
    assert cli.main(argv) == 2
    assert "exists" in capsys.readouterr().err


def test_d1_is_repaired_by_default_and_kept_on_request(tmp_path, rng, capsys):
    from amylm_jax import prepare as cli

    path = _save(tmp_path, _rows(rng))
    manifest = importer.import_hf_dataset(path, tmp_path / "default", progress=False)
    assert manifest["d1_padded"] == 2 and manifest["d1_repaired"] == 2
    assert cli.main([f"--import_hf={path}", f"--out={tmp_path / 'kept'}", "--norepair_d1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["d1_padded"] == 2 and report["d1_repaired"] == 0


def test_row_groups_name_the_source_recording_of_a_segment():
    """GigaSpeech segment ids name their recording; a speaker column is kept when present."""
    assert importer.row_groups({}, "POD0000000001_S0000008") == {"source": "POD0000000001"}
    assert importer.row_groups({"speaker": "s1"}, "seg0") == {"speaker": "s1"}
    assert importer.row_groups({"speaker": ""}, "AUD0000000003_S0000120") == {
        "source": "AUD0000000003"
    }
