"""The PortAudio bindings behind ``DuplexDeviceIO``: sounddevice (the default) and PyAudio.

Each subclass only lists devices, opens its stream and forwards its callback to the shared
``DuplexDeviceIO._exchange`` (``edgevoice.audio.device_io``), so both behave the same.
"""

from __future__ import annotations

import numpy as np

from edgevoice.audio.device_io import MAX_CALLBACK_FRAMES, DeviceConfig, DeviceInfo, DuplexDeviceIO
from edgevoice.errors import EdgevoiceError, MissingDependencyError


class SoundDeviceIO(DuplexDeviceIO):
    """Duplex sound-card I/O through sounddevice (PortAudio): one ``sounddevice.Stream``."""

    backend = "sounddevice"

    def __init__(self, config: DeviceConfig = DeviceConfig(), *, mic_rate: int = 16000, speaker_rate: int = 22050):
        from edgevoice.audio.devices import import_sounddevice

        self._sd = import_sounddevice()
        super().__init__(config, mic_rate=mic_rate, speaker_rate=speaker_rate)

    def _list_devices(self) -> list[DeviceInfo]:
        return [DeviceInfo(index, info["name"], int(info["max_input_channels"]), int(info["max_output_channels"]),
                           float(info["default_samplerate"]))
                for index, info in enumerate(self._sd.query_devices())]

    def _default_devices(self) -> tuple[int, int]:
        default_in, default_out = self._sd.default.device
        return int(default_in), int(default_out)

    def _check_settings(self) -> None:
        checks = (("input", self.input_device, self.config.input_channels, self._sd.check_input_settings),
                  ("output", self.output_device, self.config.output_channels, self._sd.check_output_settings))
        for direction, device, channels, check in checks:
            try:
                check(device=device.index, channels=channels, dtype="float32", samplerate=self.device_rate)
            except Exception as exc:  # PortAudioError or ValueError, depending on what PortAudio dislikes
                raise refused(direction, device, channels, self.device_rate, exc) from exc

    def _open_stream(self):
        sd = self._sd
        try:
            stream = sd.Stream(
                samplerate=self.device_rate, blocksize=self.config.block_frames, dtype="float32", latency="low",
                device=(self.input_device.index, self.output_device.index),
                channels=(self.config.input_channels, self.config.output_channels),
                callback=self._callback, finished_callback=self._on_finished,
            )
            stream.start()
        except sd.PortAudioError as exc:
            raise EdgevoiceError(f"cannot open the audio device ({exc}); check `edgevoice devices`") from exc
        return stream

    def _callback(self, indata, outdata, frames, time, status) -> None:
        if status:
            self._count_flags(status.input_overflow, status.input_underflow, status.output_underflow,
                              status.output_overflow)
        self._exchange(indata.reshape(-1), outdata, frames)  # (frames, channels) C-order: reshape is a view

    def _on_finished(self) -> None:
        self._finished = True

    def _stream_active(self) -> bool:
        return self._stream is not None and bool(self._stream.active)

    def _close_stream(self) -> None:
        self._stream.abort(ignore_errors=True)  # abort, not stop: do not wait for queued audio to play
        self._stream.close(ignore_errors=True)


def import_pyaudio():
    try:
        import pyaudio
    except ImportError as exc:
        raise MissingDependencyError(
            "the PyAudio backend needs the Python package 'pyaudio'; install PortAudio's headers and build it: "
            "sudo apt install portaudio19-dev && pip install pyaudio (or use the sounddevice backend)"
        ) from exc
    return pyaudio


class PyAudioIO(DuplexDeviceIO):
    """Duplex sound-card I/O through PyAudio (also PortAudio), for apps that already use it.

    PyAudio's callback must return the output as ``bytes``, so each callback makes one copy of
    the output block there — unavoidable with this API; prefer ``SoundDeviceIO``.
    """

    backend = "pyaudio"

    def __init__(self, config: DeviceConfig = DeviceConfig(), *, mic_rate: int = 16000, speaker_rate: int = 22050):
        if config.input_channels != config.output_channels:
            raise EdgevoiceError(
                f"PyAudio opens one channel count for both directions; got input_channels="
                f"{config.input_channels}, output_channels={config.output_channels} — make them equal")
        self._pyaudio = import_pyaudio()
        self._pa = self._pyaudio.PyAudio()
        try:
            super().__init__(config, mic_rate=mic_rate, speaker_rate=speaker_rate)
        except BaseException:
            self._pa.terminate()  # release PortAudio: the object is not usable after a config error
            raise
        self._pa_out = np.zeros(MAX_CALLBACK_FRAMES * config.output_channels, dtype=np.float32)

    def _list_devices(self) -> list[DeviceInfo]:
        infos = [self._pa.get_device_info_by_index(i) for i in range(self._pa.get_device_count())]
        return [DeviceInfo(int(info["index"]), info["name"], int(info["maxInputChannels"]),
                           int(info["maxOutputChannels"]), float(info["defaultSampleRate"])) for info in infos]

    def _default_devices(self) -> tuple[int, int]:
        defaults = []
        for query in (self._pa.get_default_input_device_info, self._pa.get_default_output_device_info):
            try:
                defaults.append(int(query()["index"]))
            except OSError:  # PyAudio's way of saying "there is no default device"
                defaults.append(-1)
        return defaults[0], defaults[1]

    def _check_settings(self) -> None:
        pa = self._pyaudio
        for direction, device, channels in (("input", self.input_device, self.config.input_channels),
                                            ("output", self.output_device, self.config.output_channels)):
            try:
                self._pa.is_format_supported(self.device_rate, **{
                    f"{direction}_device": device.index, f"{direction}_channels": channels,
                    f"{direction}_format": pa.paFloat32})
            except ValueError as exc:
                raise refused(direction, device, channels, self.device_rate, exc) from exc

    def _open_stream(self):
        pa = self._pyaudio
        if self._pa is None:  # terminated by a previous stop()
            self._pa = pa.PyAudio()
        try:
            return self._pa.open(
                format=pa.paFloat32, channels=self.config.input_channels, rate=self.device_rate,
                input=True, output=True, input_device_index=self.input_device.index,
                output_device_index=self.output_device.index,
                frames_per_buffer=self.config.block_frames or pa.paFramesPerBufferUnspecified,
                stream_callback=self._callback, start=True,
            )
        except (OSError, ValueError) as exc:
            raise EdgevoiceError(f"cannot open the audio device with PyAudio ({exc}); check `edgevoice devices`") from exc

    def _callback(self, in_data, frame_count, time_info, status):
        pa = self._pyaudio
        if status:
            self._count_flags(status & pa.paInputOverflow, status & pa.paInputUnderflow,
                              status & pa.paOutputUnderflow, status & pa.paOutputOverflow)
        channels = self.config.output_channels
        indata = np.frombuffer(in_data, dtype=np.float32)  # a view on PyAudio's bytes
        outdata = self._pa_out[: frame_count * channels].reshape(frame_count, channels)
        self._exchange(indata, outdata, frame_count)
        return outdata.tobytes(), pa.paContinue

    def _stream_active(self) -> bool:
        return self._stream is not None and self._stream.is_active()

    def _close_stream(self) -> None:
        try:
            self._stream.stop_stream()
            self._stream.close()
        finally:
            self._pa.terminate()
            self._pa = None


def open_duplex(backend: str, config: DeviceConfig = DeviceConfig(), *, mic_rate: int = 16000,
                speaker_rate: int = 22050) -> DuplexDeviceIO:
    """``backend``'s duplex I/O ("sounddevice" or "pyaudio"): both devices resolved and their
    settings checked now, the stream opened only by ``start()``."""
    classes = {"sounddevice": SoundDeviceIO, "pyaudio": PyAudioIO}
    if backend not in classes:
        raise EdgevoiceError(f"unknown audio backend {backend!r}; use sounddevice or pyaudio")
    return classes[backend](config, mic_rate=mic_rate, speaker_rate=speaker_rate)


def refused(direction: str, device: DeviceInfo, channels: int, rate: int, exc: Exception) -> EdgevoiceError:
    return EdgevoiceError(
        f"{direction} device {device.index} ({device.name}) refuses {rate} Hz, {channels} ch, float32 ({exc}); "
        f"its default rate is {device.default_rate:g} Hz — leave device_rate unset or pick another device"
    )
