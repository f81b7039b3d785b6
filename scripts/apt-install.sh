#!/usr/bin/env sh
# Installs the Debian packages named in the arguments (apt-get options such as
# --no-install-recommends may come first); the dependency scripts call it with only what is missing.
# Uses sudo when not root; on a system without apt-get it names the packages and fails.
set -e
if ! command -v apt-get >/dev/null 2>&1; then
  echo "please install: $* (no apt-get on this system)" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
