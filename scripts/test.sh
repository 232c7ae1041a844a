#!/usr/bin/env bash
# Install everything the tests need (system packages included) and run the whole suite:
# lint, type check, unit and integration tests against real SIP peers and databases.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need=()
command -v sipp >/dev/null 2>&1 || need+=(sip-tester)
command -v baresip >/dev/null 2>&1 || need+=(baresip-core)
command -v linphonec >/dev/null 2>&1 || need+=(linphone-cli)  # test_linphone.py: presence
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v curl >/dev/null 2>&1 || need+=(curl)  # the README tour's API step (test_tour.py)
command -v chromium >/dev/null 2>&1 || need+=(chromium)  # the web dashboard's browser tests
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)  # the cluster's tests
command -v kamailio >/dev/null 2>&1 || [ -x /usr/sbin/kamailio ] || need+=(kamailio)  # the SIP front (test_kamailio_front.py)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing system packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${need[@]}" >/dev/null
fi

if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
python -m pip install -q --upgrade pip
# Compiles the SIP core with mypyc (setup.py): the build the README's install gives.
python -m pip install -q -e '.[test,fast]'

ruff check .
mypy --strict src/pbxwarden
# The whole suite on the compiled core; then the core's own tests on its sources too,
# which run wherever no C compiler is (PBXWARDEN_PURE_PYTHON, see src/pbxwarden/_core.py).
# Three workers (pytest-xdist) on two cores: most tests wait on real peers and timers, so
# the suite runs in about 60 % of the serial time, and every test must hold under load.
# PBXWARDEN_TEST_WORKERS=0 runs it serially.
workers="${PBXWARDEN_TEST_WORKERS:-3}"
PBXWARDEN_EXPECT_CORE=compiled python -m pytest -q -p no:cacheprovider -n "$workers" "$@"
PBXWARDEN_PURE_PYTHON=1 PBXWARDEN_EXPECT_CORE=interpreted \
  python -m pytest -q -p no:cacheprovider tests/sip tests/pbx tests/test_sip_core_build.py
