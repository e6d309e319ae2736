"""tests/triton_interpreter_plugin.py: tests marked triton_interpreter run with
TRITON_INTERPRET=1 (set before Triton and sed_d2.ops are imported), the others without, and a
child's outcomes are reported as the tests' own: the assertion diff, the skip reason, a crash.
"""

import importlib.util
import os

import pytest
import torch

from sed_d2.ops import runtime
from tests import triton_interpreter_plugin

pytest_plugins = ["pytester"]


@pytest.mark.triton_interpreter
def test_marked_tests_run_in_the_interpreter():
    assert os.environ["TRITON_INTERPRET"] == "1" and os.environ.get("SED_D2_FAST_OPS", "1") == "1"
    assert runtime.available(torch.zeros(1))  # sed_d2.ops read TRITON_INTERPRET at import


@pytest.mark.triton_interpreter(env={"SED_D2_FAST_OPS": "0"})
def test_the_marker_environment_is_set_before_import():
    assert os.environ["TRITON_INTERPRET"] == "1" and not runtime.enabled()


@pytest.mark.triton_interpreter(bf16_dot=True)
def test_bf16_dot_patches_the_interpreter():
    from triton.runtime import interpreter

    assert interpreter.InterpreterBuilder.create_dot.__module__ == triton_interpreter_plugin.__name__


@pytest.mark.triton_interpreter
def test_without_bf16_dot_the_interpreter_is_unpatched():
    from triton.runtime import interpreter

    assert interpreter.InterpreterBuilder.create_dot.__module__.startswith("triton.")


def test_unmarked_tests_run_without_the_interpreter():
    assert os.environ.get("TRITON_INTERPRET") != "1" and not runtime.available(torch.zeros(1))


# ----------------------------------------------------------------------------- in a pytest run
# The runs below import only pytest and os: their children start in well under a second.
@pytest.fixture()
def run(pytester):
    if importlib.util.find_spec("triton") is None:
        pytest.skip("Triton is not installed: marked tests skip without a child")
    pytester.makeconftest('pytest_plugins = ["tests.triton_interpreter_plugin"]')
    return pytester


def test_failures_skips_and_crashes_are_reported_as_the_tests_own(run):
    run.makepyfile(
        test_outcomes="""
        import os
        import pytest

        @pytest.mark.triton_interpreter
        def test_fails():
            assert {"interpret": os.environ["TRITON_INTERPRET"]} == {"interpret": "0"}, "the message"

        @pytest.mark.triton_interpreter
        def test_skips():
            pytest.skip("a reason given in the child")

        @pytest.mark.triton_interpreter
        def test_passes():
            print("captured in the child")

        @pytest.mark.triton_interpreter
        def test_crashes():
            os._exit(3)

        @pytest.mark.triton_interpreter
        def test_after_the_crash():
            pass

        def test_here():
            assert "TRITON_INTERPRET" not in os.environ
        """
    )
    result = run.runpytest("-rA")
    result.assert_outcomes(passed=2, failed=2, skipped=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*_ ERROR at setup of test_after_the_crash _*",  # never started: the child had ended
            "*child pytest (TRITON_INTERPRET=1 SED_D2_FAST_OPS=1) exited with code 3 without a complete report*",
            "*_ test_fails _*",
            "*def test_fails():*",
            "E *AssertionError: the message",
            "E *{'interpret': '1'} != {'interpret': '0'}*",
            "test_outcomes.py:6: AssertionError",
            "*_ test_crashes _*",
            "*child pytest (TRITON_INTERPRET=1 SED_D2_FAST_OPS=1) exited with code 3 without a complete report*",
            "*captured in the child*",
            "SKIPPED [1] test_outcomes.py:10: a reason given in the child",
            "FAILED test_outcomes.py::test_fails - AssertionError: the message",
        ]
    )


def test_one_child_per_environment_and_the_selection_is_kept(run):
    test_module = """
        import os
        import pathlib
        import pytest

        def record(name):
            pathlib.Path("ran", name).write_text(f"{os.getpid()} {os.environ.get('EXTRA', '')}")

        @pytest.mark.triton_interpreter
        @pytest.mark.parametrize("value", ["a", pytest.param("b", marks=pytest.mark.triton_interpreter(env={"EXTRA": "b"}))])
        def test_parametrised(value):
            record(f"{__name__}-{value}")

        @pytest.mark.triton_interpreter
        def test_deselected():
            record(f"{__name__}-deselected")

        def test_here():
            record(f"{__name__}-here")
    """
    run.makepyfile(test_one=test_module, test_two=test_module)
    run.mkdir("ran")
    run.runpytest("-k", "not deselected").assert_outcomes(passed=6, deselected=2)
    ran = {path.name: path.read_text().split(" ") for path in (run.path / "ran").iterdir()}
    assert sorted(ran) == sorted(f"{m}-{v}" for m in ("test_one", "test_two") for v in ("a", "b", "here"))
    pids = {name: int(pid) for name, (pid, _) in ran.items()}
    assert pids["test_one-here"] == pids["test_two-here"] == os.getpid()  # in this (inline) run
    assert pids["test_one-a"] == pids["test_two-a"] not in (os.getpid(), pids["test_one-b"])
    assert pids["test_one-b"] == pids["test_two-b"] and ran["test_one-b"][1] == "b" and ran["test_one-a"][1] == ""
    # one parametrised id on the command line
    run.runpytest("test_two.py::test_parametrised[b]").assert_outcomes(passed=1)


def test_exitfirst_stops_at_the_first_failure_in_the_child(run):
    run.makepyfile(
        test_stop="""
        import pytest

        @pytest.mark.triton_interpreter
        def test_fails():
            assert False

        @pytest.mark.triton_interpreter
        def test_never_reached():
            pass
        """
    )
    result = run.runpytest("-x")
    result.assert_outcomes(failed=1)
    result.stdout.no_fnmatch_line("*test_never_reached*")
