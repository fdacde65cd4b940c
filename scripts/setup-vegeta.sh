#!/usr/bin/env bash
# vegeta, make bench's open-loop load generator (bench/openloop.py), built from
# its Go module once per VEGETA_VERSION into $FF_CACHE/bin/vegeta-<version>;
# $FF_ROOT/.tools/vegeta links to it, so a new pin builds and relinks.
. "$(dirname "$0")/lib.sh"
hold_lock vegeta

bin="$FF_CACHE/bin/vegeta-$VEGETA_VERSION"
if [ ! -x "$bin" ]; then
  command -v go >/dev/null ||
    die "make bench builds vegeta $VEGETA_VERSION from its Go module, and go is not installed"
  log "building vegeta $VEGETA_VERSION from its Go module (a minute or so, once)"
  # Built beside its destination, so that the move into place is a rename and
  # an interrupted build never leaves a $bin that looks finished.
  gobin="$bin.build"
  rm -rf "$gobin" && mkdir -p "$gobin"
  GOPATH="$FF_CACHE/gopath" GOBIN="$gobin" GOFLAGS=-modcacherw CGO_ENABLED=0 \
    go install -trimpath -ldflags "-s -w -X main.Version=v$VEGETA_VERSION" \
    "github.com/tsenart/vegeta/v12@v$VEGETA_VERSION" ||
    die "vegeta $VEGETA_VERSION could not be built (go install's output is above); make bench needs it for its open-loop figures"
  mv "$gobin/vegeta" "$bin"
  rmdir "$gobin"
fi
mkdir -p "$FF_ROOT/.tools"
ln -sfn "$bin" "$FF_ROOT/.tools/vegeta"
