"""The NATS credentials of a Kubernetes deployment, as the two Secrets the manifests mount.

    .venv/bin/python infra/k8s/gen_nats_auth.py OUT_DIR [PREFIX ...]
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

Each service's JetStream permissions name the streams of the deployment's subject prefixes
(``SB_SUBJECT_PREFIX`` in config.yaml; ``sb`` when none is given): name every prefix the cluster's
NATS serves (cells), and run it again when that changes.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from contracts.subjects import DEFAULT_PREFIX
from ops import access


def write(folder: Path, prefixes: Sequence[str] = (DEFAULT_PREFIX,)) -> tuple[Path, Path]:
    passwords = access.credentials(folder)
    conf = folder / "auth.conf"
    env = folder / "passwords.env"
    for path, text in (
        (conf, "authorization " + json.dumps(access.authorization(passwords, prefixes), indent=2) + "\n"),
        (env, "".join(f"{user}={passwords[user]}\n" for user in access.USERS)),
    ):
        path.touch(mode=0o600, exist_ok=True)
        path.chmod(0o600)
        path.write_text(text)
    return conf, env


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(f"usage: {sys.argv[0]} OUT_DIR [PREFIX ...]  (the subject prefixes served; default: {DEFAULT_PREFIX})")
    conf, env = write(Path(sys.argv[1]), tuple(sys.argv[2:]) or (DEFAULT_PREFIX,))
    print(f"wrote {conf} and {env}; create the Secrets with:")
    print(f"  kubectl -n switchboard create secret generic nats-auth --from-file=auth.conf={conf}")
    print(f"  kubectl -n switchboard create secret generic switchboard-nats-passwords --from-env-file={env}")


if __name__ == "__main__":
    main()
