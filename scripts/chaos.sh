#!/usr/bin/env bash
# The long chaos run (tests/chaos.rs): parallel random CNI calls, drift,
# spec edits and tailnet flaps against a daemon under fd and memory limits,
# in throwaway namespaces. Usage: bash scripts/chaos.sh [SECONDS] (default 300).
set -euo pipefail
cd "$(dirname "$0")/.."
HEADCNI_CHAOS_SECONDS=${1:-300} cargo test --test chaos -- --nocapture
