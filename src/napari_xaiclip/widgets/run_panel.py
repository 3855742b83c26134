"""Run/Cancel panel: drives a background worker with a progress bar, warnings and errors as notifications."""

from __future__ import annotations

import time
import traceback
from typing import Any, Callable

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .notify import WorkerWarning, notify_error, notify_info, notify_warning

__all__ = ["RunPanel"]


class RunPanel(QWidget):
    """Run and Cancel buttons, a progress bar and a status line driving one worker at a time.

    ``start(make_generator, ...)`` runs a generator function in a napari
    ``thread_worker``; each yielded ``(done, total, payload)`` moves the bar and
    is passed to ``on_progress`` (throttled to ``min_interval`` seconds, the
    last one always delivered). A :class:`WorkerWarning` payload is shown as a
    napari warning at once and collected in ``warnings`` instead (it arrives
    before the run's result). Cancel quits the worker at its next yield.
    Errors become napari notifications; the widget is re-enabled afterwards.
    """

    def __init__(self, run_text: str = "Run", parent=None, min_interval: float = 0.15):
        super().__init__(parent)
        self.run_button = QPushButton(run_text)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setTextVisible(True)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        row = QHBoxLayout()
        row.addWidget(self.run_button)
        row.addWidget(self.cancel_button)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(row)
        lay.addWidget(self.progress)
        lay.addWidget(self.status)
        self.cancel_button.clicked.connect(self.cancel)
        self.worker = None
        self._watched_window = None
        self.min_interval = min_interval
        self._last_update = 0.0
        self._pending = None
        self._napari_progress = None
        self.last_error: str | None = None
        self.warnings: list[str] = []
        self.cancelled = False
        self._ended = False  # the worker has returned, failed or aborted; only `finished` is to come

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(self, make_generator: Callable[[], Any], on_progress=None, on_done=None,
              on_aborted=None, description: str = "working") -> bool:
        """Start a worker; returns False (and notifies) when one is already running."""
        from napari.qt.threading import create_worker

        from ..models import preload_libraries

        if self.running:
            notify_info("A run is already in progress; wait for it or press Cancel.")
            return False
        self.last_error = None
        self.warnings = []
        self.cancelled = False
        self._ended = False
        self._on_progress, self._on_done, self._on_aborted = on_progress, on_done, on_aborted
        self._description = description
        self._pending = None
        preload_libraries()  # first imports of torchvision/triton must not happen in a worker thread
        self.worker = create_worker(make_generator, _ignore_errors=True)  # reported by _errored
        self._watch_window()
        self.worker.yielded.connect(self._yielded)
        self.worker.returned.connect(self._returned)
        self.worker.errored.connect(self._errored)
        self.worker.aborted.connect(self._aborted)
        self.worker.finished.connect(self._finished)
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setRange(0, 0)
        self.status.setText(f"{description}…")
        self._t0 = time.perf_counter()
        self.worker.start()
        return True

    def _watch_window(self) -> None:
        """Cancel the run when the window holding this panel closes (napari quitting)."""
        window = self.window()
        if window is not None and window is not self._watched_window:
            window.installEventFilter(self)
            self._watched_window = window

    def eventFilter(self, obj, event) -> bool:
        from qtpy.QtCore import QEvent

        if event.type() == QEvent.Type.Close and self.worker is not None:
            self.detach()
        return False

    def detach(self) -> None:
        """Stop the worker and cut it loose: its remaining signals must not reach widgets being deleted."""
        worker = self.worker
        if worker is None:
            return
        worker.quit()
        for signal in (worker.yielded, worker.returned, worker.errored, worker.aborted, worker.finished):
            try:
                signal.disconnect()
            except (TypeError, RuntimeError):
                pass
        if self._napari_progress is not None:
            self._napari_progress.close()
            self._napari_progress = None
        self.worker = None

    def cancel(self) -> None:
        if self.worker is not None and not self._ended:  # a run that already returned has nothing to stop
            self.cancelled = True
            self.status.setText("cancelling…")
            self.worker.quit()

    def _yielded(self, item) -> None:
        done, total, payload = item
        if isinstance(payload, WorkerWarning):  # not progress: shown now, never throttled away
            self._warn(str(payload))
            return
        self.progress.setRange(0, max(int(total), 1))
        self.progress.setValue(int(done))
        self._napari_progress_update(done, total)
        self._pending = item
        now = time.perf_counter()
        if now - self._last_update >= self.min_interval or done >= total:
            self._flush()

    def _warn(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)
            notify_warning(text)

    def _flush(self) -> None:
        if self._pending is not None and self._on_progress is not None:
            item, self._pending = self._pending, None
            self._last_update = time.perf_counter()
            self._on_progress(*item)

    def _napari_progress_update(self, done, total) -> None:
        from napari.utils import progress

        if self._napari_progress is None:
            self._napari_progress = progress(total=int(total), desc=self._description)
        bar = self._napari_progress
        if bar.total != int(total):
            bar.total = int(total)
        bar.update(int(done) - bar.n)

    def _returned(self, result) -> None:
        self._ended = True
        self._flush()
        seconds = time.perf_counter() - self._t0
        n = len(self.warnings)
        self.status.setText(f"done in {seconds:.1f} s" + (f" · {n} warning{'s' * (n > 1)}: {self.warnings[0]}"
                                                           if n else ""))
        if self._on_done is not None:
            try:
                self._on_done(result)
            except Exception as exc:  # a bug in our own callback must still reach the user
                self._report(exc)

    def _errored(self, exc) -> None:
        self._ended = True
        self._report(exc)

    def _report(self, exc) -> None:
        self.last_error = f"{exc}"
        self.status.setText(f"error: {exc}")
        if not isinstance(exc, ValueError):
            traceback.print_exception(exc)
        notify_error(f"{self._description} failed: {exc}")

    def _aborted(self) -> None:
        self._ended = True
        self.status.setText("cancelled")
        if self._on_aborted is not None:
            self._on_aborted()

    def _finished(self) -> None:
        if self._napari_progress is not None:
            self._napari_progress.close()
            self._napari_progress = None
        self.worker = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if self.progress.maximum() == 0:
            self.progress.setRange(0, 1)
            self.progress.setValue(1 if self.last_error is None and not self.cancelled else 0)
