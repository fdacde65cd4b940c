#!/usr/bin/env bash
# make release [RELEASE=<name>]: the app as its hosts install it, built here,
# into dist/flaskfleet-<name>.tar (name: the package version by default):
#   wheels/           the app's wheel and its dependencies' wheels, for the hosts'
#                     Python and platform (APP_HOST_* in versions.env), at the
#                     versions pinned in requirements/main.txt
#   requirements.txt  every one of those wheels with its SHA-256; the app role
#                     installs offline with pip --require-hashes
#   gunicorn.conf.py  the shipped Gunicorn config
# Builds are cached by release name and source fingerprint, so an unchanged tree
# is built once; the same name with changed sources builds again (but a host
# that already has the release keeps it: deploy changed code under a new name).
# Prints the archive's path. FF_APP_SOURCE builds another copy of app/ instead
# (the stack tests build a deliberately broken release from one).
. "$(dirname "$0")/lib.sh"
cd "$FF_ROOT"
uv=$FF_ROOT/.venv/bin/uv

source=${FF_APP_SOURCE:-app}
[ -f "$source/pyproject.toml" ] || die "FF_APP_SOURCE=$source is not a copy of app/ (no pyproject.toml)"
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$source/src/flaskfleet/_version.py")
release=${1:-$version}
[[ $release =~ ^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$ ]] ||
  die "release name must be 1-64 characters of letters, digits and ._+- (it names a directory and an HTTP header): $release"

fingerprint=$(
  {
    find "$source/src" "$source/pyproject.toml" "$source/gunicorn.conf.py" "$source/README.md" -type f \
      ! -path '*/__pycache__/*' ! -path '*.egg-info/*' -print0 | sort -z | xargs -0 sha256sum
    sha256sum requirements/main.txt
    echo "$APP_HOST_PYTHON $APP_HOST_PLATFORM"
  } | sha256sum | cut -c1-12
)
build=$FF_CACHE/app-builds/$release-$fingerprint
archive=$FF_ROOT/dist/flaskfleet-$release.tar
hold_lock "release-$release"

if [ ! -s "$build/release.tar" ]; then
  log "building release $release (flaskfleet $version, source $fingerprint) for Python $APP_HOST_PYTHON on $APP_HOST_PLATFORM"
  rm -rf "$build" && mkdir -p "$build/source" "$build/release/wheels"
  # A copy, so building leaves the working tree alone.
  tar -C "$source" --exclude=build --exclude='*.egg-info' --exclude=__pycache__ --exclude=tests -cf - . |
    tar -C "$build/source" -xf -
  .venv/bin/python -m build -q --no-isolation --wheel --outdir "$build/release/wheels" "$build/source" >/dev/null
  wheel=$(cd "$build/release/wheels" && ls flaskfleet-*.whl)
  # Resolved for the hosts' interpreter, not this one: environment markers
  # (redis needs async-timeout on Python < 3.11.3, as Debian 12's 3.11.2 is)
  # must be evaluated for the target, which pip download does not do.
  echo "$build/release/wheels/$wheel" >"$build/requirements.in"
  "$uv" pip compile -q --generate-hashes --python-version "$APP_HOST_PYTHON" \
    --python-platform "$APP_HOST_PLATFORM" --constraint requirements/main.txt \
    --no-emit-package flaskfleet --no-header --no-annotate \
    --output-file "$build/release/requirements.txt" "$build/requirements.in"
  [ -x "$FF_CACHE/app-builds/pip/bin/pip" ] || python3 -m venv "$FF_CACHE/app-builds/pip"
  abi=cp$(cut -d. -f1,2 <<<"$APP_HOST_PYTHON" | tr -d .)
  platforms=(--platform=manylinux2014_x86_64)
  for minor in $(seq 17 "${APP_HOST_PLATFORM##*_}"); do platforms+=("--platform=manylinux_2_${minor}_x86_64"); done
  "$FF_CACHE/app-builds/pip/bin/pip" download -q --disable-pip-version-check --no-deps --require-hashes \
    --only-binary=:all: --implementation=cp --python-version="$APP_HOST_PYTHON" --abi="$abi" "${platforms[@]}" \
    --dest "$build/release/wheels" --requirement "$build/release/requirements.txt"
  echo "flaskfleet==$version --hash=sha256:$(sha256sum "$build/release/wheels/$wheel" | cut -d' ' -f1)" \
    >>"$build/release/requirements.txt"
  cp "$source/gunicorn.conf.py" "$build/release/"
  tar -C "$build/release" -cf "$build/release.tar.partial" wheels requirements.txt gunicorn.conf.py
  mv "$build/release.tar.partial" "$build/release.tar"
fi
mkdir -p dist
cp "$build/release.tar" "$archive.partial" && mv "$archive.partial" "$archive"
echo "$archive"
