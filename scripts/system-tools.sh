#!/usr/bin/env bash
# Installs the system tools the tests use (scripts/system-tools.txt) when any is missing: through
# apt-get when running as root with apt there, else it stops at once with one line naming the
# packages. Only shell builtins, `id` and apt-get are used, so a test can run it on a bare PATH.
set -euo pipefail
case "${BASH_SOURCE[0]}" in */*) here="${BASH_SOURCE[0]%/*}" ;; *) here="." ;; esac
table="$here/system-tools.txt"
commands=() packages=() manual=()
while read -r command package note; do
  if [ -z "$command" ] || [ "${command:0:1}" = "#" ]; then continue; fi
  if command -v "$command" >/dev/null 2>&1; then continue; fi
  if [ "$package" = "-" ]; then
    manual+=("$command is missing: $note")
  else
    commands+=("$command")
    IFS=, read -r -a named <<<"$package"
    packages+=("${named[@]}")
  fi
done <"$table"

join() { # join SEPARATOR ITEM...: the items with SEPARATOR between them
  local separator="$1" joined="" item
  shift
  for item in "$@"; do joined+="${joined:+$separator}$item"; done
  echo "$joined"
}

if [ "${#commands[@]}" -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "system tools: installing $(join ', ' "${commands[@]}") (Debian: $(join ' ' "${packages[@]}"))" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
    for command in "${commands[@]}"; do
      if ! command -v "$command" >/dev/null 2>&1; then
        echo "system tools: apt-get installed $(join ' ' "${packages[@]}") but $command is still not on PATH" >&2
        exit 1
      fi
    done
  else
    echo "system tools: the tests need $(join ', ' "${commands[@]}"): install the Debian package(s) $(join ' ' "${packages[@]}") (apt-get install $(join ' ' "${packages[@]}")), or run this as root with apt-get, which installs them" >&2
    exit 1
  fi
fi
if [ "${#manual[@]}" -gt 0 ]; then
  echo "system tools: $(join '; ' "${manual[@]}")" >&2
  exit 1
fi
