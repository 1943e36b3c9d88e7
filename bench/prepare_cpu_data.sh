#!/usr/bin/env bash
# Convert the shared train splits into unified records for configs/bench-cpu.yaml (writes out/bench-data/).
# Train splits only: STS-B train, SICK train, SNLI dev+test triplets (train ok), Banking77 train, zh-train, TREC-QA train.
# Then decontaminated against the evaluation sets of the quality table (out/bench-data/clean/): a training row that
# shares a text with STS-B test, Banking77 test or SICK (mteb's SICK-R scores all 9,927 SICK pairs, so SICK train
# is dropped whole) is set aside, never trained on.
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
E=(--delimiter tab --no-header --no-quoting --eval-field 5 --eval-field 6)  # numbered columns: some rows carry extra trailing ones
qzhou data decontaminate --quiet "$O"/{stsb,snli,banking77}.jsonl --eval "$D/stsb/sts-test.csv" "${E[@]}" --output-dir "$O/c1" \
  > "$O/decontaminated-stsb-test.json"
qzhou data decontaminate --quiet "$O"/c1/{stsb,snli,banking77}.jsonl --eval "$D/banking77/test.csv" --eval-field text \
  --output-dir "$O/c2" > "$O/decontaminated-banking77-test.json"
qzhou data decontaminate --quiet "$O"/c2/{stsb,snli,banking77}.jsonl --eval "$D/sick/SICK.txt" \
  --eval-field sentence_A --eval-field sentence_B --output-dir "$O/c3" > "$O/decontaminated-sick.json"
mkdir -p "$O/clean"
cp "$O"/c3/{stsb,snli,banking77}.jsonl "$O"/{zh,trecqa}.jsonl "$O/clean/"
rm -rf "$O"/c1 "$O"/c2 "$O"/c3
wc -l "$O"/clean/*.jsonl
