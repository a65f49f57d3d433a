#!/usr/bin/env bash
# Writes the fortunes corpus (Debian's `fortunes` package) as one UTF-8 text file, fortunes
# separated by lines holding a single "%", the format of the fortune files themselves.
#   scripts/fortunes_corpus.sh OUT_FILE
set -euo pipefail
out=${1:?usage: fortunes_corpus.sh OUT_FILE}
src=/usr/share/games/fortunes
mkdir -p "$(dirname "$out")"
tmp="$out.tmp.$$"
: > "$tmp"
for f in $(find "$src" -maxdepth 1 -type f ! -name '*.dat' ! -name '*.u8' | sort); do
  # Each file ends its last fortune without a trailing %, so add one between files.
  iconv -f utf-8 -t utf-8 -c "$f" >> "$tmp"
  printf '%%\n' >> "$tmp"
done
mv "$tmp" "$out"
echo "fortunes corpus: $out ($(wc -c < "$out") bytes, $(grep -c '^%$' "$out") fortunes)"
