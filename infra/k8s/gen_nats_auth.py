"""The NATS credentials of a Kubernetes deployment, as the two Secrets the manifests mount.

    .venv/bin/python infra/k8s/gen_nats_auth.py OUT_DIR
    kubectl -n switchboard create secret generic nats-auth --from-file=auth.conf=OUT_DIR/auth.conf
    kubectl -n switchboard create secret generic switchboard-nats-passwords --from-env-file=OUT_DIR/passwords.env

``auth.conf`` is the NATS server's ``authorization`` block (bcrypt hashes, each service's
permissions derived from the code: ops/access.py), included by the server's nats.conf;
``passwords.env`` holds one line ``USER=PASSWORD`` per user (every service and ``ops``), the
keys each Deployment's SB_NATS_PASSWORD is read from. The passwords are kept in
``OUT_DIR/credentials.json`` (mode 0600) and reused by the next run, which rewrites the hashes
and the permissions only: run it again after an upgrade that changes the contracts, and
replace ``nats-auth`` (the NATS nodes reload nothing by themselves: roll them). Delete the
folder to rotate every password. Keep OUT_DIR out of version control.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ops import access


def write(folder: Path) -> tuple[Path, Path]:
    passwords = access.credentials(folder)
    conf = folder / "auth.conf"
    env = folder / "passwords.env"
    for path, text in (
        (conf, "authorization " + json.dumps(access.authorization(passwords), indent=2) + "\n"),
        (env, "".join(f"{user}={passwords[user]}\n" for user in access.USERS)),
    ):
        path.touch(mode=0o600, exist_ok=True)
        path.chmod(0o600)
        path.write_text(text)
    return conf, env


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} OUT_DIR")
    conf, env = write(Path(sys.argv[1]))
    print(f"wrote {conf} and {env}; create the Secrets with:")
    print(f"  kubectl -n switchboard create secret generic nats-auth --from-file=auth.conf={conf}")
    print(f"  kubectl -n switchboard create secret generic switchboard-nats-passwords --from-env-file={env}")


if __name__ == "__main__":
    main()
