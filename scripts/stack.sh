#!/usr/bin/env bash
# The whole stack on this machine: `stack.sh up` (make up), `stack.sh down`
# (make down), `stack.sh apply|destroy [TOFU_ARGS]` (the VMs only: make
# tf-apply-local, tf-destroy-local), `stack.sh smoke`, `stack.sh
# ansible-playbook ARGS...` (a playbook against the stack with its inventory
# and secrets), `stack.sh scale APP [WORKERS]` (make scale). Ansible logs in over SSH with the stack's own key
# (.secrets/<stack>/ssh/). `stack.sh restore TIME` / `restore-done` (make
# restore, make restore-done): point-in-time restore on a scratch VM.
#
#   FF_STACK      name of the stack: instance-name prefix and OpenTofu
#                 workspace (default ff). The ff stack's inventory is
#                 inventories/local/; another stack's lives in .secrets/<name>/
#                 inventory/ with the same group_vars, so a test stack never
#                 touches the developer's.
#   FF_HTTP_PORT  port on 127.0.0.1 that reaches the load balancer (default 8080)
#   FF_PROMETHEUS_PORT, FF_ALERTMANAGER_PORT  ports on 127.0.0.1 that reach the
#                 monitor's Prometheus and Alertmanager (default 9090 and 9093
#                 for ff; FF_HTTP_PORT + 10000 and + 11000 for another stack,
#                 so stacks side by side do not collide)
#   FF_NETWORK_CIDR  the stack's bridge subnet (default 10.118.10.0/24 for ff,
#                 and a /24 in 10.118.11-210.0 derived from the name otherwise)
. "$(dirname "$0")/lib.sh"
cd "$FF_ROOT"
# The same tools make uses, so the script also runs on its own.
export PATH="$FF_ROOT/.venv/bin:$FF_ROOT/.tools:$PATH"
export TF_CLI_CONFIG_FILE="$FF_ROOT/terraform/cli.tfrc" ANSIBLE_CONFIG="$FF_ROOT/ansible.cfg"

stack=${FF_STACK:-ff}
export TF_VAR_name=$stack
export TF_VAR_lb_http_port=${FF_HTTP_PORT:-8080}
if [ "$stack" = ff ]; then
  export TF_VAR_network_cidr=${FF_NETWORK_CIDR:-10.118.10.0/24}
  export TF_VAR_prometheus_host_port=${FF_PROMETHEUS_PORT:-9090}
  export TF_VAR_alertmanager_host_port=${FF_ALERTMANAGER_PORT:-9093}
else
  export TF_VAR_network_cidr=${FF_NETWORK_CIDR:-10.118.$((11 + $(cksum <<<"$stack" | cut -d' ' -f1) % 200)).0/24}
  export TF_VAR_prometheus_host_port=${FF_PROMETHEUS_PORT:-$((TF_VAR_lb_http_port + 10000))}
  export TF_VAR_alertmanager_host_port=${FF_ALERTMANAGER_PORT:-$((TF_VAR_lb_http_port + 11000))}
fi
export TF_WORKSPACE=$stack
# Read by scripts/vault-password (ansible.cfg's vault password client).
export FF_STACK=$stack
url="http://127.0.0.1:$TF_VAR_lb_http_port"
state=.secrets/$stack
if [ "$stack" = ff ]; then
  inventory=inventories/local
else
  inventory=$state/inventory
fi
tf() { tofu -chdir=terraform/environments/local "$@"; }
# Commands run in workspace $TF_WORKSPACE without selecting it, so stacks can be
# worked on side by side; init and workspace management need it unset.
tf_admin() { env -u TF_WORKSPACE tofu -chdir=terraform/environments/local "$@"; }
has_workspace() { tf_admin workspace list | sed 's/^[* ]*//' | grep -qx "$stack"; }
step() { log "[$1/3] $2"; }

# filtered PATTERN CMD...: run CMD, show its progress lines matching PATTERN on
# stderr, pass its whole output on to stdout; exit with CMD's status.
filtered() {
  local pattern=$1 status
  shift
  set +o pipefail
  "$@" | tee >(grep --line-buffered -E "$pattern" >&2)
  status=${PIPESTATUS[0]}
  set -o pipefail
  return "$status"
}

playbook() {
  ansible-playbook -i "$inventory" "$@"
}

# The stack's inventory group_vars: the committed local ones plus a link to
# the stack's vault, which ansible.cfg's vault password client opens for
# FF_STACK. So `ansible-playbook site.yml` needs no flags: for ff its
# inventory is ansible.cfg's default, another stack adds -i $inventory.
link_group_vars() {
  local file target
  if [ "$stack" = ff ]; then
    ln -sfn "../../../../$state/vault.yml" inventories/local/group_vars/all/vault.yml
    return
  fi
  rm -rf "$inventory/group_vars"  # links only (an older stack's was a link to the directory)
  for file in inventories/local/group_vars/*/*.yml; do
    [ "$(basename "$file")" = vault.yml ] && continue
    target=$inventory/${file#inventories/local/}
    mkdir -p "$(dirname "$target")"
    ln -sfn "$FF_ROOT/$file" "$target"
  done
  ln -sfn ../../../vault.yml "$inventory/group_vars/all/vault.yml"
}

admin_key() {
  export TF_VAR_admin_ssh_public_key
  TF_VAR_admin_ssh_public_key=$(cat "$state/ssh/id_ed25519.pub")
}

# The tiers were one module block each (module.lb, module.app, ...) until they
# became instances of one (module.tier["lb"], ...). A `moved` block would carry
# a stack across, but it needs Terraform >= 1.1 and the fallback CLI
# (TERRAFORM_FALLBACK_PIP in versions.env) is 1.0.3, the newest PyPI has: move
# an older stack's state once instead, so its next apply keeps its instances
# rather than replacing them. terraform/environments/aws/README.md has the same
# commands for an aws stack.
migrate_tier_state() {
  local addresses tier
  # A new stack has no state to list (and nothing to move); any other failure
  # shows in the apply that follows.
  addresses=$(tf state list 2>/dev/null) || return 0
  for tier in lb app redis queue worker postgres_primary postgres_replica; do
    if grep -q "^module\.$tier\." <<<"$addresses"; then
      tf state mv "module.$tier" "module.tier[\"$tier\"]" >/dev/null
    fi
  done
}

# The stack's node counts, kept by `make scale` (and the scratch VM's by
# `make restore`) and read by every apply, so `make up` keeps the nodes a
# scale added. Terraform tfvars JSON: the aws environment takes the same file
# (-var-file).
counts=$state/counts.tfvars.json

# set_counts NAME=VALUE...: change those counts in $counts, keep the others.
set_counts() {
  python3 - "$counts" "$@" <<'PY'
import json, os, sys
path, pairs = sys.argv[1], sys.argv[2:]
counts = json.load(open(path)) if os.path.exists(path) and os.path.getsize(path) else {}
counts.update({name: int(value) for name, value in (pair.split("=", 1) for pair in pairs)})
with open(path + ".partial", "w") as partial:
    json.dump(counts, partial, sort_keys=True)
os.replace(path + ".partial", path)
PY
}

# vms [TOFU_ARGS...]: the stack's VMs, its inventory and its known_hosts.
vms() {
  local arg
  for arg in "$@"; do
    case $arg in
      *app_count=* | *worker_count=*)
        die "set node counts with make scale APP=<n> [WORKERS=<m>]: a count given to one apply is forgotten by the next make up" ;;
      *restore_count=*)
        die "the scratch VM comes with make restore TIME=<time> and goes with make restore-done" ;;
    esac
  done
  if [ -s "$counts" ]; then set -- -var-file="$FF_ROOT/$counts" "$@"; fi
  bash scripts/secrets.sh "$stack" >/dev/null
  admin_key
  tf_admin init -input=false >/dev/null
  if ! has_workspace; then
    local found
    found=$(leftovers | paste -sd, | sed 's/,/, /g')
    [ -z "$found" ] || die "LXD still has $found of a stack $stack whose OpenTofu state is gone: FF_STACK=$stack scripts/stack.sh down (make down for ff) removes them"
    tf_admin workspace new "$stack" >/dev/null
  fi
  migrate_tier_state
  filtered 'Creation complete|^(Apply complete|No changes)|Error' \
    tf apply -input=false -auto-approve -compact-warnings -no-color "$@" >"$state/tofu.log" ||
    die "tofu apply failed: see $state/tofu.log"
  link_group_vars
  tf output -json ansible_inventory >"$inventory/hosts.json.partial"
  mv "$inventory/hosts.json.partial" "$inventory/hosts.json"
  bash scripts/known-hosts.sh "$inventory/hosts.json" >"$state/ssh/known_hosts.partial"
  mv "$state/ssh/known_hosts.partial" "$state/ssh/known_hosts"
}

# lxd_names: every instance LXD has, one a line (fails if LXD does not answer,
# so an unreachable LXD is never taken for instances that are gone).
lxd_names() {
  lxc list --format csv -c n || die "LXD does not answer: make setup starts it"
}

# forget_vanished: drop from the state the instances LXD no longer has (deleted
# by hand, or by a destroy that failed after deleting them): the LXD provider
# fails on reading them ("Instance not found") instead of forgetting them.
forget_vanished() {
  local existing address name
  existing=$(lxd_names)
  tf state list 2>/dev/null | grep -F 'lxd_container.this[' | while read -r address; do
    name=$(sed 's/.*this\["\(.*\)"\]$/\1/' <<<"$address")
    grep -qxF "$name" <<<"$existing" && continue
    log "forgetting $name: LXD no longer has it"
    tf state rm "$address" >/dev/null
  done
}

# leftovers: what LXD still has under this stack's names (its profile, the
# instances using it, its network), one "kind name" a line.
leftovers() {
  lxd_names >/dev/null
  python3 - "$stack" <<'PY'
import json, subprocess, sys
stack = sys.argv[1]
def query(path):
    done = subprocess.run(["lxc", "query", path], capture_output=True, text=True)
    return json.loads(done.stdout) if done.returncode == 0 else None
profile = query(f"/1.0/profiles/{stack}-vm")
for user in (profile or {}).get("used_by") or []:
    print("instance", user.rsplit("/", 1)[-1].split("?", 1)[0])
if profile is not None:
    print("profile", f"{stack}-vm")
if query(f"/1.0/networks/{stack}-br") is not None:
    print("network", f"{stack}-br")
PY
}

# remove_leftovers: after OpenTofu destroyed all it tracks, remove what LXD
# still has under the stack's names - a stack whose state was lost (a deleted
# clone) would otherwise stop the next make up of the same name.
remove_leftovers() {
  local kind name
  leftovers | while read -r kind name; do
    log "removing $kind $name, which OpenTofu does not track"
    case $kind in
      instance) lxc delete --force "$name" ;;
      profile) lxc profile delete "$name" ;;
      network) lxc network delete "$name" ;;
    esac
  done
}

# destroy_vms [TOFU_ARGS...]: remove the VMs, network and profile; keep secrets.
destroy_vms() {
  tf_admin init -input=false >/dev/null
  has_workspace || return 0
  forget_vanished
  if [ -s "$state/ssh/id_ed25519.pub" ]; then
    admin_key
  else # destroy needs every variable set; with the stack's key lost, any key does
    local throwaway
    throwaway=$(mktemp -d)
    ssh-keygen -q -t ed25519 -N '' -f "$throwaway/key"
    export TF_VAR_admin_ssh_public_key
    TF_VAR_admin_ssh_public_key=$(cat "$throwaway/key.pub")
    rm -rf "$throwaway"
  fi
  filtered 'Destruction complete|^Destroy complete|Error' \
    tf destroy -input=false -auto-approve -compact-warnings -no-color "$@" >/dev/null || die "tofu destroy failed"
  tf_admin workspace select default >/dev/null
  tf_admin workspace delete "$stack" >/dev/null
  rm -f "$inventory/hosts.json" "$state/ssh/known_hosts"
}

up() {
  local start=$SECONDS
  step 1 "VMs: tofu apply, workspace $stack (LXD system containers); secrets and SSH key in $state"
  vms

  step 2 "configure: make release, then ansible-playbook site.yml over SSH (full log: $state/site.log)"
  bash scripts/release.sh >/dev/null
  filtered '^(PLAY|TASK) \[|^(changed|fatal|failed):' playbook site.yml >"$state/site.log" ||
    die "site.yml failed: see $state/site.log"
  sed -n '/^PLAY RECAP/,/^$/p' "$state/site.log"

  step 3 "smoke check through the load balancer and the monitor"
  smoke
  log "flaskfleet is up (${stack}, $((SECONDS - start)) s)"
  echo "$url/api/v1/products"
  echo "prometheus:   http://127.0.0.1:$TF_VAR_prometheus_host_port/consoles/flaskfleet.html (alerts: /alerts)"
  echo "alertmanager: http://127.0.0.1:$TF_VAR_alertmanager_host_port/"
}

# The load balancer's private address: what the admin network (this host, on
# the stack's bridge) reaches, and the only way to /readyz and /metrics.
lb_address() {
  python3 -c 'import json, sys; print(*(h["private_ip"] for h in
    json.load(open(sys.argv[1]))["all"]["children"]["lb"]["hosts"].values()))' "$inventory/hosts.json"
}

smoke() {
  local ready="" ops_url
  ops_url="http://$(lb_address)"
  for _ in $(seq 1 60); do
    ready=$(curl -fsS --max-time 3 "$ops_url/readyz" 2>/dev/null) && break
    sleep 1
  done
  [ -n "$ready" ] || die "no ready answer from $ops_url/readyz within 60 s"
  echo "readyz ($ops_url, admin network only): $ready"
  curl -fsS --max-time 5 -o /dev/null -w 'GET /api/v1/products: %{http_code}\n' "$url/api/v1/products"
  curl -fsS --max-time 5 -o /dev/null -w 'Prometheus /-/ready: %{http_code}\n' \
    "http://127.0.0.1:$TF_VAR_prometheus_host_port/-/ready"
  curl -fsS --max-time 5 -o /dev/null -w 'Alertmanager /-/ready: %{http_code}\n' \
    "http://127.0.0.1:$TF_VAR_alertmanager_host_port/-/ready"
}

# inventory_hosts GROUP: the group's hosts in the current inventory, one a line.
inventory_hosts() {
  python3 -c 'import json, sys; print(*json.load(open(sys.argv[1]))["all"]["children"][sys.argv[2]].get("hosts") or {}, sep="\n")' \
    "$inventory/hosts.json" "$1"
}

# release_version: the app's package version, the release make up installs.
release_version() {
  sed -n 's/^__version__ = "\(.*\)"$/\1/p' app/src/flaskfleet/_version.py
}

# json_list WORD...: the words as a JSON list (host names: no quoting needed).
json_list() {
  python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@"
}

# scale APP [WORKERS]: change the number of app nodes (and workers) of a
# running stack without failing a request: new app nodes are configured and
# proven ready before any load balancer routes to them; app nodes to remove are
# drained and workers warm-stopped before Terraform removes them. Terraform
# removes the highest-numbered nodes, so those are the ones retired.
scale() {
  local app=${1:-} workers=${2:-} old_app old_workers retiring_app=() retiring_workers=() i
  [[ $app =~ ^[0-9]+$ ]] && ((10#$app >= 1 && 10#$app <= 50)) ||
    die "APP must be a whole number of app nodes from 1 to 50 (got '$app'): make scale APP=<n> [WORKERS=<m>]"
  [ -z "$workers" ] || { [[ $workers =~ ^[0-9]+$ ]] && ((10#$workers <= 50)); } ||
    die "WORKERS must be a whole number of workers from 0 to 50 (got '$workers')"
  [ -s "$inventory/hosts.json" ] || die "stack $stack is not up (no $inventory/hosts.json): make up first"
  app=$((10#$app))
  local before_hosts
  before_hosts=$(inventory_hosts app)
  old_app=$(grep -c . <<<"$before_hosts")
  old_workers=$(inventory_hosts worker | grep -c . || true)
  workers=$((10#${workers:-$old_workers}))
  if ((app == old_app && workers == old_workers)); then
    log "stack $stack already has $app app nodes and $workers workers"
    return
  fi
  # The release the fleet serves (a deploy may have moved it past the package
  # version site.yml would install): new nodes join on it, the others keep it.
  local release
  release=$(curl -fsS --max-time 5 -D - -o /dev/null "http://$(lb_address)/healthz" |
    sed -n 's/^x-app-version: *\([^[:space:]]*\).*/\1/Ip')
  [ -n "$release" ] || die "could not read the serving release (X-App-Version of /healthz): is the stack up?"
  [ -s "dist/flaskfleet-$release.tar" ] || { [ "$release" = "$(release_version)" ] && bash scripts/release.sh >/dev/null; } ||
    die "the fleet serves release $release, whose archive dist/flaskfleet-$release.tar is not here: make release RELEASE=$release"
  for ((i = app + 1; i <= old_app; i++)); do retiring_app+=("$stack-app-$i"); done
  for ((i = workers + 1; i <= old_workers; i++)); do retiring_workers+=("$stack-worker-$i"); done
  log "scaling $stack: app nodes $old_app -> $app, workers $old_workers -> $workers (log: $state/scale.log)"
  : >"$state/scale.log"
  if ((${#retiring_app[@]} + ${#retiring_workers[@]})); then
    log "draining ${retiring_app[*]:-no app node} and warm-stopping ${retiring_workers[*]:-no worker}"
    playbook scale.yml -e "{\"scale_retiring_app\": $(json_list "${retiring_app[@]}"),
      \"scale_retiring_workers\": $(json_list "${retiring_workers[@]}")}" >>"$state/scale.log" ||
      die "draining failed, nothing removed: see $state/scale.log"
  fi
  set_counts app_count="$app" worker_count="$workers"
  log "VMs: tofu apply"
  vms
  local adding
  # shellcheck disable=SC2046  # host names: one word each
  adding=$(json_list $(inventory_hosts app | grep -vxF "$before_hosts"))
  log "configuring the stack with release $release (full log: $state/scale.log); new app nodes stay out of the load balancers"
  playbook site.yml -e "{\"app_release\": \"$release\", \"nginx_upstream_drained\": $adding}" \
    >>"$state/scale.log" || die "site.yml failed: see $state/scale.log"
  log "proving every app node ready, then routing to all of them"
  playbook scale.yml >>"$state/scale.log" || die "a node is not ready; it stays out of the load balancers: see $state/scale.log"
  log "stack $stack: $app app nodes, $workers workers"
}

# restore TIME: restore the database as it was at TIME onto the scratch VM
# <stack>-restore (created if need be; the live cluster is not touched), check
# it and report what was restored and how long it took. TIME is anything
# date(1) reads, UTC unless it names a zone; it must be in the past.
restore() {
  local time=${1:-} target report=$state/restore.json
  [ -n "$time" ] || die "TIME is required: make restore TIME='2026-12-01 13:45:00' (UTC unless it names a zone)"
  target=$(TZ=UTC date -d "$time" '+%Y-%m-%d %H:%M:%S.%6N+00' 2>/dev/null) ||
    die "TIME must be a time date(1) can read, e.g. '2026-12-01 13:45:00' (got '$time')"
  (($(TZ=UTC date -d "$time" +%s) <= $(date +%s))) || die "TIME $target is in the future: nothing has been backed up for it yet"
  [ -s "$inventory/hosts.json" ] || die "stack $stack is not up (no $inventory/hosts.json): make up first"
  log "restoring stack $stack's database as of $target onto $stack-restore (log: $state/restore.log)"
  set_counts restore_count=1
  vms
  rm -f "$report"
  playbook restore.yml -e "{\"restore_target\": \"$target\", \"restore_report_file\": \"$FF_ROOT/$report\"}" \
    >"$state/restore.log" || die "the restore failed: see $state/restore.log"
  python3 - "$report" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
print(f"restored to {report['target']} from backup set {report['backup_set']} on {report['host']}: "
      f"restore {report['restore_seconds']} s, recovery {report['recovery_seconds']} s; "
      f"last replayed transaction {report['last_replayed_transaction']}")
for database in report["databases"]:
    tables = ", ".join(f"{name} {rows}" for name, rows in database["tables"].items())
    print(f"  {database['name']}: {database['size_bytes'] / 2**20:.1f} MiB; rows: {tables}")
PY
  log "the restored cluster runs on $stack-restore (sudo -u postgres psql there); report: $report; remove the VM with make restore-done"
}

# restore_done: remove the scratch VM.
restore_done() {
  set_counts restore_count=0
  vms
}

# stop_instances: stop the stack's running instances at once, with no
# shutdown. Only for down, which deletes them with their data: a clean
# shutdown protects nothing there, and LXD gives up on a VM whose services
# outlast its shutdown timeout (a Celery worker's warm shutdown waits for its
# running tasks), failing the destroy.
stop_instances() {
  local kind name
  leftovers | while read -r kind name; do
    [ "$kind" = instance ] && [ "$(lxc list --format csv -c s "^$name\$")" = RUNNING ] || continue
    lxc stop --force "$name"
  done
}

down() {
  log "removing stack $stack: VMs, network, inventory, secrets"
  stop_instances
  destroy_vms
  remove_leftovers
  rm -rf "$inventory/hosts.json" "$state"
  [ "$stack" != ff ] || rm -f inventories/local/group_vars/all/vault.yml
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  apply) shift; vms "$@" ;;
  destroy) shift; destroy_vms "$@" ;;
  smoke) smoke ;;
  scale) shift; scale "$@" ;;
  restore) shift; restore "$@" ;;
  restore-done) restore_done ;;
  ansible-playbook) shift; playbook "$@" ;;
  *) die "usage: stack.sh up|down|apply [TOFU_ARGS]|destroy [TOFU_ARGS]|smoke|scale APP [WORKERS]|restore TIME|restore-done|ansible-playbook ARGS..." ;;
esac
