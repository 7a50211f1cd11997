#!/usr/bin/env bash
# Compiles the app's pure-Kotlin core (app/src/main/.../core), its JVM tests (app/src/test) and
# PreprocessMain into one jar with the Kotlin runtime inside, using the compiler pinned in
# package-lock.json, and prints the jar's path. The jar is cached under build/jvm-tests/, keyed by
# the sources, the lockfile and this script, so an unchanged tree compiles once.
# Needs (make android-tools): `npm ci --prefix android_demo` (the compiler), Debian's junit4, Java 17.
set -euo pipefail
cd "$(dirname "$0")/.."
JUNIT_JAR=/usr/share/java/junit4.jar
KOTLINC=node_modules/kotlin-compiler/bin/kotlinc
for tool in "$KOTLINC" "$JUNIT_JAR"; do
    if [ ! -e "$tool" ]; then
        echo "error: $tool is missing: run make android-tools from the repository root" >&2
        exit 2
    fi
done
if ! command -v java > /dev/null; then
    echo "error: java is not on PATH: install a JDK 17" >&2
    exit 2
fi
sources=(app/src/main/java/org/spnas/demo/core/*.kt app/src/test/java/org/spnas/demo/core/*.kt jvm/*.kt)
key=$(sha256sum package-lock.json jvm/build.sh "${sources[@]}" | sha256sum | cut -c1-16)
jar=$PWD/build/jvm-tests/spnas-core-$key.jar
if [ ! -f "$jar" ]; then
    mkdir -p build/jvm-tests
    partial=$(mktemp build/jvm-tests/partial-XXXXXX.jar)
    trap 'rm -f "$partial"' EXIT
    # A one-off compile: the C1 JIT alone and the serial GC halve the compiler's CPU time (25 s -> 13 s).
    JAVA_OPTS="-Xmx512M -XX:TieredStopAtLevel=1 -XX:+UseSerialGC" \
        "$KOTLINC" -jvm-target 17 -include-runtime -cp "$JUNIT_JAR" -d "$partial" "${sources[@]}" >&2
    find build/jvm-tests -name 'spnas-core-*.jar' -delete
    mv "$partial" "$jar"
fi
echo "$jar"
