#!/bin/sh
# perf_analyzer on Debian 12. The PyPI wheel (perf-analyzer 2.60.0) is manylinux_2_38: its binary
# needs glibc 2.38 and GLIBCXX_3.4.32, and Debian 12 has glibc 2.36 and GCC 12's libstdc++. This
# fetches Debian 13's libc6, libstdc++6 and libgcc-s1 and the wheel into $PA_DIR (nothing is installed
# system-wide; apt keeps its lists there too), then runs perf_analyzer through that glibc's own loader.
# On Debian 13, Ubuntu 24.04 or newer, `pip install perf-analyzer` is all it takes.
# Usage: benchmarks/perf_analyzer_debian12.sh <perf_analyzer arguments>
set -eu
dir=${PA_DIR:-/tmp/perf-analyzer-debian12}  # a path without spaces
lib="$dir/root/usr/lib/x86_64-linux-gnu"
binary="$dir/wheel/perf_analyzer/bin/perf_analyzer"
if [ ! -x "$lib/ld-linux-x86-64.so.2" ] || [ ! -x "$binary" ]; then
  mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial" "$dir/debs" "$dir/root"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
    > "$dir/sources.list"
  apt_options="-o Dir::Etc::SourceList=$dir/sources.list -o Dir::Etc::SourceParts=/dev/null
    -o Dir::State::Lists=$dir/lists -o Dir::Cache=$dir/cache -o Debug::NoLocking=1"
  # shellcheck disable=SC2086  # the options are words on purpose
  apt-get $apt_options update -qq
  # shellcheck disable=SC2086
  (cd "$dir/debs" && apt-get $apt_options download libc6 libstdc++6 libgcc-s1)
  for deb in "$dir"/debs/*.deb; do dpkg-deb -x "$deb" "$dir/root"; done
  python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_38_x86_64 \
    -d "$dir" perf-analyzer==2.60.0
  python3 -m zipfile -e "$dir"/perf_analyzer-2.60.0-*.whl "$dir/wheel"
  chmod +x "$binary"
fi
exec "$lib/ld-linux-x86-64.so.2" --library-path "$lib:/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu" \
  "$binary" "$@"
