"""Audio: wav files and PCM validation (later: ring buffers, device I/O, resampling, echo cancellation).

Depends only on numpy, soundfile and edgevoice.errors, so the runtime can use it without torch.
"""
