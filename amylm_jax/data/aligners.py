"""Word aligners: give each word of a clip its start and end time, with or without a transcript.

Three back-ends, chosen with ``python -m amylm_jax.align --aligner=...``:

* ``pocketsphinx``: CMU PocketSphinx with the US-English acoustic model and dictionary that ship
  inside its wheel (no download, CPU only, fast). With a transcript it force-aligns the given
  words; without one it recognises speech with its bundled language model. Good for quick
  English corpora and for checks on a machine without models.
* ``ctc``: CTC forced alignment of a transcript with a ``transformers`` CTC model (wav2vec2
  style, character vocabulary with a word delimiter), the most exact choice for transcribed
  corpora. The Viterbi path over the model's log-probabilities is computed here
  (:func:`ctc_viterbi`); its mean log-probability per frame is the clip's alignment score.
* ``whisper``: speech recognition with word timestamps by a ``transformers`` Whisper model,
  for audio without transcripts (multilingual, more robust than PocketSphinx's recogniser).

Models are a local directory, a Hub name (for users with the Hub), or ``tiny-random``: a small
randomly initialised model built from a config, for tests and smoke runs (its words and times
mean nothing). Each aligner maps a batch of 16 kHz mono waves (and transcripts, or ``None``) to
:class:`Alignment` results; a clip that cannot be aligned gets a result with ``error`` set and is
skipped by the caller, never a guessed alignment.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from amylm_jax.data.teachers import TINY, _from_pretrained, _seeded, _torch_device

RATE = 16000
NO_TRANSCRIPT = "no transcript (ctc aligns transcripts; whisper or pocketsphinx recognise)"
ALIGNERS = ("pocketsphinx", "ctc", "whisper")


@dataclass
class Alignment:
    """One clip's words (``{"word", "start", "end"}``, seconds) or why there are none."""

    words: list[dict] = field(default_factory=list)
    score: float | None = None
    error: str | None = None


def transcript_words(text: str) -> list[str]:
    """The words of a transcript as written (whitespace-separated, punctuation kept)."""
    return [w for w in str(text).split() if w.strip()]


def _strip_punct(word: str) -> str:
    """A word without the punctuation around it (``"fox."`` -> ``"fox"``); inner marks stay."""
    return re.sub(r"^[^\w']+|[^\w']+$", "", word)


# ----------------------------------------------------------------------------- pocketsphinx
class PocketSphinxAligner:
    """PocketSphinx forced alignment (with a transcript) or recognition (without one).

    Word times come at its 10 ms frame rate. It gives no alignment score: its path scores
    depend slightly on the clips decoded before (state kept across utterances), so they are not
    a property of the clip; a transcript that does not fit fails the search instead. The beams
    are far wider than PocketSphinx's recognition defaults: with the defaults a forced
    alignment of clean synthetic speech often ends in "final result does not match the
    grammar", i.e. no alignment at all.
    """

    name = "pocketsphinx"
    frame_s = 0.01

    def __init__(self) -> None:
        try:
            from pocketsphinx import Decoder
        except ImportError as err:
            raise ImportError(
                "--aligner=pocketsphinx needs the pocketsphinx package (pip install pocketsphinx)"
            ) from err
        self._make = lambda: Decoder(
            samprate=RATE, bestpath=False, beam=1e-200, wbeam=1e-200, pbeam=1e-200,
            loglevel="FATAL",
        )  # fmt: skip
        self._aligner = self._make()  # forced alignment (its search is the transcript)
        self._recognizer: Any = None  # recognition with the bundled language model, on demand
        self._decoder = self._aligner

    def _decode(self, wave: np.ndarray) -> None:
        pcm = np.round(np.clip(wave, -1.0, 1.0) * 32767.0).astype(np.int16).tobytes()
        self._decoder.start_utt()
        self._decoder.process_raw(pcm, full_utt=True)
        self._decoder.end_utt()

    def _segments(self) -> list[tuple[str, float, float]]:
        out = []
        for seg in self._decoder.seg() or ():
            word = re.sub(r"\(\d+\)$", "", seg.word)  # alternate pronunciations: word(2)
            if word.startswith(("<", "[", "+")) or word == "(NULL)":
                continue  # silence, sentence marks and fillers
            out.append((word, round(seg.start_frame * self.frame_s, 6),
                        round((seg.end_frame + 1) * self.frame_s, 6)))  # fmt: skip
        return out

    def align_one(self, wave: np.ndarray, transcript: str | None) -> Alignment:
        if transcript is None:
            if self._recognizer is None:
                self._recognizer = self._make()
            self._decoder = self._recognizer
            self._decode(wave)
            words = [{"word": w, "start": s, "end": e} for w, s, e in self._segments()]
            return Alignment(words)
        self._decoder = self._aligner
        written = transcript_words(transcript)
        spoken = [_strip_punct(w).lower() for w in written]
        keep = [i for i, w in enumerate(spoken) if w]
        unknown = [spoken[i] for i in keep if self._decoder.lookup_word(spoken[i]) is None]
        if not keep:
            return Alignment(error="transcript has no words")
        if unknown:
            return Alignment(error=f"words not in the aligner's dictionary: {unknown[:5]}")
        try:
            self._decoder.set_align_text(" ".join(spoken[i] for i in keep))
        except RuntimeError as err:
            return Alignment(error=f"cannot align this transcript ({err})")
        self._decode(wave)
        segs = self._segments()
        if self._decoder.hyp() is None or len(segs) != len(keep):
            return Alignment(error="transcript does not align with the audio")
        words = [
            {"word": written[i], "start": s, "end": e}
            for i, (_, s, e) in zip(keep, segs, strict=True)
        ]
        return Alignment(words)

    def align(self, waves: Sequence[np.ndarray], transcripts: Sequence[str | None]):
        return [self.align_one(w, t) for w, t in zip(waves, transcripts, strict=True)]


# ------------------------------------------------------------------------------------- CTC
def ctc_viterbi(log_probs: np.ndarray, targets: Sequence[int], blank: int = 0):
    """The most likely CTC path of ``targets`` through ``log_probs`` ``[T, V]``.

    Returns ``(frames, score)``: ``frames[j]`` is the ``[first, last]`` frame of target ``j``
    on the best path and ``score`` its total log-probability, or ``(None, -inf)`` when the
    targets cannot fit in ``T`` frames (each target needs a frame, repeated targets a blank
    between them). Exact dynamic programme over the ``2L + 1`` blank-interleaved states.
    """
    lp = np.asarray(log_probs, np.float64)
    n_frames = lp.shape[0]
    tokens = np.asarray(list(targets), np.int64)
    n_states = 2 * len(tokens) + 1
    ext = np.full(n_states, blank, np.int64)
    ext[1::2] = tokens
    # A state may skip the blank before it when it is a token different from the one before.
    skip = np.zeros(n_states, bool)
    skip[3::2] = tokens[1:] != tokens[:-1]
    if len(tokens) == 0 or n_frames == 0:
        return None, -math.inf
    alpha = np.full(n_states, -np.inf)
    alpha[0] = lp[0, ext[0]]
    alpha[1] = lp[0, ext[1]]
    back = np.zeros((n_frames, n_states), np.int8)  # 0 stay, 1 from s-1, 2 from s-2
    for t in range(1, n_frames):
        stay = alpha
        step = np.concatenate([[-np.inf], alpha[:-1]])
        jump = np.where(skip, np.concatenate([[-np.inf, -np.inf], alpha[:-2]]), -np.inf)
        choice = np.stack([stay, step, jump])
        best = np.argmax(choice, axis=0)
        back[t] = best
        alpha = choice[best, np.arange(n_states)] + lp[t, ext]
    end = n_states - 1 if alpha[-1] >= alpha[-2] else n_states - 2
    score = float(alpha[end])
    if not math.isfinite(score):
        return None, -math.inf
    frames = np.zeros((len(tokens), 2), np.int64)
    seen = np.zeros(len(tokens), bool)
    state = end
    for t in range(n_frames - 1, -1, -1):
        if state % 2 == 1:
            j = state // 2
            frames[j, 0] = t
            if not seen[j]:
                frames[j, 1], seen[j] = t, True
        state -= int(back[t, state])
    return frames, score


class CTCAligner:
    """Forced alignment of transcripts with a ``transformers`` CTC model (wav2vec2 style).

    The transcript is spelled in the model's character vocabulary (letters in the vocabulary's
    case, word delimiter between words; other characters dropped); a word with no character the
    model knows cannot be placed and fails the clip. A word spans the frames of its characters
    on the Viterbi path. Score: mean log-probability per frame of that path.
    """

    name = "ctc"

    def __init__(self, model: str, device: str = "cpu") -> None:
        self.device = _torch_device(device)
        if model == TINY:
            self.model, self.tokenizer = _seeded(_tiny_ctc)
        else:
            from transformers import AutoModelForCTC, AutoTokenizer  # heavy (PyTorch)

            self.tokenizer = _from_pretrained(AutoTokenizer, model, "CTC", "model")
            self.model = _from_pretrained(AutoModelForCTC, model, "CTC", "model")
        self.model = self.model.to(self.device).eval()
        self.vocab = self.tokenizer.get_vocab()
        self.blank = int(self.tokenizer.pad_token_id)
        self.delimiter = getattr(self.tokenizer, "word_delimiter_token", None) or "|"
        letters = [t for t in self.vocab if len(t) == 1 and t.isalpha()]
        self.upper = bool(letters) and sum(t.isupper() for t in letters) > len(letters) / 2
        self.frame_s = float(np.prod(self.model.config.conv_stride)) / RATE

    def spell(self, word: str) -> list[int]:
        text = word.upper() if self.upper else word.lower()
        return [self.vocab[c] for c in text if c in self.vocab and c != self.delimiter]

    def _log_probs(self, waves: Sequence[np.ndarray]) -> list[np.ndarray]:
        import torch  # heavy (PyTorch): only when this path runs

        longest = max(len(w) for w in waves)
        batch = np.zeros((len(waves), longest), np.float32)
        mask = np.zeros((len(waves), longest), np.int64)
        for i, w in enumerate(waves):
            x = np.asarray(w, np.float32)
            batch[i, : len(x)] = (x - x.mean()) / math.sqrt(x.var() + 1e-7)  # per-clip norm
            mask[i, : len(x)] = 1
        with torch.inference_mode():
            logits = self.model(
                torch.from_numpy(batch).to(self.device),
                attention_mask=torch.from_numpy(mask).to(self.device),
            ).logits
            lp = torch.log_softmax(logits.float(), dim=-1).cpu().numpy()
            lengths = self.model._get_feat_extract_output_lengths(  # noqa: SLF001
                torch.tensor([len(w) for w in waves])
            ).tolist()
        return [lp[i, : int(n)] for i, n in enumerate(lengths)]

    def align(self, waves: Sequence[np.ndarray], transcripts: Sequence[str | None]):
        results = []
        for lp, text in zip(self._log_probs(waves), transcripts, strict=True):
            if text is None:
                results.append(Alignment(error=NO_TRANSCRIPT))
                continue
            written = transcript_words(text)
            spelled = [self.spell(w) for w in written]
            if not written:
                results.append(Alignment(error="transcript has no words"))
                continue
            if not all(spelled):
                bad = [w for w, s in zip(written, spelled, strict=True) if not s]
                reason = f"words with no character the model knows: {bad[:5]}"
                results.append(Alignment(error=reason))
                continue
            targets, owner = [], []
            delim = self.vocab.get(self.delimiter)
            for k, ids in enumerate(spelled):
                if k and delim is not None:
                    targets.append(delim)
                    owner.append(-1)
                targets += ids
                owner += [k] * len(ids)
            frames, total = ctc_viterbi(lp, targets, self.blank)
            if frames is None:
                results.append(Alignment(
                    error=f"transcript does not fit the audio ({len(targets)} symbols, "
                          f"{lp.shape[0]} frames)"))  # fmt: skip
                continue
            owner_arr = np.asarray(owner)
            words = []
            for k, w in enumerate(written):
                rows = frames[owner_arr == k]
                first, last = float(rows[:, 0].min()), float(rows[:, 1].max() + 1)
                words.append({"word": w, "start": round(first * self.frame_s, 6),
                              "end": round(last * self.frame_s, 6)})  # fmt: skip
            results.append(Alignment(words, float(total) / max(lp.shape[0], 1)))
        return results


def _tiny_ctc() -> tuple[Any, Any]:
    """A 2-layer, 32-wide wav2vec2 CTC model over a letter vocabulary (50 Hz frames)."""
    import json
    import tempfile

    from transformers import Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2ForCTC

    symbols = ["<pad>", "<s>", "</s>", "<unk>", "|", "'"] + [chr(c) for c in range(65, 91)]
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/vocab.json"
        with open(path, "w") as f:
            json.dump({s: i for i, s in enumerate(symbols)}, f)
        tokenizer = Wav2Vec2CTCTokenizer(path, word_delimiter_token="|")
    config = Wav2Vec2Config(
        vocab_size=len(symbols), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, conv_dim=(32,) * 7, num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4, feat_extract_norm="layer", do_stable_layer_norm=True,
        apply_spec_augment=False, layerdrop=0.0, pad_token_id=0,
    )  # fmt: skip
    return Wav2Vec2ForCTC(config), tokenizer


# --------------------------------------------------------------------------------- Whisper
class WhisperAligner:
    """Speech recognition with word timestamps by a ``transformers`` Whisper model.

    Runs the ``automatic-speech-recognition`` pipeline with ``return_timestamps="word"``
    (word times from the model's cross-attention alignment heads, on a 20 ms grid) and
    ``chunk_length_s=30``, so files longer than Whisper's 30 s window are transcribed in
    overlapping chunks. It recognises; it does not align given transcripts. No score.
    """

    name = "whisper"

    def __init__(self, model: str, device: str = "cpu", language: str | None = None) -> None:
        from transformers import pipeline  # heavy (PyTorch)

        dev = _torch_device(device)
        if model == TINY:
            net, tokenizer, features = _seeded(_tiny_whisper)
        else:
            from transformers import AutoFeatureExtractor, AutoModelForSpeechSeq2Seq, AutoTokenizer

            tokenizer = _from_pretrained(AutoTokenizer, model, "Whisper", "model")
            features = _from_pretrained(AutoFeatureExtractor, model, "Whisper", "model")
            net = _from_pretrained(AutoModelForSpeechSeq2Seq, model, "Whisper", "model")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token  # batching pads with it
        self.language = language
        self.pipe = pipeline(
            "automatic-speech-recognition", model=net.eval(), tokenizer=tokenizer,
            feature_extractor=features, device=dev, chunk_length_s=30, ignore_warning=True,
        )  # fmt: skip

    def align(self, waves: Sequence[np.ndarray], transcripts: Sequence[str | None]):
        if any(t is not None for t in transcripts):
            raise ValueError("--aligner=whisper recognises speech and does not align given "
                             "transcripts: pass --transcripts=none, or align them with ctc or "
                             "pocketsphinx")  # fmt: skip
        import transformers  # heavy (PyTorch)

        kwargs = {"language": self.language, "task": "transcribe"} if self.language else {}
        quiet = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()  # per-chunk generation notices
        try:
            outputs = self.pipe(
                [{"raw": np.asarray(w, np.float32), "sampling_rate": RATE} for w in waves],
                return_timestamps="word", batch_size=max(len(waves), 1),
                generate_kwargs=kwargs,
            )  # fmt: skip
        finally:
            transformers.logging.set_verbosity(quiet)
        results = []
        for out in outputs:
            words = []
            for chunk in out.get("chunks") or ():
                text = str(chunk["text"]).strip()
                start, end = chunk["timestamp"]
                if not text or start is None:
                    continue
                end = start if end is None else end  # no end predicted: a zero-length word
                words.append({"word": text, "start": float(start), "end": float(end)})
            results.append(Alignment(words))
        return results


def _tiny_whisper() -> tuple[Any, Any, Any]:
    """A 1+1-layer, 32-wide Whisper over a byte-level vocabulary with Whisper's special and
    timestamp tokens, and the generation settings word timestamps need."""
    from tokenizers import pre_tokenizers
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizer,
    )

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>",
                "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>",
                "<|notimestamps|>"] + [f"<|{i * 0.02:.2f}|>" for i in range(1501)]  # fmt: skip
    for token in specials:
        vocab[token] = len(vocab)
    tokenizer = WhisperTokenizer(vocab=vocab, merges=[])
    tokenizer.add_special_tokens({"additional_special_tokens": specials[1:]})
    tokenizer.pad_token = "<|endoftext|>"
    end, start = vocab["<|endoftext|>"], vocab["<|startoftranscript|>"]
    config = WhisperConfig(
        vocab_size=len(vocab), d_model=32, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
        decoder_ffn_dim=64, num_mel_bins=80, max_source_positions=1500,
        max_target_positions=64, decoder_start_token_id=start, eos_token_id=end,
        pad_token_id=end, bos_token_id=end,
    )  # fmt: skip
    model = WhisperForConditionalGeneration(config)
    gen = model.generation_config
    gen.decoder_start_token_id, gen.eos_token_id, gen.pad_token_id = start, end, end
    gen.no_timestamps_token_id = vocab["<|notimestamps|>"]
    gen.lang_to_id = {"<|en|>": vocab["<|en|>"]}
    gen.task_to_id = {"transcribe": vocab["<|transcribe|>"], "translate": vocab["<|translate|>"]}
    gen.is_multilingual = True
    gen.alignment_heads = [[0, 0], [0, 1]]  # the cross-attention heads word times come from
    gen.max_initial_timestamp_index = 50
    gen.begin_suppress_tokens, gen.suppress_tokens = [end], []
    gen.max_new_tokens = 24
    return model, tokenizer, WhisperFeatureExtractor(feature_size=80)


# --------------------------------------------------------------------------------- loading
def load_aligner(
    name: str, model: str | None = None, device: str = "cpu", language: str | None = None
) -> Any:
    """An aligner by back-end name; ``model`` is a local path, Hub name or ``tiny-random``;
    ``language`` (e.g. ``en``) fixes Whisper's language instead of detecting it."""
    if name == "pocketsphinx":
        if model not in (None, ""):
            raise ValueError("--aligner=pocketsphinx uses its bundled English model; drop --model")
        return PocketSphinxAligner()
    if name == "ctc":
        return CTCAligner(model or DEFAULT_CTC, device)
    if name == "whisper":
        return WhisperAligner(model or DEFAULT_WHISPER, device, language)
    raise ValueError(f"aligner {name!r}: choose one of {', '.join(ALIGNERS)}")


DEFAULT_CTC = "facebook/wav2vec2-base-960h"
DEFAULT_WHISPER = "openai/whisper-small"
