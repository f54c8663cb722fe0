"""A second process for tests/test_audit.py: appends events to an audit log at the same time
as another process does (the flock on ``<log>.lock`` must keep one valid chain).

Protocol: ``python audit_worker.py <log path> <label> <count>`` with the audit key (hex) in
``LOCKKIT_TEST_AUDIT_KEY``; prints ``ready``, waits for one line on stdin (so both workers
start writing together, without sleeps), appends ``count`` events (single events and small
batches), prints ``done``.
"""

from __future__ import annotations

import os
import sys
import time

from lockkit.audit import AuditEvent, AuditLog, Auditor


def main() -> int:
    path, label, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    log = AuditLog(path, bytes.fromhex(os.environ["LOCKKIT_TEST_AUDIT_KEY"]))
    auditor = Auditor([log])

    def event(i: int) -> AuditEvent:
        return AuditEvent(time=time.time(), workspace="crn:local:ws-test", keyset="default", backend="local",
                          operation="decrypt", table="notes", column="body", count=1, outcome="granted",
                          subject=label, records=(f"{label}-{i}",))

    print("ready", flush=True)
    sys.stdin.readline()
    i = 0
    while i < count:
        n = 1 if i % 3 else min(2, count - i)  # mostly single events, some batches of two
        auditor.record([event(i + k) for k in range(n)])
        i += n
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
