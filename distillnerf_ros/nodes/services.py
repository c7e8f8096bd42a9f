"""Service plumbing shared by the nodes: answering the requests still queued for a service before it goes."""

from __future__ import annotations

import time
from collections.abc import Callable

from rclpy.service import Service


def answer_waiting_requests(service: Service, respond: Callable[[object, object], object], quiet_s: float = 0.1,
                            limit_s: float = 2.0) -> int:
    """Take every request queued for `service` and send respond(request, fresh_response) back, until none has
    come for `quiet_s` (requests still on their way from a client arrive meanwhile) or `limit_s` has passed;
    returns how many were answered. Call it on the executor thread, right before destroying the service: a
    request left in its queue would never be answered (the client waits forever)."""
    answered, started = 0, time.monotonic()
    quiet_until = started + quiet_s
    while time.monotonic() < started + limit_s:
        with service.handle:
            taken = service.handle.service_take_request(service.srv_type.Request)
        request, header = taken if taken is not None else (None, None)
        if header is None:
            if time.monotonic() >= quiet_until:
                break
            time.sleep(0.005)
            continue
        service.send_response(respond(request, service.srv_type.Response()), header)
        answered += 1
        quiet_until = time.monotonic() + quiet_s
    return answered
