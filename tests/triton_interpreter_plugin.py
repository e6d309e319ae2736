"""The ``triton_interpreter`` marker: tests that run the Triton kernels in Triton's CPU interpreter.

    @pytest.mark.triton_interpreter                          # TRITON_INTERPRET=1, SED_D2_FAST_OPS=1
    @pytest.mark.triton_interpreter(bf16_dot=True)           # and bf16 tl.dot operands widened (below)
    @pytest.mark.triton_interpreter(env={"SED_D2_FAST_OPS": "0"})    # and more environment

A mark on a parameter (``pytest.param(..., marks=...)``) adds to the function's and wins where
they differ. Without Triton the marked tests skip.

Triton and ``sed_d2.ops.runtime`` read ``TRITON_INTERPRET`` when they are imported, so a marked
test runs in a process whose environment had it (and the marker's env) from the start:

* this process, where it did: the child below, or a developer's
  ``TRITON_INTERPRET=1 python -m pytest tests/ops/test_conv3x3.py --pdb``. There the unmarked
  tests are deselected: they test the paths outside the interpreter.
* otherwise (the plain ``python -m pytest tests``) a child pytest with that environment, given
  the node ids of all the selected marked tests that ask for it: one child per environment, not
  one per test or module (a pytest start costs seconds). The first child starts with the run, to
  work alongside this process on the tests that run here, and the next when it has finished (or
  when a test needs it). Each test's setup, call and teardown reports from the child are
  reported here in its place: the child's assertion diff, skip reason, captured output and
  duration; a test the child did not finish (a crash) fails with the end of the child's output.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

MARKER = "triton_interpreter"
_MARKER_HELP = (
    f"{MARKER}(bf16_dot=False, env=None): runs in Triton's CPU interpreter (TRITON_INTERPRET=1, "
    "SED_D2_FAST_OPS=1 and env, in a child pytest unless this process has them); bf16_dot=True "
    "widens bf16 tl.dot operands to float32 (see tests/triton_interpreter_plugin.py)"
)
_OPTIONS = ("bf16_dot", "env")
# What every marked test needs, before the marker's own env. Unset variables read as these.
_BASE_ENVIRONMENT = {"TRITON_INTERPRET": "1", "SED_D2_FAST_OPS": "1"}
_UNSET_MEANS = {"SED_D2_FAST_OPS": "1"}  # sed_d2.ops.runtime's default
# Set in a child's environment: the file it writes its reports to (one JSON object a line).
_REPORTS_VARIABLE = "SED_D2_TEST_TRITON_INTERPRETER_REPORTS"
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])  # where `tests` is importable from
# A child that reports nothing for this long is taken as hung and stopped (the old subprocess
# helper's limit; the slowest marked test takes seconds).
_STALL_SECONDS = 600
_NO_TRITON = "Triton is not installed: the kernels cannot run here"
_STATE = pytest.StashKey["_State"]()


def _options(item: pytest.Item) -> dict | None:
    """The marker's options for ``item`` (None when unmarked), the closest mark last."""
    marks = [mark for node in item.listchain() for mark in node.own_markers if mark.name == MARKER]
    if not marks:
        return None
    options = {"bf16_dot": False, "env": {}}
    for mark in marks:
        unknown = sorted(set(mark.kwargs) - set(_OPTIONS))
        if mark.args or unknown:
            raise pytest.UsageError(
                f"{item.nodeid}: @pytest.mark.{MARKER} takes only the keywords {_OPTIONS}, "
                f"got args {mark.args} and keywords {unknown}"
            )
        options["bf16_dot"] = bool(mark.kwargs.get("bf16_dot", options["bf16_dot"]))
        options["env"] = {**options["env"], **mark.kwargs.get("env", {})}
    return options


def _environment(options: dict) -> dict[str, str]:
    return {**_BASE_ENVIRONMENT, **{str(k): str(v) for k, v in options["env"].items()}}


class _State:
    def __init__(self):
        # In a child: where the reports go (and not to the child's own subprocesses).
        self.reports_path = os.environ.pop(_REPORTS_VARIABLE, None)
        self.environ = dict(os.environ)  # as this process started (Triton read it at import)
        self.interpreting = self.environ.get("TRITON_INTERPRET") == "1"
        self.children: list[_Child] = []
        self.child_of: dict[str, _Child] = {}  # node id -> the child that runs it

    def runs_here(self, options: dict) -> bool:
        return all(self.environ.get(k, _UNSET_MEANS.get(k)) == v for k, v in _environment(options).items())


class _Child:
    """A child pytest with one environment, running the marked tests that ask for it."""

    def __init__(self, config: pytest.Config, environment: dict[str, str]):
        self.config = config
        self.environment = environment
        self.nodeids: list[str] = []
        self.process: subprocess.Popen | None = None
        self.reports: dict[str, list[dict]] = {}
        self._read_to = 0  # bytes of the report file read so far

    def start(self) -> None:
        config, state = self.config, self.config.stash[_STATE]
        self.directory = Path(tempfile.mkdtemp(prefix="sed_d2_triton_interpreter_"))
        self.report_path = self.directory / "reports.jsonl"
        self.report_path.touch()
        self.output_path = self.directory / "output.txt"
        env = {
            **state.environ,
            **self.environment,
            "PYTHONPATH": os.pathsep.join(p for p in (_PACKAGE_ROOT, state.environ.get("PYTHONPATH")) if p),
            _REPORTS_VARIABLE: str(self.report_path),
        }
        option = config.option
        command = [
            sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
            f"--rootdir={config.rootpath}", f"--import-mode={option.importmode}",
            f"--basetemp={self.directory / 'basetemp'}",
            f"--tb={option.tbstyle}", f"--verbosity={option.verbose}",
        ]
        if config.inipath is not None:
            command += ["-c", str(config.inipath)]
        if option.showlocals:
            command.append("--showlocals")
        if option.maxfail:
            command.append(f"--maxfail={option.maxfail}")
        with open(self.output_path, "wb") as output:
            self.process = subprocess.Popen(
                command + self.nodeids, cwd=config.rootpath, env=env, stdout=output, stderr=subprocess.STDOUT
            )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _read(self) -> None:
        with open(self.report_path, "rb") as file:
            file.seek(self._read_to)
            lines = file.read().split(b"\n")[:-1]  # whole lines only: one may be half written
        for line in lines:
            self._read_to += len(line) + 1
            data = json.loads(line)
            self.reports.setdefault(data["nodeid"], []).append(data)

    def _complete(self, nodeid: str) -> bool:
        return any(data["when"] == "teardown" for data in self.reports.get(nodeid, ()))

    def wait_for(self, nodeid: str) -> list[dict]:
        """The child's reports for ``nodeid``, once its teardown is reported or the child ended."""
        if self.process is None:
            self.start()
        progress, last_read = time.monotonic(), self._read_to
        while True:
            ended = self.process.poll() is not None  # before reading: nothing is written after
            self._read()
            if ended or self._complete(nodeid):
                return self.reports.get(nodeid, [])
            if self._read_to != last_read:
                progress, last_read = time.monotonic(), self._read_to
            elif time.monotonic() - progress > _STALL_SECONDS:
                # a hung child must not hang CI: stop it; the tests it did not finish then
                # fail with the end of its output (failure())
                self.process.kill()
                self.process.wait()
            time.sleep(0.02)

    def failure(self, nodeid: str) -> str:
        code = self.process.poll()
        state = "is still running" if code is None else f"exited with code {code}"
        tail = self.output_path.read_text(errors="replace").splitlines()[-40:]
        variables = " ".join(f"{k}={v}" for k, v in self.environment.items())
        return (
            f"the Triton-interpreter child pytest ({variables}) {state} without a complete report "
            f"for {nodeid}; the end of its output:\n" + "\n".join(tail)
        )

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


# ----------------------------------------------------------------------------- hooks
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", _MARKER_HELP)
    state = config.stash[_STATE] = _State()
    if state.reports_path is not None:
        config.pluginmanager.register(_ReportWriter(config, state.reports_path), "triton_interpreter_reports")


def pytest_report_header(config: pytest.Config) -> str:
    where = "in this process" if config.stash[_STATE].interpreting else "in a child pytest"
    return f"{MARKER} tests: {where}, with TRITON_INTERPRET=1"


@pytest.hookimpl(trylast=True)  # after -k / -m deselection
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    state = config.stash[_STATE]
    marked = [item for item in items if _options(item) is not None]  # also validates the markers
    if state.interpreting:  # only the marked tests: the others test the paths without it
        unmarked = [item for item in items if _options(item) is None]
        if unmarked:
            config.hook.pytest_deselected(items=unmarked)
            items[:] = marked
    if marked and importlib.util.find_spec("triton") is None:
        for item in marked:
            item.add_marker(pytest.mark.skip(reason=_NO_TRITON))


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session: pytest.Session):
    state = session.config.stash[_STATE]
    collection_failed = session.testsfailed and not session.config.option.continue_on_collection_errors
    if state.reports_path is None and not session.config.option.collectonly and not collection_failed:
        children = {}
        for item in session.items:
            options = _options(item)
            if options is None or state.runs_here(options) or item.get_closest_marker("skip"):
                continue
            environment = _environment(options)
            key = tuple(sorted(environment.items()))
            if key not in children:
                children[key] = _Child(session.config, environment)
            children[key].nodeids.append(item.nodeid)
            state.child_of[item.nodeid] = children[key]
        state.children = list(children.values())
        _start_next_child(state)
    try:
        return (yield)
    finally:
        for child in state.children:
            child.stop()


def _start_next_child(state: _State) -> None:
    """Start the next child in the run's order, unless one is running."""
    if not any(child.running for child in state.children):
        waiting = [child for child in state.children if child.process is None]
        if waiting:
            waiting[0].start()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    state = item.config.stash[_STATE]
    _start_next_child(state)
    child = state.child_of.get(item.nodeid)
    if child is None:
        return None  # runs here
    ihook, config = item.ihook, item.config
    ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    reports = [config.hook.pytest_report_from_serializable(config=config, data=data) for data in child.wait_for(item.nodeid)]
    for report in reports:
        if isinstance(report.longrepr, list):  # a skip's (path, line, reason), a list in JSON
            report.longrepr = tuple(report.longrepr)
    for report in reports:
        if report.when != "teardown":
            ihook.pytest_runtest_logreport(report=report)
    # The child set up and tore down the test's own fixtures; here the fixtures of the items
    # before it are torn down as far as the next item does not share them, as pytest would.
    if item.session.shouldfail or item.session.shouldstop:
        nextitem = None
    call = pytest.CallInfo.from_call(
        lambda: item.session._setupstate.teardown_exact(nextitem), when="teardown", reraise=KeyboardInterrupt
    )
    teardown = ihook.pytest_runtest_makereport(item=item, call=call)
    remote = [report for report in reports if report.when == "teardown"]
    if remote:
        teardown = teardown if teardown.failed and remote[0].passed else remote[0]
    else:  # the child ended (or crashed) before it finished this test: fail the phase it was in
        phase = "setup" if not reports else "call" if len(reports) == 1 and reports[0].passed else "teardown"
        call = pytest.CallInfo.from_call(lambda: pytest.fail(child.failure(item.nodeid), pytrace=False), when=phase)
        failure = ihook.pytest_runtest_makereport(item=item, call=call)
        if phase == "teardown":
            teardown = failure
        else:
            ihook.pytest_runtest_logreport(report=failure)
    ihook.pytest_runtest_logreport(report=teardown)
    ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


class _ReportWriter:
    """In a child: every test report, as JSON, to the file the parent reads."""

    def __init__(self, config: pytest.Config, path: str):
        self.config = config
        self.path = path

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = self.config.hook.pytest_report_to_serializable(config=self.config, report=report)
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(json.dumps(data, default=repr) + "\n")


# ----------------------------------------------------------------------------- bf16_dot=True
@pytest.fixture(autouse=True)
def _triton_interpreter_bf16_dot(request: pytest.FixtureRequest):
    """For ``@pytest.mark.triton_interpreter(bf16_dot=True)``: Triton's interpreter multiplies
    bfloat16 ``tl.dot`` operands as their raw uint16 bits (numpy has no bfloat16). Widen them to
    float32 first: exact, so the kernel's bf16 rounding of the operands is still what is tested.
    Restored after the test."""
    options = _options(request.node)
    if options is None or not options["bf16_dot"]:
        yield
        return
    import numpy as np
    from triton.runtime import interpreter

    def widen(tensor):
        if tensor.dtype.scalar.name != "bf16":
            return tensor
        bits = tensor.data.astype(np.uint32) << 16
        return interpreter.TensorHandle(bits.view(np.float32), interpreter.tl.float32)

    builder = interpreter.InterpreterBuilder
    create_dot = builder.create_dot
    builder.create_dot = lambda self, a, b, d, *args: create_dot(self, widen(a), widen(b), d, *args)
    try:
        yield
    finally:
        builder.create_dot = create_dot
