#!/usr/bin/env bash
# Soak test of perception_node on the looped synthetic bag: benchmarks/soak.sh --minutes 30
set -euo pipefail
cd "$(dirname "$0")/.."
export FASTDDS_DEFAULT_PROFILES_FILE="$PWD/config/fastdds_loopback.xml" ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$(( $$ % 90 + 10 ))}"
exec .venv/bin/python benchmarks/soak.py "$@"
