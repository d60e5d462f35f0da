#!/bin/sh
# Regenerates fuzz/hot-code.ld from perf samples of campaigns in the lab
# (docs/benchmarks.md#hot-code). Needs the host's perf copied next to its
# libraries in target/perf (docs/benchmarks.md#profiling-the-loop-in-the-lab)
# and a built fuzzer (cargo build -p xenprobe-fuzz --profile fuzzer).
set -eu
cd "$(dirname "$0")/.."
P=target/perf G=target/guests BIN=target/fuzzer/xenprobe-fuzz
OUT=target/hot-code
mkdir -p $OUT
# One profile: a 24 s campaign, 15 s of its steady state sampled.
profile() {
    name=$1; shift
    cat > $OUT/run.sh <<INNER
$BIN "\$@" --dir /tmp/hot-code-camp --time 24s --rng-seed 7 > /dev/null 2>&1 &
sleep 6
$P/lib/ld-linux-x86-64.so.2 --library-path $P/lib $P/perf record -e cpu-clock -F 4000 \
  -p \$(pidof xenprobe-fuzz | cut -d' ' -f1) -o $OUT/$name.data -- sleep 15 > /dev/null 2>&1
wait
rm -rf /tmp/hot-code-camp
$P/lib/ld-linux-x86-64.so.2 --library-path $P/lib $P/perf report -i $OUT/$name.data \
  --no-children --no-demangle --dsos xenprobe-fuzz --sort sym -n --stdio 2>/dev/null \
  | grep -v '^#' | awk 'NF { print \$2, \$NF }' > $OUT/$name.txt
INNER
    cargo xtask lab run -- sh $OUT/run.sh "$@"
}
profile tlv --cfg $G/tlv-pvh.cfg --image $G/tlv-pvh --krate tlv
profile tlv-nocmp --cfg $G/tlv-pvh.cfg --image $G/tlv-pvh --krate tlv --no-cmplog
profile cguest --config fuzz/examples/cguest.toml
nm $BIN | awk 'NF == 3 { print $3 }' > $OUT/names.txt
# Functions sampled 5 times or more, hottest first; the legacy hash
# (17h<16 hex>E) a wildcard unless the path names several instantiations.
cat $OUT/tlv.txt $OUT/tlv-nocmp.txt $OUT/cguest.txt \
  | awk '{ n[$2] += $1 } END { for (s in n) if (n[s] >= 5) print n[s], s }' | sort -rn \
  | awk 'function path(s) { sub(/17h[0-9a-f]+E$/, "", s); return s }
         NR == FNR { paths[path($1)]++; next }
         { p = path($2); print "    *(.text." (p != $2 && paths[p] == 1 ? p "17h*" : $2) ")" }' \
    $OUT/names.txt - > $OUT/patterns.txt
{
    sed -n '1,/^SECTIONS/p' fuzz/hot-code.ld
    printf '{\n  .text.hot :\n  {\n'
    cat $OUT/patterns.txt
    printf '  }\n}\nINSERT BEFORE .text;\n'
} > $OUT/hot-code.ld
mv $OUT/hot-code.ld fuzz/hot-code.ld
echo "fuzz/hot-code.ld: $(wc -l < $OUT/patterns.txt) functions"
