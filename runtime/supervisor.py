"""The supervisor: starts children in order, restarts them by strategy, escalates.

Semantics follow OTP's ``supervisor``:

* Children start one at a time in spec order; if one fails to start, those
  already started are stopped in reverse order and the supervisor's own start
  fails, naming the child.
* When a child exits, its restart type decides whether it comes back
  (:class:`~runtime.spec.Restart`); the strategy decides which siblings are
  stopped (in reverse order) and restarted with it (in order). Temporary
  siblings stopped by a group restart are not started again.
* Every restart is counted in a sliding window: ``intensity`` restarts within
  ``period`` seconds are allowed, one more makes the supervisor stop all its
  children in reverse order and exit abnormally, which its parent sees as a
  crash (escalation). A restart that fails to start counts as another crash.
* Unlike OTP, consecutive restarts of a child are delayed by a jittered
  exponential backoff (:class:`~runtime.spec.Backoff`), scheduled on timers so
  that the supervisor keeps handling other exits and stop requests meanwhile.

All control work (exits, due restarts, stop requests) goes through one queue
and is handled by one loop, so decisions never interleave.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable

import anyio

from runtime.actor import ActorCell
from runtime.control import (
    ChildExited,
    Control,
    PendingRestart,
    RestartDue,
    StopRequested,
    control_queue,
)
from runtime.errors import describe_failure
from runtime.lifecycle import Crashed, Escalated, Restarted, Started, Stopped
from runtime.node import ExitInfo, ExitKind, Node, OnExit, Services, StartFailure, log
from runtime.spec import ChildSpec, Restart, Strategy, SupervisorSpec
from runtime.status import NodeState, SupervisorStatus


def build_node(spec: ChildSpec | SupervisorSpec, path: str, services: Services) -> Node:
    """Create the node for a child spec, registering workers for lookup."""
    if isinstance(spec, SupervisorSpec):
        return Supervisor(spec, path, services)
    if spec.id in services.cells:
        raise ValueError(f"actor id {spec.id!r} is used twice in the tree")
    cell = ActorCell(spec, path, services)
    services.cells[spec.id] = cell
    return cell


class Supervisor(Node):
    """A supervisor node: its own control loop plus the nodes of its children."""

    def __init__(self, spec: SupervisorSpec, path: str, services: Services) -> None:
        super().__init__(spec.id, path, spec.restart, services)
        self.spec = spec
        self.children = [
            build_node(child, f"{path}/{child.id}", services) for child in spec.children
        ]
        self._restart_log: deque[float] = deque()
        self._pending: dict[int, PendingRestart] = {}
        self._tokens = 0
        self._unprocessed = 0
        # Nodes are built inside the running event loop (ActorSystem.__aenter__),
        # so anyio primitives can be created here.
        self._changed = anyio.Event()
        self._finished = anyio.Event()
        self._send, self._receive = control_queue()
        self._send.close()  # replaced by a fresh queue at every start
        self._receive.close()

    # -- Node interface -------------------------------------------------------

    async def start(self, on_exit: OnExit) -> StartFailure | None:
        """Start the children in order, then run the control loop in the background."""
        self.incarnation += 1
        self.state = NodeState.STARTING
        self._send, self._receive = control_queue()
        self._finished = anyio.Event()
        self._restart_log.clear()
        failure = await self._start_children()
        if failure is not None:
            self.state = NodeState.FAILED
            self._send.close()
            self._receive.close()
            self._finished.set()
            return failure
        self.mark_running(self.incarnation)
        self.services.spawn_group().start_soon(
            self._control_loop, self.incarnation, on_exit, name=f"supervisor {self.path}"
        )
        return None

    async def stop(self) -> ExitInfo:
        """Stop the children in reverse order, each within its own timeout."""
        if self.active is None or self._finished.is_set():
            return ExitInfo(ExitKind.SHUTDOWN, "not running")
        self.state = NodeState.STOPPING
        self._post(StopRequested())
        limit = math.inf if self.spec.shutdown is None else self.spec.shutdown
        with anyio.move_on_after(limit):
            await self._finished.wait()
        if self._finished.is_set():
            return ExitInfo(ExitKind.SHUTDOWN, "stopped")
        log.warning("supervisor %s did not stop within %gs; abandoned", self.path, limit)
        return ExitInfo(ExitKind.ABANDONED, f"ignored shutdown for {limit:g}s")

    def close(self, reason: str) -> None:
        """Close every child's mailbox, depth first."""
        for child in self.children:
            child.close(reason)

    def status(self, period: float) -> SupervisorStatus:
        """A snapshot of this supervisor and its subtree."""
        return SupervisorStatus(
            name=self.id,
            path=self.path,
            state=self.state,
            strategy=self.spec.strategy.value,
            incarnation=self.incarnation,
            intensity=self.spec.intensity,
            period_seconds=self.spec.period,
            restarts_in_window=self.restarts_in_window(period),
            restarts_total=self.restarts_total,
            last_failure=self.last_failure,
            uptime_seconds=self.uptime(),
            children=[child.status(self.spec.period) for child in self.children],
        )

    async def wait_idle(self) -> None:
        """Wait until no exit or due restart is left to handle (for tests and tools)."""
        while self._busy():
            changed = self._changed
            await changed.wait()

    def supervisors(self) -> list[Supervisor]:
        """This supervisor and every supervisor below it."""
        found = [self]
        for child in self.children:
            if isinstance(child, Supervisor):
                found.extend(child.supervisors())
        return found

    # -- starting and stopping children --------------------------------------

    async def _start_children(self) -> StartFailure | None:
        started: list[Node] = []
        for child in self.children:
            failure = await child.start(self._exit_callback(child))
            if failure is not None:
                log.error(
                    "%s: child %s failed to start: %s", self.path, failure.path, failure.reason
                )
                await self._stop_nodes(started)
                return failure
            started.append(child)
            self._publish_started(child)
        return None

    def _exit_callback(self, node: Node) -> OnExit:
        def on_exit(incarnation: int, exit_info: ExitInfo) -> None:
            self._post(ChildExited(node, incarnation, exit_info))

        return on_exit

    async def _stop_nodes(self, nodes: Iterable[Node]) -> None:
        """Stop running nodes in reverse of the given order."""
        for node in reversed(list(nodes)):
            if node.active is None:
                continue
            exit_info = await node.stop()
            node.mark_exited(exit_info)
            self._publish(Stopped(path=node.path, at=self._wall(), exit=exit_info.kind.value))

    # -- the control loop ------------------------------------------------------

    def _post(self, event: Control) -> None:
        try:
            self._send.send_nowait(event)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return  # the loop has ended; nothing is waiting for this any more
        self._unprocessed += 1

    async def _control_loop(self, incarnation: int, on_exit: OnExit) -> None:
        exit_info = ExitInfo(ExitKind.SHUTDOWN, "stopped")
        try:
            async for event in self._receive:
                outcome = await self._dispatch(event)
                if outcome is not None:
                    self.exiting = True
                self._unprocessed -= 1
                self._notify()
                if outcome is not None:
                    exit_info = outcome
                    break
        except Exception as exc:
            # A bug in the supervisor itself: its parent must see a crash, not a
            # clean shutdown, so that it restarts this subtree or escalates.
            exit_info = ExitInfo(ExitKind.CRASH, describe_failure(exc))
            self.exiting = True
            log.error("supervisor %s failed: %s", self.path, exit_info.reason)
        finally:
            with anyio.CancelScope(shield=True):
                await self._wind_down(exit_info)
            self._finished.set()
            self._notify()
            on_exit(incarnation, exit_info)

    async def _dispatch(self, event: Control) -> ExitInfo | None:
        match event:
            case StopRequested():
                return ExitInfo(ExitKind.SHUTDOWN, "stopped")
            case ChildExited(node=node, incarnation=number, exit=exit_info):
                if node.active != number:
                    return None  # stopped by us, or an abandoned incarnation finishing late
                consecutive = node.note_failure(self.spec.backoff.reset_after)
                node.mark_exited(exit_info)
                return await self._handle_exit(node, exit_info, consecutive)
            case RestartDue(token=token):
                pending = self._pending.pop(token, None)
                if pending is not None:
                    await self._restart_nodes(pending.nodes, pending.delay)
                return None

    async def _wind_down(self, exit_info: ExitInfo) -> None:
        """Cancel pending restarts and stop every child in reverse order."""
        for pending in self._pending.values():
            pending.scope.cancel()
        self._pending.clear()
        self._send.close()
        self._receive.close()
        # Exits still queued are moot now: every child is stopped below.
        self._unprocessed = 0
        await self._stop_nodes(self.children)
        for child in self.children:
            if child.state is NodeState.RESTARTING:
                child.state = NodeState.STOPPED
        self.state = NodeState.FAILED if exit_info.crashed else NodeState.STOPPED

    # -- exits and restarts ----------------------------------------------------

    async def _handle_exit(
        self, node: Node, exit_info: ExitInfo, consecutive: int
    ) -> ExitInfo | None:
        if exit_info.crashed:
            log.warning("%s crashed: %s", node.path, exit_info.reason)
            self._publish(Crashed(path=node.path, at=self._wall(), reason=exit_info.reason))
        if not node.restart.wants_restart(exit_info.crashed):
            self._publish(Stopped(path=node.path, at=self._wall(), exit=exit_info.kind.value))
            node.close(f"exited ({exit_info.kind.value}) and is not restarted")
            return None
        if self._intensity_exceeded():
            return await self._escalate(node, exit_info)
        group = self._restart_group(node)
        await self._stop_nodes(n for n in group if n is not node)
        group = self._drop_temporary(group, keep=node)
        delay = self.spec.backoff.delay(consecutive, self.services.rng)
        self._supersede_pending(group)
        for member in group:
            member.state = NodeState.RESTARTING
        if delay <= 0:
            await self._restart_nodes(group, 0.0)
        else:
            self._schedule(group, delay)
        return None

    def _intensity_exceeded(self) -> bool:
        """Count a restart; OTP keeps restarts at most ``period`` old (boundary included)."""
        now = self.services.clock.monotonic()
        self._restart_log.append(now)
        while self._restart_log and self._restart_log[0] < now - self.spec.period:
            self._restart_log.popleft()
        return len(self._restart_log) > self.spec.intensity

    def _restart_group(self, node: Node) -> list[Node]:
        index = self.children.index(node)
        match self.spec.strategy:
            case Strategy.ONE_FOR_ONE:
                return [node]
            case Strategy.ONE_FOR_ALL:
                return list(self.children)
            case Strategy.REST_FOR_ONE:
                return self.children[index:]

    def _drop_temporary(self, group: list[Node], keep: Node) -> list[Node]:
        kept = []
        for member in group:
            if member is not keep and member.restart is Restart.TEMPORARY:
                member.close("stopped by a sibling's restart and is temporary")
            else:
                kept.append(member)
        return kept

    def _supersede_pending(self, group: list[Node]) -> None:
        """Cancel pending restarts that ``group``'s restart covers (immediate or not)."""
        for token, pending in list(self._pending.items()):
            if any(member in group for member in pending.nodes):
                pending.scope.cancel()
                del self._pending[token]

    def _schedule(self, group: list[Node], delay: float) -> None:
        """Restart ``group`` after ``delay`` seconds."""
        self._tokens += 1
        deadline = self.services.clock.monotonic() + delay
        pending = PendingRestart(group, delay, deadline, anyio.CancelScope())
        self._pending[self._tokens] = pending
        log.info("%s: restarting %s in %.3fs", self.path, [n.id for n in group], delay)
        self.services.spawn_group().start_soon(self._timer, self._tokens, pending)

    async def _timer(self, token: int, pending: PendingRestart) -> None:
        with pending.scope:
            await self.services.clock.sleep_until(pending.deadline)
            self._post(RestartDue(token))

    async def _restart_nodes(self, group: list[Node], delay: float) -> None:
        """Start ``group`` in order; a failure is handled as that child's crash."""
        for member in group:
            if member.active is not None:
                continue  # already running: never start a second copy
            failure = await member.start(self._exit_callback(member))
            if failure is not None:
                # Handle it as an exit of this child: it counts towards the
                # intensity and the strategy picks what to restart again.
                member.active = member.incarnation
                self._post(
                    ChildExited(
                        member,
                        member.incarnation,
                        ExitInfo(ExitKind.CRASH, f"restart failed: {failure.reason}"),
                    )
                )
                return
            member.note_restart()
            self._publish(
                Restarted(
                    path=member.path,
                    at=self._wall(),
                    incarnation=member.incarnation,
                    restarts_total=member.restarts_total,
                    delay=delay,
                )
            )

    async def _escalate(self, node: Node, exit_info: ExitInfo) -> ExitInfo:
        reason = (
            f"more than {self.spec.intensity} restarts within {self.spec.period:g}s; "
            f"last exit of {node.id!r}: {exit_info.reason}"
        )
        log.error("supervisor %s escalates: %s", self.path, reason)
        self._publish(Escalated(path=self.path, at=self._wall(), reason=reason))
        return ExitInfo(ExitKind.CRASH, reason)

    # -- helpers ------------------------------------------------------------

    def _busy(self) -> bool:
        now = self.services.clock.monotonic()
        due = any(p.deadline <= now for p in self._pending.values())
        return self._unprocessed > 0 or due or any(child.exiting for child in self.children)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def _publish_started(self, node: Node) -> None:
        if node.incarnation == 1:
            self._publish(Started(path=node.path, at=self._wall(), incarnation=1))
        else:
            node.note_restart()
            self._publish(
                Restarted(
                    path=node.path,
                    at=self._wall(),
                    incarnation=node.incarnation,
                    restarts_total=node.restarts_total,
                    delay=0.0,
                )
            )

    def _publish(self, event: Started | Crashed | Restarted | Stopped | Escalated) -> None:
        self.services.events.publish_nowait(event)

    def _wall(self) -> float:
        return self.services.clock.wall()
