#!/usr/bin/env bash
# Run by scripts/install-jvm-servers.sh in the new install dir: builds plugin/
# (a Quarkus extension standing in for one Maven Central lacks, then the Quarkus
# build of Apicurio Registry) in a copy under the install dir, and puts the
# runner jar and the jars it runs with in <install>/lib. The registry then runs as
#   java <conf/jvm.options> -Dquarkus.http.port=PORT -cp '<install>/classes:<install>/lib/*' \
#     pgfanout.testkit.Launch io.quarkus.runner.GeneratedMain
set -euo pipefail
dir="$1"
here="$(dirname "$(readlink -f "$0")")"
java_home="$(dirname "$(dirname "$(cat "$dir/java")")")"
build="$dir/build"
rm -rf "$build"
cp -r "$here/plugin" "$build"
# -DskipExternalRepos: the app's parent POM otherwise adds repositories besides Maven Central
JAVA_HOME="$java_home" mvn -q -B -Dstyle.color=never -f "$build/pom.xml" package -DskipTests -DskipExternalRepos=true 2>&1 \
  | sed 's/\x1b\[[0-9;]*m//g' | grep -v -e 'ContainerRuntimeUtil' -e 'SplitPackageProcessor' -e '^- "io.apicurio' >&2 || true
test -f "$build/app/target/apicurio-app-1-runner.jar" || { echo "apicurio post-install: the Quarkus build made no runner jar" >&2; exit 1; }
mkdir -p "$dir/lib"
mv "$build/app/target/lib/"*.jar "$dir/lib/"
mv "$build/app/target/apicurio-app-1-runner.jar" "$dir/lib/"
rm -rf "$build"
