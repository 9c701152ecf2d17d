#!/usr/bin/env bash
# System packages the deployment tests need: Debian's chromium + chromedriver (the UI screenshots through
# playwright, never `playwright install`) and PostgreSQL (the production-profile test). Idempotent: when
# everything is installed it only checks and exits, in well under a second.
set -euo pipefail

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
# pg_ctl/initdb live in /usr/lib/postgresql/<ver>/bin, not on PATH; the tests look there.
compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null || need+=(postgresql)

if ((${#need[@]} == 0)); then
    echo "setup-system: chromium, chromium-driver and postgresql already installed"
    exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "setup-system: need root or sudo to install: ${need[*]}" >&2
        exit 1
    fi
fi

echo "setup-system: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# The tests never use the cluster Debian's postgresql package may start on 5432: they run their own on a free
# port. Recommends stay on: they bring chromium's fonts, without which screenshots show empty boxes.
$SUDO apt-get install -y -qq "${need[@]}" >/dev/null
echo "setup-system: done"
