#!/usr/bin/env sh
# System programs edgevoice uses: espeak-ng turns reply text into phonemes for the Piper voice
# (GPL-3.0, so it runs as a separate program), sox converts audio in the tests, and PortAudio backs
# live audio devices. Installs only what is missing; uses sudo when not root.
set -e
missing=""
command -v espeak-ng >/dev/null 2>&1 || missing="$missing espeak-ng"
command -v sox >/dev/null 2>&1 || missing="$missing sox"
ldconfig -p 2>/dev/null | grep -q libportaudio.so.2 || missing="$missing libportaudio2"
[ -z "$missing" ] && exit 0
sh "$(dirname "$0")/apt-install.sh" $missing
