"""``scripts/dev serve`` as a newcomer runs it, in its own process group, on free ports."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from tests.redis_servers import free_port
from tests.support import wait_http

ROOT = Path(__file__).parents[2]


class Stack:
    """The local stack: the script, the fake Credex API and ``fsm serve --simulator``."""

    def __init__(self, tmp: Path) -> None:
        self.port, self.credex_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "stack.log"
        env = {**os.environ, "FSM_SERVE_PORT": str(self.port)}
        env["FSM_CREDEX_PORT"] = str(self.credex_port)
        env = {k: v for k, v in env.items() if not k.startswith(("WHATSAPP_", "CREDEX_"))}
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                ["bash", str(ROOT / "scripts" / "dev"), "serve"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group, as a terminal's job is
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        try:  # the first run may still install packages
            wait_http(f"{self.url}/healthz", self.process, timeout=120, log=self.log)
        except RuntimeError:
            self.stop()
            raise

    def pids(self) -> set[int]:
        """Every live process in the stack's process group."""
        group = self.process.pid
        found = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) == group and fields[0] != "Z":
                found.add(int(entry.name))
        return found

    def interrupt(self) -> None:
        """Ctrl-C: SIGINT to the whole foreground group, as a terminal sends it."""
        os.killpg(self.process.pid, signal.SIGINT)

    def terminate(self) -> None:
        """SIGTERM to the script alone, as a supervisor sends it."""
        self.process.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
