#!/usr/bin/env bash
# A stack's secrets, generated on its first run and never printed:
#   .secrets/<stack>/vault-password   random, mode 0600
#   .secrets/<stack>/vault.yml        ansible-vault encrypted vault_* variables; playbooks
#                                     load it with -e @ (scripts/vault.py says what is in it)
#   .secrets/<stack>/api-tokens.yml   the API clients' tokens, encrypted the same way
#   .secrets/<stack>/ssh/id_ed25519   the stack's admin key pair (Ansible's SSH login;
#                                     the public half goes to the instances)
# (.secrets/ is gitignored.)
# Prints the directory.
. "$(dirname "$0")/lib.sh"

stack=${1:?usage: secrets.sh STACK}
[[ $stack =~ ^[a-z][a-z0-9-]*$ ]] || die "stack name must match ^[a-z][a-z0-9-]*$: $stack"
secret_dir="$FF_ROOT/.secrets/$stack"
password_file="$secret_dir/vault-password"

umask 077
mkdir -p "$secret_dir"
[ -s "$password_file" ] || python3 -c 'import secrets; print(secrets.token_urlsafe(32))' >"$password_file"

"$FF_ROOT/.venv/bin/python" "$FF_ROOT/scripts/vault.py" "$secret_dir"
mkdir -p "$secret_dir/ssh"
[ -s "$secret_dir/ssh/id_ed25519" ] ||
  ssh-keygen -q -t ed25519 -N '' -C "flaskfleet-$stack-admin" -f "$secret_dir/ssh/id_ed25519"
echo "$secret_dir"
