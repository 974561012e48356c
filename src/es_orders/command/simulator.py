"""The demo's traffic: orders "1", "2", "3", then random changes, at a steady rate.

Like the original Kotlin demo, it creates the orders it drives first (unless they exist,
say after a restart against a kept broker) and then changes price, quantity or product
of a random one. Commands go through the same ``CommandHandler`` as HTTP clients, so
every simulated event is a valid one; a refusal (a cancelled order, a 503) is logged at
debug level and skipped. Orders in partitions another command instance holds are sent
to it over HTTP (``remote``), as a client's would be forwarded.

The schedule is fixed in monotonic time (command ``n`` is due at ``start + n / rate``),
so sleeping late never lowers the rate. Commands go one at a time from one thread: each
waits for its acknowledgement (well under a millisecond on a local broker), and more
threads were measured to be slower, not faster, under the GIL. When it falls more than
a second behind (the broker is slow), it skips ahead instead of bursting to catch up.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from es_orders.command.errors import CommandUnavailableError
from es_orders.command.handler import CommandHandler
from es_orders.command.remote import RemoteCommands
from es_orders.domain import (
    ChangePrice,
    ChangeProduct,
    ChangeQuantity,
    Command,
    CreateOrder,
    DomainError,
    OrderAlreadyExistsError,
)

log = logging.getLogger(__name__)

SEED_ORDER_IDS = ("1", "2", "3")
_MAX_LAG = 1.0
_REPORT_INTERVAL = 30.0


@dataclass
class SimulatorCounters:
    sent: int = 0
    appended: int = 0
    no_ops: int = 0
    refused: int = 0
    unavailable: int = 0
    forwarded: int = 0  # sent to the instance holding the order
    skipped: int = 0  # commands dropped from the schedule because it fell behind


class Simulator:
    """A ``serving.Worker`` sending ``rate`` commands a second until ``stop``."""

    def __init__(
        self,
        handler: CommandHandler,
        rate: float,
        *,
        order_ids: tuple[str, ...] = SEED_ORDER_IDS,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        remote: RemoteCommands | None = None,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"the simulator needs a positive rate, got {rate}")
        self.rate = rate
        self.counters = SimulatorCounters()
        self._handler = handler
        self._order_ids = order_ids
        self._rng = rng or random.Random()
        self._clock = clock
        self._remote = remote
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        if not self._wait_until_ready():
            return
        self._seed()
        log.info("simulator started rate=%s orders=%s", self.rate, ",".join(self._order_ids))
        self._drive()
        log.info("simulator stopped %s", self.counters)

    def _wait_until_ready(self) -> bool:
        while not self._stop.is_set():
            if self._handler.readiness().ready:
                return True
            self._stop.wait(0.2)
        return False

    def _seed(self) -> None:
        """Create each order that does not exist yet; retry while the service cannot."""
        for order_id in self._order_ids:
            while not self._stop.is_set():
                try:
                    status = self._execute(self._create(order_id))
                except OrderAlreadyExistsError:
                    break
                except (DomainError, CommandUnavailableError) as exc:
                    log.warning("simulator cannot create order=%s error=%s", order_id, exc)
                    self._stop.wait(1.0)
                    continue
                if status in {200, 201, 409}:
                    if status == 201:
                        log.info("simulator created order=%s", order_id)
                    break
                log.warning("simulator cannot create order=%s status=%s", order_id, status)
                self._stop.wait(1.0)

    def _execute(self, command: Command) -> int:
        """Decide ``command`` here, or send it to the instance holding its order: the HTTP
        status it had (200 for an event appended here, 204 for a no-op here)."""
        handler = self._handler
        if self._remote is not None and not handler.holds(handler.partition_of(command.order_id)):
            self.counters.forwarded += 1
            return self._remote.send(command).status_code
        accepted = handler.handle(command)
        if accepted.version == 1 and accepted.appended:
            return 201
        return 200 if accepted.appended else 204

    def _create(self, order_id: str) -> CreateOrder:
        rng = self._rng
        return CreateOrder(
            order_id,
            user_id=order_id,
            product_id=str(rng.randint(1, 100)),
            quantity=rng.randint(1, 100),
            price=rng.randint(1, 100),
        )

    def next_command(self) -> Command:
        """A random change of a random order, as the original demo sent."""
        rng = self._rng
        order_id = rng.choice(self._order_ids)
        match rng.randrange(3):
            case 0:
                return ChangePrice(order_id, rng.randint(1, 100))
            case 1:
                return ChangeQuantity(order_id, rng.randint(1, 100))
            case _:
                return ChangeProduct(order_id, str(rng.randint(1, 100)))

    def _drive(self) -> None:
        interval = 1.0 / self.rate
        last_report = due = self._clock()
        while not self._stop.is_set():
            now = self._clock()
            if now < due:
                self._stop.wait(due - now)
                continue
            if now - due > _MAX_LAG:
                skipped = int((now - due) / interval)
                self.counters.skipped += skipped
                log.warning("simulator cannot keep up rate=%s skipped=%s", self.rate, skipped)
                due += skipped * interval
            self._send(self.next_command())
            due += interval
            if now - last_report > _REPORT_INTERVAL:
                log.info("simulator progress %s", self.counters)
                last_report = now

    def _send(self, command: Command) -> None:
        try:
            status = self._execute(command)
        except DomainError as exc:
            self._count(refused=1)
            log.debug("simulated command refused command=%s error=%s", command, exc)
        except CommandUnavailableError as exc:
            self._count(unavailable=1)
            log.debug("simulated command not taken command=%s error=%s", command, exc)
        else:
            if status >= 500:
                self._count(unavailable=1)
            elif status >= 400:
                self._count(refused=1)
            else:
                # A forwarded 200 does not say whether it appended: counted as appended.
                self._count(appended=int(status != 204), no_ops=int(status == 204))

    def _count(
        self, *, appended: int = 0, no_ops: int = 0, refused: int = 0, unavailable: int = 0
    ) -> None:
        counters = self.counters
        counters.sent += 1
        counters.appended += appended
        counters.no_ops += no_ops
        counters.refused += refused
        counters.unavailable += unavailable
