"""Audio device listing through sounddevice (PortAudio), imported lazily."""

from __future__ import annotations

from typing import Any

from edgevoice.errors import EdgevoiceError, MissingDependencyError


def import_sounddevice():
    try:
        import sounddevice
    except ImportError as exc:
        raise MissingDependencyError.for_module("sounddevice", "audio", "audio devices") from exc
    except OSError as exc:  # the module is there but libportaudio is not
        raise EdgevoiceError(
            f"sounddevice cannot load PortAudio ({exc}); install it: sudo apt install libportaudio2"
        ) from exc
    return sounddevice


def list_devices() -> list[dict[str, Any]]:
    """Every input/output device PortAudio sees, with the default ones marked."""
    sd = import_sounddevice()
    default_in, default_out = sd.default.device
    devices = []
    for index, info in enumerate(sd.query_devices()):
        devices.append({
            "index": index,
            "name": info["name"],
            "hostapi": sd.query_hostapis(info["hostapi"])["name"],
            "max_input_channels": info["max_input_channels"],
            "max_output_channels": info["max_output_channels"],
            "default_samplerate": info["default_samplerate"],
            "default_input": index == default_in,
            "default_output": index == default_out,
        })
    return devices
