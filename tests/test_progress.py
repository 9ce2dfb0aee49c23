"""Progress bars: shown on a terminal (or when forced), silent in pipes and CI logs."""

import io

from lepton_compiler.progress import progress


def test_silent_when_not_a_terminal():
    out = io.StringIO()
    with progress(3, "compiling", stream=out) as step:
        for label in ("a", "b", "c"):
            step(label)
    assert out.getvalue() == ""


def test_counts_steps_and_names_the_current_one():
    out = io.StringIO()
    with progress(2, "compiling net", stream=out, force=True) as step:
        step("fuse-pool")
        step("native code")
    text = out.getvalue()
    assert "compiling net" in text and "2/2" in text and "native code" in text
