"""Stopping the processes the tests start (gunicorn, node, Celery): only those, by pid."""

from __future__ import annotations

import signal
import subprocess


def stop_process(process: subprocess.Popen | None, timeout: float) -> None:
    """SIGTERM (a graceful stop for gunicorn, node and Celery), then SIGKILL after
    ``timeout``; reaps the process either way."""
    if process is None:
        return
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)
    else:
        process.wait()
