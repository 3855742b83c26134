"""Shared test set-up: CPU only, one torch thread, Triton kept out of GUI processes."""

from __future__ import annotations

import os

import pytest

# Loading Triton after napari creates a Mesa OpenGL context crashes the process
# (both bundle LLVM); the plugin does the same in napari (widgets/_guard.py).
from napari_xaiclip.widgets._guard import keep_triton_out

keep_triton_out()
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _cpu_only(monkeypatch):
    """Models run on the CPU in tests, whatever the machine has."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _no_worker_outlives_its_test(request):
    """A GUI test's cancelled or detached workers finish before the next test starts: a Captum
    hook or a running explanation on a shared cached model must not reach another test's run."""
    yield
    if request.node.get_closest_marker("gui"):
        from qtpy.QtCore import QThreadPool

        QThreadPool.globalInstance().waitForDone(300_000)


@pytest.fixture(autouse=True)
def _own_session_folder(tmp_path_factory, monkeypatch):
    """Autosave writes into a fresh folder per test: a session saved by an earlier test (or run)
    of a same-named, same-shaped volume must not be restored into this one."""
    monkeypatch.setenv("XAICLIP_SESSION_DIR", str(tmp_path_factory.mktemp("sessions")))


@pytest.fixture(autouse=True)
def _real_model_only_when_marked(request, monkeypatch):
    """LiteMedSAM (about 2 s per forward here) runs only in tests marked ``litemedsam``;
    the others name the phantom model, so a slow default cannot creep into the suite."""
    if request.node.get_closest_marker("litemedsam"):
        return
    from napari_xaiclip.models.litemedsam import LiteMedSamSegmenter

    def refuse(*args, **kwargs):
        raise RuntimeError("this test ran LiteMedSAM without the litemedsam marker: name 'phantom'")

    monkeypatch.setattr(LiteMedSamSegmenter, "logits", refuse)


@pytest.fixture
def notifications():
    """Messages napari shows to the user during a test (errors, warnings, infos)."""
    from napari.utils.notifications import notification_manager

    seen: list[str] = []

    def record(notification):
        seen.append(str(notification.message))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


def pump_until(qtbot, condition, timeout: float = 120.0) -> None:
    """Let the event loop run until ``condition()`` holds (workers deliver through it)."""
    qtbot.waitUntil(condition, timeout=int(timeout * 1000))
