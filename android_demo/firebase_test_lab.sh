#!/usr/bin/env bash
# Runs the demo app's benchmark (BenchmarkInstrumentedTest, the Benchmark screen's measurement) on
# Firebase Test Lab phones, copies every phone's report back from the results bucket and reads them
# with `spnas-bench --import`. Needs gcloud (signed in, a project with Test Lab and billing) and
# gsutil; see README.md, "Device farms: Firebase Test Lab".
set -euo pipefail

PACKAGE=org.spnas.demo
REPORT_DIR=/sdcard/Android/data/$PACKAGE/files/spnas-bench  # BenchmarkInstrumentedTest writes here
REPORT_NAME=spnas-bench-android.json

usage() {
    cat <<'EOF'
usage: firebase_test_lab.sh --bucket BUCKET --device model=MODEL,version=API [--device ...]
                            [--threads 1,2,4] [--warmup 10] [--runs 50] [--backend cpu|gpu]
                            [--timeout 20m] [--out DIR] [--app APK --test APK]

  --bucket   Cloud Storage bucket for the raw results (yours; gs:// optional)
  --device   a Test Lab device, repeatable: `gcloud firebase test android models list` (use PHYSICAL
             ones: an emulator's latency says nothing about a phone)
  --out      where the results are copied (default: firebase-results)
  --app, --test  prebuilt app and test APKs (default: build the debug pair with Gradle)
EOF
}

die() { echo "firebase_test_lab.sh: $*" >&2; exit 2; }

bucket="" threads="1,2,4" warmup=10 runs=50 backend=cpu timeout=20m out=firebase-results app="" test_apk=""
devices=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --bucket|--device|--threads|--warmup|--runs|--backend|--timeout|--out|--app|--test)
            [[ $# -ge 2 ]] || die "$1 needs a value"
            case "$1" in
                --bucket) bucket=${2#gs://}; bucket=${bucket%/} ;;
                --device) devices+=("$2") ;;
                --threads) threads=$2 ;;
                --warmup) warmup=$2 ;;
                --runs) runs=$2 ;;
                --backend) backend=$2 ;;
                --timeout) timeout=$2 ;;
                --out) out=$2 ;;
                --app) app=$2 ;;
                --test) test_apk=$2 ;;
            esac
            shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
[[ -n $bucket ]] || die "--bucket BUCKET is required (the raw results and the pulled reports land there)"
[[ ${#devices[@]} -gt 0 ]] || die "give at least one --device model=MODEL,version=API"
[[ $threads =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || die "--threads: comma-separated positive integers, got '$threads'"
[[ $warmup =~ ^[0-9]+$ && $runs =~ ^[1-9][0-9]*$ ]] || die "--warmup and --runs: whole numbers (runs >= 1)"
[[ $backend == cpu || $backend == gpu ]] || die "--backend: cpu or gpu, got '$backend'"
for tool in gcloud gsutil; do
    command -v "$tool" >/dev/null || die "$tool not found on PATH (install the Google Cloud CLI)"
done

if [[ -z $app && -z $test_apk ]]; then
    here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
    (cd "$here" && ./gradlew assembleDebug assembleDebugAndroidTest)
    app=$here/app/build/outputs/apk/debug/app-debug.apk
    test_apk=$here/app/build/outputs/apk/androidTest/debug/app-debug-androidTest.apk
fi
[[ -f $app && -f $test_apk ]] || die "--app and --test: give both APKs, as files (got '$app', '$test_apk')"

results_dir=spnas-bench-$(date -u +%Y%m%d-%H%M%S)-$$
device_args=()
for device in "${devices[@]}"; do
    device_args+=(--device "$device")
done
status=0  # a device whose test failed makes gcloud exit non-zero; the others' reports are still copied
gcloud firebase test android run --type instrumentation --app "$app" --test "$test_apk" "${device_args[@]}" \
    --test-targets "class $PACKAGE.BenchmarkInstrumentedTest" \
    --environment-variables "^:^threads=$threads:warmup=$warmup:runs=$runs:backend=$backend" \
    --directories-to-pull "$REPORT_DIR" --results-bucket "$bucket" --results-dir "$results_dir" \
    --timeout "$timeout" --no-record-video --no-performance-metrics || status=$?

mkdir -p "$out"
gsutil -m cp -r "gs://$bucket/$results_dir" "$out/"
reports=()
while IFS= read -r report; do
    reports+=("$report")
done < <(find "$out/$results_dir" -name "$REPORT_NAME" | sort)
[[ ${#reports[@]} -gt 0 ]] || die "no device wrote $REPORT_NAME (gcloud exit code $status); see the test matrix"
echo "${#reports[@]} report(s) from ${#devices[@]} device(s) in $out/$results_dir"
if command -v spnas-bench >/dev/null; then
    spnas-bench --import "${reports[@]}" --json "$out/$results_dir/firebase.json" --plot "$out/$results_dir/firebase.png"
else
    printf 'read them with: spnas-bench --import'; printf ' %q' "${reports[@]}"; printf '\n'
fi
exit "$status"
