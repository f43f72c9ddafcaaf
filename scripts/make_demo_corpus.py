"""Generate the bundled demo corpus: short espeak-ng utterances with exact word times.

Why synthetic speech: the demo corpus must be real speech-like audio that anyone can
regenerate, with a licence-free text and alignments that need no ASR model. Each word is spoken
to its own wav by espeak-ng, its leading and trailing silence are trimmed, and the words are
joined with short fixed silences, so every word's start and end time is known to the sample.
Audio is stored like GigaSpeech (16 kHz mono 16-bit WAV) next to `alignments.jsonl` in the
alignment manifest format of docs/CONTRACTS.md.

The output is deterministic for a given espeak-ng build (soxr resampling, fixed sentences,
voices, rates and gaps). Usage, from the repository root:

    python scripts/make_demo_corpus.py [--out amylm_jax/data/demo_corpus]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

RATE = 16000
LEAD_S, TAIL_S = 0.15, 0.15
GAPS_S = (0.04, 0.07, 0.10, 0.13)
THRESHOLD = 0.01  # trim level for a word's own silence, fraction of full scale
PEAK = 0.7
VOICES = ("en-us", "en-gb", "en-gb-x-rp", "en-us+f3", "en-gb-scotland", "en-us+m3", "en-029")
SPEEDS = (190, 170, 215, 180)  # espeak-ng words per minute
PITCHES = (50, 35, 65)

SENTENCES = (
    "The quick brown fox jumps.",
    "She sells sea shells.",
    "Please call me back.",
    "The train leaves at seven.",
    "We walked along the river.",
    "Bright stars filled the sky.",
    "My brother plays piano.",
    "Turn left here.",
    "The soup is hot.",
    "Birds sing in spring.",
    "Open the window.",
    "This coffee tastes good.",
    "They built a boat.",
    "Rain fell on the roof.",
    "Where are the keys?",
    "The children ran outside.",
    "Wind moved the grass.",
    "He reads every day.",
    "Our garden needs water.",
    "The museum opens at nine.",
    "Listen to the music.",
    "Clouds drifted over hills.",
    "I forgot my umbrella.",
    "The cat slept.",
    "Dinner is ready.",
    "Write your name.",
    "The road was empty.",
    "Fresh bread smells wonderful.",
    "Nobody answered.",
    "The lamp went dark.",
    "We should plant trees.",
    "Her voice was clear.",
    "The market is busy.",
    "Snow covered the path.",
    "Bring a jacket.",
    "The dog chased a ball.",
    "Time moves quickly.",
    "He painted the fence blue.",
    "The library is quiet.",
    "Keep the door closed.",
    "A boat crossed the lake.",
    "The bell rang at noon.",
    "Good ideas take time.",
    "She found a coin.",
    "The engine roared.",
    "Thank you for your help.",
    "Leaves turn golden.",
    "The meeting ended early.",
)


def _words(sentence: str) -> list[str]:
    return [w for w in (re.sub(r"[^\w']", "", t) for t in sentence.split()) if w]


def _speak(word: str, voice: str, speed: int, pitch: int, tmp: Path) -> np.ndarray:
    """One word as float32 16 kHz samples with its own leading/trailing silence trimmed."""
    wav = tmp / "word.wav"
    cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(wav), word]
    subprocess.run(cmd, check=True, capture_output=True)
    x, sr = sf.read(wav, dtype="float32", always_2d=False)
    loud = np.flatnonzero(np.abs(x) > THRESHOLD)
    if loud.size == 0:
        raise RuntimeError(f"espeak-ng produced silence for {word!r} ({voice})")
    x = x[loud[0] : loud[-1] + 1]
    return soxr.resample(x, sr, RATE, quality="HQ").astype(np.float32)


def make_clip(index: int, sentence: str, tmp: Path) -> tuple[np.ndarray, dict]:
    """Synthesise one utterance word by word; returns int16 samples and its manifest entry."""
    voice = VOICES[index % len(VOICES)]
    speed = SPEEDS[(index // len(VOICES)) % len(SPEEDS)]
    pitch = PITCHES[index % len(PITCHES)]
    pieces = [np.zeros(round(LEAD_S * RATE), np.float32)]
    cursor = pieces[0].size
    words = []
    for w, word in enumerate(_words(sentence)):
        if w:
            gap = np.zeros(round(GAPS_S[(index + w) % len(GAPS_S)] * RATE), np.float32)
            pieces.append(gap)
            cursor += gap.size
        x = _speak(word, voice, speed, pitch, tmp)
        words.append({"word": word, "start": cursor / RATE, "end": (cursor + x.size) / RATE})
        pieces.append(x)
        cursor += x.size
    pieces.append(np.zeros(round(TAIL_S * RATE), np.float32))
    audio = np.concatenate(pieces)
    audio *= PEAK / np.max(np.abs(audio))
    pcm = np.round(audio * 32767).astype(np.int16)
    clip_id = f"demo_{index:03d}"
    entry = {
        "clip_id": clip_id,
        "audio": f"wavs/{clip_id}.wav",
        "words": [{**w, "start": round(w["start"], 6), "end": round(w["end"], 6)} for w in words],
        "transcript": sentence,
        "voice": voice,
        "speed_wpm": speed,
        "pitch": pitch,
    }
    return pcm, entry


def main(argv: list[str] | None = None) -> None:
    """Write `wavs/*.wav` and `alignments.jsonl` under `--out` (replacing earlier files)."""
    default = Path(__file__).resolve().parents[1] / "amylm_jax" / "data" / "demo_corpus"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=default)
    args = parser.parse_args(argv)
    wav_dir = args.out / "wavs"
    wav_dir.mkdir(parents=True, exist_ok=True)
    for old in wav_dir.glob("*.wav"):
        old.unlink()
    lines = []
    total = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for i, sentence in enumerate(SENTENCES):
            pcm, entry = make_clip(i, sentence, Path(tmp))
            sf.write(args.out / entry["audio"], pcm, RATE, subtype="PCM_16")
            lines.append(json.dumps(entry, ensure_ascii=False))
            total += pcm.size / RATE
    (args.out / "alignments.jsonl").write_text("\n".join(lines) + "\n")
    print(f"wrote {len(lines)} clips, {total:.1f} s of audio, to {args.out}")


if __name__ == "__main__":
    main()
