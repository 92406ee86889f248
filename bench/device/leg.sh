#!/usr/bin/env bash
# One transfer leg (docs/gpu_runbook.md): copy what this call carried to $CARRY, where it stays while the
# machine is warm.  bash bench/device/leg.sh 1   (carry .gpu/1)  |  2 (carry .gpu/2)  |  3 (carry .whl)
source bench/device/env.sh
case "${1:?leg 1, 2 or 3}" in
  1 | 2) cp -r ".gpu/$1/." "$CARRY/" ;;
  3) mkdir -p "$CARRY/whl" && cp .whl/*.whl "$CARRY/whl/" ;;
  *) echo "unknown leg $1" >&2; exit 2 ;;
esac
du -sh "$CARRY"/* | tee "$OUT/leg$1.txt"
