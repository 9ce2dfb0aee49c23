"""ONNX conformance summary: the node tests of the supported operators, run through
``lc.backend``, with per-op pass / fail / excluded counts.

    python3 tests/conformance.py            # the table and the totals
    python3 tests/conformance.py -v         # also every failure and every exclusion with its reason

The tests and the maintained exclusion list are those of ``test_onnx_backend_suite.py``
(which runs the same tests under pytest); the exit status is 1 if any test fails.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # the tests, and the repository's lepton_compiler
warnings.simplefilter("ignore")  # the test generators' own numpy warnings

from onnx.backend.test.loader import load_node_model_tests  # noqa: E402
from onnx.backend.test.runner import Runner  # noqa: E402

import lepton_compiler as lc  # noqa: E402
from test_onnx_backend_suite import EXCLUDE, INCLUDE  # noqa: E402


def base_op(case, ops_by_name: dict) -> str:
    """The operator a test is about: its one op, or for an ``_expanded`` test the op of the
    test it expands."""
    ops = {n.op_type for n in case.model.graph.node}
    if len(ops) == 1 and not re.search(r"_expanded", case.name):
        return ops.pop()
    base = re.sub(r"_expanded(_ver\d+)?$", "", case.name)
    return ops_by_name.get(base, "?") + " (expanded)"


def run_case(case) -> None:
    rep = lc.backend.prepare(case.model, "CPU")
    for inputs, expected in case.data_sets:
        outputs = rep.run([np.asarray(i) for i in inputs])
        Runner.assert_similar_outputs(list(expected), list(outputs), rtol=case.rtol, atol=case.atol)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="list failures and exclusions")
    args = parser.parse_args(argv)
    cases = load_node_model_tests()
    ops_by_name = {c.name: c.model.graph.node[0].op_type for c in cases if len(c.model.graph.node) == 1}
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    failures, excluded = [], []
    for case in sorted(cases, key=lambda c: c.name):
        name = case.name + "_cpu"
        if not any(re.search(p, name) for p in INCLUDE):
            continue
        op = base_op(case, ops_by_name)
        reason = next((r for p, r in EXCLUDE.items() if re.search(p, name)), None)
        if reason is not None:
            counts[op]["excluded"] += 1
            excluded.append((case.name, reason))
            continue
        try:
            run_case(case)
            counts[op]["passed"] += 1
        except Exception as exc:  # noqa: BLE001  (a conformance failure of any kind is reported)
            counts[op]["failed"] += 1
            failures.append((case.name, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"))
    width = max(len(op) for op in counts)
    print(f"{'operator':<{width}}  passed  failed  excluded")
    for op in sorted(counts):
        c = counts[op]
        print(f"{op:<{width}}  {c['passed']:>6}  {c['failed']:>6}  {c['excluded']:>8}")
    total = sum(counts.values(), collections.Counter())
    run = total["passed"] + total["failed"]
    print(f"{'total':<{width}}  {total['passed']:>6}  {total['failed']:>6}  {total['excluded']:>8}")
    print(f"\n{total['passed']} of {run} run tests pass ({100.0 * total['passed'] / max(run, 1):.1f} %); "
          f"{total['excluded']} of {run + total['excluded']} are excluded for the reasons listed in "
          "tests/test_onnx_backend_suite.py")
    if args.verbose:
        for name, why in failures:
            print(f"FAILED   {name}: {why}")
        for name, why in excluded:
            print(f"EXCLUDED {name}: {why}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
