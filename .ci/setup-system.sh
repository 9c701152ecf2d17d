#!/usr/bin/env bash
# System packages the tests need (filled in by the deployment/UI work); idempotent.
set -euo pipefail
