#!/usr/bin/env sh
# What the kiosk page's headless-browser test (tests/serve/test_browser.py) needs beyond
# scripts/system-deps.sh: Debian's chromium, which Playwright drives as the system browser (the
# test never downloads Playwright's own browsers), and a font for a legible screenshot. Playwright
# itself is a Python package of the dev extra. CI runs this before the README's commands. Installs
# only what is missing; uses sudo when not root.
set -e
missing=""
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
ls /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf >/dev/null 2>&1 || missing="$missing fonts-dejavu-core"
[ -z "$missing" ] && exit 0
sh "$(dirname "$0")/apt-install.sh" --no-install-recommends $missing
