#!/usr/bin/env sh
# What the live-audio tests (tests/audio/test_portaudio_live.py) need beyond scripts/system-deps.sh:
# a virtual sound card — PulseAudio with null sinks (pulseaudio, pulseaudio-utils), reached by
# PortAudio through ALSA's pulse plugin (libasound2-plugins) — and what PyAudio needs to build from
# source (portaudio19-dev, a C compiler, Python's headers). CI runs it before the README's commands;
# a machine with a real sound card needs none of it. Installs only what is missing; uses sudo when
# not root.
set -e
missing=""
command -v pulseaudio >/dev/null 2>&1 || missing="$missing pulseaudio"
command -v pactl >/dev/null 2>&1 && command -v parec >/dev/null 2>&1 || missing="$missing pulseaudio-utils"
ls /usr/lib/*/alsa-lib/libasound_module_pcm_pulse.so >/dev/null 2>&1 || missing="$missing libasound2-plugins"
[ -e /usr/include/portaudio.h ] || missing="$missing portaudio19-dev"
command -v gcc >/dev/null 2>&1 || missing="$missing gcc libc6-dev"
python3 -c 'import os, sysconfig; raise SystemExit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  2>/dev/null || missing="$missing python3-dev"
[ -z "$missing" ] && exit 0
sh "$(dirname "$0")/apt-install.sh" --no-install-recommends $missing
