"""Listens to everything on the test NATS server and checks each message against the contracts.

Every payload any worker emits during the test session is validated; the session fails at
teardown if one was not (see ``contract_tap`` in conftest.py).
"""

from __future__ import annotations

from nats.aio.client import Client
from nats.aio.msg import Msg

from contracts.subjects import SUBJECTS, Lane
from contracts.validate import check_message

FAMILIES = sorted({s.pattern.split(".", 1)[0] for s in SUBJECTS if s.lane is not Lane.RPC})

#: Tests that publish invalid messages on purpose (to prove dead-lettering) mark them so.
DELIBERATELY_INVALID = "Sb-Test-Deliberately-Invalid"


class ContractTap:
    def __init__(self, skip_marked: bool = True) -> None:
        self.skip_marked = skip_marked
        self.violations: list[str] = []
        self.checked = 0

    async def start(self, nc: Client) -> None:
        # Every family of declared subjects, under any prefix. Not the request/reply services: a tap
        # there would count as interest, hiding "no responders" and turning it into timeouts.
        for family in FAMILIES:
            await nc.subscribe(f"*.{family}.>", cb=self._on_message)

    async def _on_message(self, msg: Msg) -> None:
        headers = msg.headers or {}
        if self.skip_marked and DELIBERATELY_INVALID in headers:
            return
        self.checked += 1
        problem = check_message(msg.subject, headers, msg.data)
        if problem:
            self.violations.append(problem)
