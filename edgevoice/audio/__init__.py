"""Audio: rings, device and file I/O, clocks, resampling, echo cancellation, wav files.

Depends only on numpy (plus soundfile, soxr, sounddevice and pywebrtc-audio where their features
are used, imported lazily), so the runtime uses it without torch. Listening order:
mic -> resample to the model rate -> echo cancellation against what the speaker played -> VAD.
"""
