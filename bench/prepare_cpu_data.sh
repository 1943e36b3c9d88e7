#!/usr/bin/env bash
# Convert the shared train splits into unified records for configs/bench-cpu.yaml (writes out/bench-data/).
# Train splits only: STS-B train, SICK train, SNLI dev+test triplets (train ok), Banking77 train, zh-train, TREC-QA train.
set -euo pipefail
cd "$(dirname "$0")/.."
D=${QZHOU_DATA:-../shared/data}
O=out/bench-data
mkdir -p "$O"
q() { qzhou data convert --quiet "$@" > /dev/null; }
q --from sts-score "$D/stsb/sts-train.csv" "$O/stsb.jsonl" --delimiter tab --no-header --no-quoting \
  --field text1=5 --field text2=6 --field score=4
q --from sts-score "$D/sick/sick2014/SICK_train.txt" "$O/sick.jsonl" \
  --field text1=sentence_A --field text2=sentence_B --field score=relatedness_score
for split in dev test; do
  q --from nli-triplets "$D/snli-esnli/s1.$split,$D/snli-esnli/s2.$split,$D/snli-esnli/labels.$split" \
    "$O/snli-$split.jsonl" --columns text1,text2,label
done
cat "$O/snli-dev.jsonl" "$O/snli-test.jsonl" > "$O/snli.jsonl"
q --from classification "$D/banking77/train.csv" "$O/banking77.jsonl" --field label=category --negatives 4
q --from retrieval "$D/zh-train/text2vec_bge_finetune_data.jsonl" "$O/zh.jsonl"
q --from qa "$D/trecqa-wang/train.csv" "$O/trecqa.jsonl" --field question=qtext --field answer=atext
qzhou data validate --quiet "$O"/{stsb,sick,snli,banking77,zh,trecqa}.jsonl | grep -E "rows|errors" || true
