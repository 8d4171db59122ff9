"""The monitoring stack without Docker: Debian's Prometheus, Alertmanager and node-exporter on
loopback, with deploy/'s own config and rules, and a local SMTP sink for Alertmanager's mail.

    python -m deploy.local_stack [--asr 127.0.0.1:8000] [--with-service]     (or: make stack)

What differs from docker-compose is only where things are: scrape targets (targets/*.yml are
written with loopback ports), Alertmanager's SMTP host (the sink), the password file path and the
fallback webhook's URL (a local sink too).
prometheus.yml, the rules, alertmanager.yml's routes, inhibitions and templates are the
project's files. The tests start the same stack with shorter intervals.
"""

from __future__ import annotations

import argparse
import contextlib
import email
import email.policy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import yaml

if TYPE_CHECKING:
    from collections.abc import Iterator

DEPLOY = Path(__file__).resolve().parent
BINARIES = {"prometheus": "prometheus", "alertmanager": "prometheus-alertmanager", "node": "prometheus-node-exporter"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MailSink:
    """An SMTP server on loopback (aiosmtpd) that keeps every message it receives."""

    def __init__(self, port: int, folder: Path) -> None:
        from aiosmtpd.controller import Controller

        self.folder = folder
        self.messages: list[EmailMessage] = []
        self._lock = threading.Lock()
        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                message = email.message_from_bytes(envelope.content, policy=email.policy.default)
                assert isinstance(message, EmailMessage)
                with sink._lock:
                    sink.messages.append(message)
                    path = sink.folder / f"{len(sink.messages):04d}.eml"
                path.write_bytes(envelope.content)
                print(f"mail: {message['Subject']} -> {', '.join(envelope.rcpt_tos)}", file=sys.stderr, flush=True)
                return "250 Message accepted for delivery"

        self._controller = Controller(Handler(), hostname="127.0.0.1", port=port)

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

    def wait_for(self, predicate: Any, timeout: float) -> EmailMessage:
        """Return the first message for which `predicate(message)` is true, waiting up to `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for message in self.messages:
                    if predicate(message):
                        return message
            time.sleep(0.2)
        subjects = [str(m["Subject"]) for m in self.messages]
        raise TimeoutError(f"no matching mail in {timeout} s; received: {subjects}")


class WebhookSink:
    """An HTTP server on loopback that keeps every JSON body POSTed to it (Alertmanager's webhooks)."""

    def __init__(self, port: int) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.payloads: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with sink._lock:
                    sink.payloads.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{port}/asr-alerts"

    def start(self) -> None:
        threading.Thread(target=self._server.serve_forever, name="webhook-sink", daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def alert_names(self) -> list[str]:
        with self._lock:
            return [a["labels"]["alertname"] for p in self.payloads for a in p.get("alerts", [])]


@dataclass
class LocalStack:
    """Prometheus, Alertmanager, node-exporter and a mail sink, all on loopback ports."""

    workdir: Path
    asr_targets: list[str]
    scrape_interval: str = "15s"
    evaluation_interval: str = "15s"
    # Alertmanager route timing overrides (tests shorten group_wait/group_interval).
    route_timing: dict[str, str] = field(default_factory=dict)
    # How often Prometheus re-sends firing alerts. An alert that fires before Prometheus has
    # discovered Alertmanager (a few seconds after start) arrives only at the next re-send.
    resend_delay: str = "1m"
    ports: dict[str, int] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    mail: MailSink | None = None
    webhook: WebhookSink | None = None

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def _prometheus_config(self) -> Path:
        folder = self.workdir / "prometheus"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(DEPLOY / "prometheus", folder, ignore=shutil.ignore_patterns("tests", "targets"))
        config = yaml.safe_load((folder / "prometheus.yml").read_text())
        config["global"].update(scrape_interval=self.scrape_interval, evaluation_interval=self.evaluation_interval)
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        targets = {
            "asr": self.asr_targets,
            "node": [f"127.0.0.1:{self.ports['node']}"],
            "dcgm": [],  # no GPU here: dcgm-exporter is not expected (see DCGMExporterDown)
            "alertmanager": [f"127.0.0.1:{self.ports['alertmanager']}"],
            "prometheus": [f"127.0.0.1:{self.ports['prometheus']}"],
        }
        (folder / "targets").mkdir()
        for job, addresses in targets.items():
            (folder / "targets" / f"{job}.yml").write_text(
                yaml.safe_dump([{"targets": addresses}] if addresses else [])
            )
        return folder / "prometheus.yml"

    def _alertmanager_config(self) -> Path:
        folder = self.workdir / "alertmanager"
        folder.mkdir(parents=True, exist_ok=True)
        config = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
        password = folder / "smtp_password"
        password.write_text("local-sink-accepts-anything\n")
        password.chmod(0o600)
        config["global"].update(smtp_smarthost=f"127.0.0.1:{self.ports['smtp']}", smtp_auth_password_file=str(password))
        config["templates"] = [str(DEPLOY / "alertmanager" / "templates" / "*.tmpl")]
        assert self.webhook is not None
        for receiver in config["receivers"]:
            for hook in receiver.get("webhook_configs", []):
                hook["url"] = self.webhook.url
        # Timing overrides go on the root route and on every sub-route that sets its own.
        config["route"].update(self.route_timing)
        for route in config["route"].get("routes", []):
            route.update({k: v for k, v in self.route_timing.items() if k in route})
        path = folder / "alertmanager.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def start(self) -> LocalStack:
        for name in ("prometheus", "alertmanager", "node", "smtp", "webhook"):
            self.ports.setdefault(name, free_port())
        for binary in BINARIES.values():
            if shutil.which(binary) is None:
                raise RuntimeError(f"{binary} is not installed (Debian: apt-get install {binary})")
        self.mail = MailSink(self.ports["smtp"], self.workdir / "mail")
        self.mail.start()
        self.webhook = WebhookSink(self.ports["webhook"])
        self.webhook.start()
        loopback = "127.0.0.1"
        # Alertmanager first: Prometheus only re-sends alerts every minute.
        self._spawn(
            "alertmanager",
            [
                BINARIES["alertmanager"],
                f"--config.file={self._alertmanager_config()}",
                f"--storage.path={self.workdir / 'alertmanager-data'}",
                f"--web.listen-address={loopback}:{self.ports['alertmanager']}",
                f"--web.external-url={self.url('alertmanager')}",
                "--cluster.listen-address=",  # no gossip port on 0.0.0.0
            ],
            "/-/ready",
        )
        self._spawn(
            "node",
            [
                BINARIES["node"],
                f"--web.listen-address={loopback}:{self.ports['node']}",
                "--collector.disable-defaults",
                "--collector.cpu",
                "--collector.meminfo",
                "--collector.filesystem",
                "--collector.netdev",
                "--collector.loadavg",
            ],
            "/metrics",
        )
        self._spawn(
            "prometheus",
            [
                BINARIES["prometheus"],
                f"--config.file={self._prometheus_config()}",
                f"--storage.tsdb.path={self.workdir / 'prometheus-data'}",
                f"--web.listen-address={loopback}:{self.ports['prometheus']}",
                "--web.enable-lifecycle",
                "--enable-feature=exemplar-storage",
                f"--rules.alert.resend-delay={self.resend_delay}",
            ],
            "/-/ready",
        )
        return self

    def _spawn(self, name: str, argv: list[str], ready_path: str) -> None:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - open for the process's lifetime
        self.processes[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        port = self.ports["node" if name == "node" else name]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.processes[name].poll() is not None:
                raise RuntimeError(f"{name} exited:\n{(self.workdir / f'{name}.log').read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}{ready_path}", timeout=1).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{name} not ready in 60 s")

    def stop(self) -> None:
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        self.processes.clear()
        if self.mail is not None:
            self.mail.stop()
        if self.webhook is not None:
            self.webhook.stop()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def asr_service(port: int, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m service serve` on a loopback port (for --with-service)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--asr", default="127.0.0.1:8000", help="the ASR service to scrape (host:port)")
    parser.add_argument("--with-service", action="store_true", help="also run the ASR service on that port")
    parser.add_argument("--dir", help="where configs, data, logs and mail go (default: a new temp dir)")
    args = parser.parse_args()
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="asr-stack-"))
    workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if args.with_service:
            stack.enter_context(asr_service(int(args.asr.rsplit(":", 1)[1])))
        local = stack.enter_context(LocalStack(workdir, [args.asr]))
        print(
            f"Prometheus    {local.url('prometheus')}\nAlertmanager  {local.url('alertmanager')}\n"
            f"node-exporter {local.url('node')}/metrics\nmail sink     smtp://127.0.0.1:{local.ports['smtp']} "
            f"(messages in {workdir / 'mail'})\nlogs          {workdir}\nCtrl-C stops everything.",
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())
