"""A runner's claims without a real process: requests take their turns in arrival order (a
request for other load options is not starved by a flow of same-spec ones), and a start every
waiter abandoned is cancelled while one someone still waits for goes on."""

from __future__ import annotations

import asyncio
from pathlib import Path

from supervisor.runners.launch import LaunchSpec
from supervisor.runners.runner import Runner, State


def _spec(num_ctx: int) -> LaunchSpec:
    return LaunchSpec(binary=Path("/bin/llama-server"), model_path=Path("/m.gguf"), num_ctx=num_ctx, threads=1,
                      parallel=1)


class _FakeRunner(Runner):
    """Its "process" is ready as soon as `loads` lets it (at once, unless a test holds it)."""

    def __init__(self) -> None:
        super().__init__("m", keep_alive=60, load_timeout=60, stop_grace=1)
        self.loads = asyncio.Event()
        self.loads.set()
        self.started: list[int] = []
        self.abandoned = 0

    async def _spawn(self, spec: LaunchSpec) -> None:
        self.state = State.STARTING
        try:
            await self.loads.wait()
        except asyncio.CancelledError:
            self.abandoned += 1
            await asyncio.sleep(0.05)  # a process takes a moment to stop
            raise
        self.started.append(spec.num_ctx)
        self._running_spec = spec
        self.state = State.READY


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_a_request_for_other_load_options_is_served_in_arrival_order():
    async def main() -> None:
        runner = _FakeRunner()
        default, big = _spec(2048), _spec(8192)
        await runner.acquire(default, None)  # a RAG job's request in flight
        order: list[str] = []

        async def request(spec: LaunchSpec, name: str) -> None:
            await runner.acquire(spec, None)
            order.append(name)

        webui = asyncio.create_task(request(big, "num_ctx 8192"))
        await _settle()
        rag = asyncio.create_task(request(default, "next RAG request"))
        await _settle()
        # The next same-spec request queues behind the one waiting for the restart.
        assert order == [] and runner.waiting == 2
        await runner.release(served=True)
        await webui
        assert order == ["num_ctx 8192"] and runner.serving(big) and runner.waiting == 1
        await runner.release(served=True)
        await rag
        assert order == ["num_ctx 8192", "next RAG request"] and runner.serving(default)
        assert runner.started == [2048, 8192, 2048]
        await runner.release(served=True)
        await runner.stop()

    asyncio.run(main())


def test_same_spec_requests_share_the_runner_while_nobody_else_waits():
    async def main() -> None:
        runner = _FakeRunner()
        spec = _spec(2048)
        await runner.acquire(spec, None)
        await asyncio.wait_for(runner.acquire(spec, None), 1)
        assert runner.active == 2 and runner.started == [2048]
        await runner.release(served=True)
        await runner.release(served=True)
        await runner.stop()

    asyncio.run(main())


async def _served_afresh(runner: _FakeRunner, spec: LaunchSpec) -> None:
    """A request after abandoned starts gets a start of its own, which completes."""
    runner.loads.set()
    await asyncio.wait_for(runner.acquire(spec, None), 1)
    assert runner.serving(spec) and runner.started == [spec.num_ctx]
    await runner.release(served=True)
    await runner.stop()


def test_a_start_is_abandoned_only_when_its_last_waiter_leaves():
    async def main() -> None:
        runner = _FakeRunner()
        runner.loads.clear()
        spec = _spec(2048)
        first = asyncio.create_task(runner.acquire(spec, None))
        second = asyncio.create_task(runner.acquire(spec, None))
        await _settle()
        first.cancel()
        await _settle()
        assert runner.abandoned == 0 and runner.active == 1  # the second still waits for it
        second.cancel()
        await asyncio.sleep(0.1)
        assert runner.abandoned == 1 and runner.active == 0 and runner.state is State.STOPPED
        await _served_afresh(runner, spec)

    asyncio.run(main())


def test_a_request_arriving_while_an_abandoned_start_winds_down_gets_a_start_of_its_own():
    async def main() -> None:
        runner = _FakeRunner()
        runner.loads.clear()
        spec = _spec(2048)
        gone = asyncio.create_task(runner.acquire(spec, None))
        await _settle()
        gone.cancel()
        await _settle()
        # The abandoned start is still stopping its process when the next request arrives.
        assert runner.abandoned == 1 and runner.state is State.STARTING
        await _served_afresh(runner, spec)

    asyncio.run(main())
