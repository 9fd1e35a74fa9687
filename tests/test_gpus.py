"""GPUs: discovery from `llama-server --list-devices`, the placement read from its load log, the
VRAM-aware estimate, fit and eviction, Ollama's knobs (OLLAMA_GPU_OVERHEAD, OLLAMA_SCHED_SPREAD,
OLLAMA_MAX_LOADED_MODELS=0), the default num_ctx by VRAM, and the reports (/api/ps, `llamagate
ps`, /metrics, the status page, `llamagate config`). Without a GPU here, the machines of one and
two GPUs are tests/fake_llama_server.py's, printing what llama-server prints; the machine of none
is also the real CPU llama-server's."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import httpx
import ollama
import pytest
from conftest import Server, fake_upstream_server, wait_until
from tinymodel import write_tiny_model

from supervisor.config import Config, SettingError
from supervisor.runners import memory
from supervisor.runners.memory import FIT_MARGIN, Estimate
from supervisor.runners.launch import LaunchSpec
from supervisor.runners.placement import LoadLog
from supervisor.runners.runner import Runner
from supervisor.runners.scheduler import Scheduler
from supervisor.runtime.devices import GIB, MIB, Device, default_context_length, list_devices, parse_device_list, \
    processor

# What llama.cpp's common/arg.cpp prints for `--list-devices` (the first from this machine's real build).
NO_GPU = "Available devices:\n  (none)\n"
ONE_GPU = ("ggml_cuda_init: found 1 CUDA devices:\nAvailable devices:\n"
           "  CUDA0: NVIDIA GeForce RTX 4090 (24564 MiB, 23012 MiB free)\n")
TWO_GPUS = ("Available devices:\n  CUDA0: NVIDIA GeForce RTX 4090 (24564 MiB, 23012 MiB free)\n"
            "  CUDA1: NVIDIA RTX A6000 (48670 MiB, 48000 MiB free)\n  BLAS: OpenBLAS (0 MiB, 0 MiB free)\n")


def test_device_lists_of_zero_one_and_two_gpus():
    assert parse_device_list(NO_GPU) == []
    assert parse_device_list(ONE_GPU) == [Device("CUDA0", "NVIDIA GeForce RTX 4090", 24564 * MIB, 23012 * MIB)]
    two = parse_device_list(TWO_GPUS)  # BLAS has no memory of its own: no GPU
    assert [(d.name, d.backend, d.total // MIB) for d in two] == [("CUDA0", "CUDA", 24564), ("CUDA1", "CUDA", 48670)]
    metal = parse_device_list("Available devices:\n  MTL0: Apple M3 Max (98304 MiB, 98303 MiB free)\n")
    assert metal[0].backend == "Metal" and metal[0].free == 98303 * MIB


def test_the_real_cpu_build_lists_no_gpu(llama_server_binary: Path):
    assert list_devices(llama_server_binary) == []


# A CUDA load at --log-verbosity 4, its --fit trial first (the same lines, to be replaced).
CUDA_LOG = """\
0.00.100.000 I load_tensors: offloading 30 repeating layers to GPU
0.00.100.001 I load_tensors: offloaded 31/31 layers to GPU
0.00.100.002 I load_tensors:        CUDA0 model buffer size =   999.00 MiB
0.00.200.000 I load_tensors: loading model tensors, this can take a while... (load_mode = mmap)
0.00.200.001 I load_tensors: offloading 30 repeating layers to GPU
0.00.200.002 I load_tensors: offloaded 31/31 layers to GPU
0.00.200.003 I load_tensors:        CUDA0 model buffer size =    72.54 MiB
0.00.200.004 I load_tensors:   CPU_Mapped model buffer size =    20.00 MiB
0.00.300.000 I llama_context:  CUDA_Host  output buffer size =     0.75 MiB
0.00.300.001 I llama_kv_cache:      CUDA0 KV buffer size =    45.00 MiB
0.00.300.002 I sched_reserve:      CUDA0 compute buffer size =   100.00 MiB
0.00.300.003 I sched_reserve:  CUDA_Host compute buffer size =     5.25 MiB
"""


def test_the_load_log_gives_the_real_placement():
    log = LoadLog()
    for line in CUDA_LOG.splitlines():
        log.feed(line)
    placed = log.placement(file_size=96 * MIB)
    assert placed.vram == {"CUDA0": int(72.54 * MIB) + 45 * MIB + 100 * MIB}  # the trial's 999 replaced
    assert (placed.gpu_layers, placed.layers) == (31, 31)
    assert placed.weights == 20 * MIB and placed.kv_and_buffers == int(0.75 * MIB) + int(5.25 * MIB)
    # Every layer on the GPU: reported as VRAM alone, as Ollama does, so `ps` says 100% GPU.
    assert placed.size == placed.vram_total and processor(placed.size, placed.vram_total) == "100% GPU"
    # Mapped weights are the file's page cache: never more than the GPU doesn't hold of it.
    assert log.placement(file_size=80 * MIB).weights == 80 * MIB - int(72.54 * MIB)
    assert LoadLog().placement(1) is None  # nothing printed yet (or a build that doesn't)


def test_the_real_cpu_log_places_everything_in_ram():
    log = LoadLog()
    for line in ("0.00.466.766 I load_tensors:   CPU_Mapped model buffer size =    92.10 MiB",
                 "0.00.470.431 I llama_context:        CPU  output buffer size =     0.75 MiB",
                 "0.00.470.837 I llama_kv_cache:        CPU KV buffer size =    45.00 MiB",
                 "0.00.527.058 I sched_reserve:        CPU compute buffer size =    16.64 MiB"):
        log.feed(line)
    placed = log.placement(file_size=100 * MIB)
    assert placed.vram == {} and placed.weights == int(92.10 * MIB)
    assert processor(placed.size, placed.vram_total) == "100% CPU"


@pytest.mark.parametrize("size, vram, text", [
    (100, 0, "100% CPU"), (100, 100, "100% GPU"), (100, 52, "48%/52% CPU/GPU"), (100, 101, "Unknown"),
])
def test_processor_as_ollama_prints_it(size, vram, text):
    assert processor(size, vram) == text


def _gpus(*gib: float) -> list[Device]:
    return [Device(f"CUDA{i}", "card", int(g * GIB), int(g * GIB)) for i, g in enumerate(gib)]


@pytest.mark.parametrize("devices, overhead, expected", [
    ([], 0, 4096),
    (_gpus(8), 0, 4096),
    ([Device("CUDA0", "RTX 4090", 24564 * MIB, 0)], 0, 32768),  # a "24 GB" card counts as one
    ([Device("CUDA0", "RTX 4090", 24564 * MIB, 0)], 2 * GIB, 4096),  # OLLAMA_GPU_OVERHEAD comes off
    (_gpus(24, 24), 0, 262144),
    (_gpus(139), 0, 262144),
])
def test_default_context_by_vram(devices, overhead, expected):
    assert default_context_length(devices, overhead) == expected


def test_estimate_split_between_gpus_and_ram(tiny_gguf: Path):
    file = tiny_gguf.stat().st_size
    cpu = memory.estimate(tiny_gguf, 512)
    assert cpu.vram == {} and cpu.weights == file
    # Room to spare: every layer (2 blocks + output) on the GPU, the file's weights leave RAM.
    full = memory.estimate(tiny_gguf, 512, {"CUDA0": 8 * GIB})
    assert (full.gpu_layers, full.layers) == (3, 3) and full.weights == 0 and full.vram["CUDA0"] > 256 * MIB
    # num_gpu 0: all in RAM, whatever the GPUs; num_gpu 1: one layer, as asked.
    assert memory.estimate(tiny_gguf, 512, {"CUDA0": 8 * GIB}, 0) == cpu
    one = memory.estimate(tiny_gguf, 512, {"CUDA0": 8 * GIB}, 1)
    assert one.gpu_layers == 1 and 0 < one.weights < file
    # --fit leaves its margin: a GPU with less than that and the compute buffer takes no layer.
    assert memory.estimate(tiny_gguf, 512, {"CUDA0": FIT_MARGIN + 255 * MIB}).gpu_layers == 0
    # Two GPUs share the layers by their free memory, as llama.cpp's default split does.
    two = memory.estimate(tiny_gguf, 512, {"CUDA0": 4 * GIB, "CUDA1": 12 * GIB})
    assert two.gpu_layers == 3 and two.vram["CUDA1"] > two.vram["CUDA0"]


def test_gpu_free_counts_starting_runners_and_caps_by_what_ours_hold():
    devices = [Device("CUDA0", "card", 24 * GIB, 20 * GIB)]
    loaded, starting = Estimate(0, 0, {"CUDA0": 6 * GIB}), Estimate(0, 0, {"CUDA0": 3 * GIB})
    # Listed free (20) less the starting runner's (3) = 17, but no more than total less ours = 15.
    assert memory.gpu_free(devices, 0, [loaded], [starting]) == {"CUDA0": 15 * GIB}
    assert memory.gpu_free(devices, GIB, [loaded], [starting]) == {"CUDA0": 14 * GIB}
    assert memory.gpu_free(devices, 0) == {"CUDA0": 20 * GIB}


def test_one_gpu_unless_spread(tiny_gguf: Path):
    # Alone on the one with the most free memory where it takes at most 80 %; none: split over all.
    assert memory.single_gpu(tiny_gguf, 512, {"CUDA0": 2 * GIB, "CUDA1": 4 * GIB}) == "CUDA1"
    assert memory.single_gpu(tiny_gguf, 512, {"CUDA0": 300 * MIB, "CUDA1": 310 * MIB}) is None
    assert memory.single_gpu(tiny_gguf, 512, {"CUDA0": 4 * GIB}) is None


def test_vram_fits_wants_as_many_layers_as_an_empty_machine_gives():
    best = Estimate(0, 0, {"CUDA0": GIB}, 31, 31)
    assert memory.vram_fits(Estimate(0, 0, {"CUDA0": GIB}, 31, 31), best, {"CUDA0": 2 * GIB})
    assert not memory.vram_fits(Estimate(0, 0, {"CUDA0": GIB}, 15, 31), best, {"CUDA0": 2 * GIB})
    # An explicit num_gpu that doesn't fit the room left.
    assert not memory.vram_fits(Estimate(0, 0, {"CUDA0": 3 * GIB}, 31, 31), best, {"CUDA0": 2 * GIB})


def test_max_loaded_models_zero_is_three_per_gpu():
    scheduler = Scheduler(Config())
    assert scheduler.max_loaded() == 3
    scheduler.devices.current = _gpus(24, 24)
    assert scheduler.max_loaded() == 6
    scheduler.config.max_loaded_models = 2
    assert scheduler.max_loaded() == 2


def test_gpu_settings(monkeypatch):
    assert (Config.load().gpu_overhead, Config.load().sched_spread, Config.load().context_length) == (0, False, 0)
    monkeypatch.setenv("OLLAMA_GPU_OVERHEAD", "1GiB")
    monkeypatch.setenv("OLLAMA_SCHED_SPREAD", "1")
    assert (Config.load().gpu_overhead, Config.load().sched_spread) == (GIB, True)
    for name, bad, says in (("OLLAMA_GPU_OVERHEAD", "lots", "not a size"), ("OLLAMA_SCHED_SPREAD", "maybe",
                                                                               "not a boolean")):
        monkeypatch.setenv(name, bad)
        with pytest.raises(SettingError, match=f'{name}="{bad}" \\(environment\\): {says}'):
            Config.load()
        monkeypatch.delenv(name)


# End to end: a real `llamagate serve` in front of the fake llama-server, on machines of 0, 1 and 2 GPUs.

RTX = "NVIDIA GeForce RTX 4090:24564:23012"


def _serve(tmp: Path, gpus: str, **env: str) -> Server:
    srv = fake_upstream_server(tmp, env={"FAKE_GPUS": gpus, **env})
    # A long training context: the default num_ctx shows uncapped.
    _create(srv, "big", write_tiny_model(tmp / "big.gguf", context_length=300_000))
    return srv


def _create(srv: Server, name: str, gguf: Path) -> None:
    """Imported through the API (quicker than a `llamagate create` process)."""
    client = ollama.Client(host=srv.url)
    client.create(model=name, files={gguf.name: client.create_blob(gguf)})


def _argv(srv: Server) -> list[str]:
    return [r["argv"] for r in srv.requests() if "argv" in r][-1]


def _ps_row(srv: Server, name: str) -> str:
    return next(line for line in srv.cli("ps").stdout.splitlines() if line.startswith(name))


def _buffer_mib(name: str, kind: str, log: list[str]) -> float:
    return sum(float(m[1]) for line in log if (m := re.search(rf"\b{name} {kind} buffer size = +([\d.]+) MiB", line)))


def test_a_request_during_the_startup_gpu_listing_gets_the_gpu_default_context(tmp_path: Path):
    """The listing runs beside the first requests (a GPU build takes seconds to list); a request
    that comes meanwhile waits for it, rather than keeping the no-GPU num_ctx for its model's life."""
    srv = _serve(tmp_path, f"CUDA0={RTX}", FAKE_LIST_SECONDS="3")
    client = ollama.Client(host=srv.url)
    try:
        assert "GPUs found by" not in srv.log()  # still listing
        client.generate(model="big", prompt="hi")
        assert client.ps().models[0].context_length == 32768
        assert "--ctx-size" in (argv := _argv(srv)) and argv[argv.index("--ctx-size") + 1] == "32768"
    finally:
        srv.stop()


def test_one_gpu_full_partial_and_eviction(tmp_path: Path):
    """Each model takes 11.7 GB of a 24 GB card, 2/3 of it KV cache (the fake's placement)."""
    srv = _serve(tmp_path, f"CUDA0={RTX}", FAKE_MODEL_MIB="4000", FAKE_KV_MIB="7700")
    client = ollama.Client(host=srv.url)
    try:
        client.generate(model="big", prompt="hi")
        (m,) = client.ps().models
        # The fake's CUDA0 buffers: the weights, the KV cache, 10 MiB of compute.
        assert m.size_vram == m.size == (4000 + 7700 + 10) * MIB
        assert m.context_length == 32768  # a 24 GB card's default
        assert "100% GPU" in _ps_row(srv, "big")
        assert "--device" not in _argv(srv)  # one GPU: nothing to choose
        assert "GPUs found by" in srv.log() and "CUDA0 NVIDIA GeForce RTX 4090 (24564 MiB, 23012 MiB free)" in srv.log()
        metrics = httpx.get(f"{srv.url}/metrics").text
        assert _metric(metrics, "llamagate_gpu_memory_total_bytes", "CUDA0") == 24564 * MIB
        assert _metric(metrics, "llamagate_gpu_memory_free_bytes", "CUDA0") == 23012 * MIB
        assert _metric(metrics, "llamagate_gpu_memory_used_by_models_bytes", "CUDA0") == m.size_vram
        page = httpx.get(f"{srv.url}/ui").text
        assert "CUDA0 NVIDIA GeForce RTX 4090: 11710 MB of ours" in page and "100% GPU" in page
        config = srv.cli("config", "--llama-server", str(tmp_path / "llama-server")).stdout
        assert "gpus = CUDA0 NVIDIA GeForce RTX 4090 (24564 MiB, 23012 MiB free)" in config
        # num_gpu 15 of 31 layers: the split, as Ollama prints it; then unloaded (keep_alive 0).
        client.generate(model="big", prompt="hi", options={"num_gpu": 15})
        (m,) = client.ps().models
        log = _log_lines(srv)
        vram = sum(_buffer_mib("CUDA0", k, log) for k in ("model", "KV", "compute"))
        ram = sum(_buffer_mib(n, k, log) for n, k in (("CPU_Mapped", "model"), ("CPU", "KV"), ("CPU ", "output"),
                                                       ("CUDA_Host", "compute")))
        # Mapped weights count no more than the file holds beyond what the GPU has (none here).
        ram -= _buffer_mib("CPU_Mapped", "model", log)
        assert m.size_vram == pytest.approx(vram * MIB, abs=8) and m.size == pytest.approx((vram + ram) * MIB, abs=8)
        cpu = round(100 * ram / (vram + ram))
        assert f"{cpu}%/{100 - cpu}% CPU/GPU" in _ps_row(srv, "big") and 0 < cpu < 100
        client.generate(model="big", prompt="hi", options={"num_gpu": 15}, keep_alive=0)
        # A third model doesn't fit next to two: the one to go is the one whose keep_alive ends
        # first, not the oldest.
        for i, name in enumerate("abc"):  # three files: aliases of one would share a runner
            _create(srv, name, write_tiny_model(tmp_path / f"{name}.gguf", context_length=256 + i))
        client.generate(model="a", prompt="hi", keep_alive="10m")
        client.generate(model="b", prompt="hi", keep_alive="1m")
        assert {m.model for m in client.ps().models} == {"a:latest", "b:latest"}
        client.generate(model="c", prompt="hi")
        assert wait_until(lambda: {m.model for m in client.ps().models} == {"a:latest", "c:latest"})
        assert "needs room (GPU memory): evicting b:latest" in srv.log()
    finally:
        srv.stop()


def _metric(text: str, name: str, device: str) -> float:
    (value,) = re.findall(rf'^{name}{{description="[^"]*",device="{device}"}} (\S+)$', text, re.M)
    return float(value)


def _log_lines(srv: Server) -> list[str]:
    """The last runner's load lines, from llamagate's log."""
    text = srv.log()
    return text[text.rindex("starting:"):].splitlines()


TWO = f"CUDA0={RTX};CUDA1=NVIDIA RTX A6000:48670:48000"


def test_two_gpus_the_model_goes_to_one(tmp_path: Path):
    srv = _serve(tmp_path, TWO)
    try:
        ollama.Client(host=srv.url).generate(model="big", prompt="hi")
        assert _argv(srv)[_argv(srv).index("--device") + 1] == "CUDA1"  # the one with more free
        (m,) = ollama.Client(host=srv.url).ps().models
        assert m.context_length == 262144  # 72 GiB of VRAM
        assert m.size_vram == m.size > 0
    finally:
        srv.stop()


@pytest.mark.parametrize("spread, device", [(False, "CUDA1"), (True, "")])
def test_sched_spread_splits_over_all(tmp_path: Path, tiny_gguf: Path, monkeypatch, spread, device):
    """The scheduler's choice as it admits a load, from the fake's two GPUs: one unless spread."""
    binary = tmp_path / "llama-server"
    binary.write_text(f"#!/bin/sh\nexec {sys.executable} {Path(__file__).parent / 'fake_llama_server.py'} \"$@\"\n")
    binary.chmod(0o755)
    monkeypatch.setenv("FAKE_GPUS", TWO)
    monkeypatch.setenv("FAKE_LLAMA_LOG", str(tmp_path / "log.jsonl"))
    scheduler = Scheduler(Config(sched_spread=spread))
    runner = Runner("tiny", 300, 300, 5)
    spec = LaunchSpec(binary=binary, model_path=tiny_gguf, num_ctx=512, threads=1, parallel=1)
    placed = asyncio.run(scheduler._make_room(runner, spec))
    assert placed.device == device and placed == spec
    assert set(runner.predicted.vram) == ({"CUDA1"} if device else {"CUDA0", "CUDA1"})


def test_real_cpu_llama_server_reports_no_gpu(server: Server):
    """The real CPU build: no GPU listed, everything in RAM, `ps` and `config` say so."""
    client = ollama.Client(host=server.url)
    client.generate(model="tiny", prompt="hi", options={"num_predict": 1})
    (m,) = [m for m in client.ps().models if m.model == "tiny:latest"]
    assert m.size_vram == 0 and m.size > 0
    assert "100% CPU" in _ps_row(server, "tiny:latest")
    assert "no GPU found by" in server.log()
    assert re.search(r"^gpus = none  \(.*llama-server --list-devices\)$", server.cli("config").stdout, re.M)
    assert "load_tensors:   CPU_Mapped model buffer size" in server.log()  # what the placement is read from
    # --log-verbosity 4's dump of the GGUF's metadata is for DEBUG.
    assert not re.search(r"\] [\d.]+ I (print_info|llama_model_loader): (- )?[a-z_ ]+ += ", server.log())
