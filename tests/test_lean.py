"""BEAM_ZDL_LEAN_IMPORTS: opt-in, leaves Beam's unused IOs out, names itself when refused."""

import os
import subprocess
import sys

_PROBE = """
import sys
import beam_zdl
import apache_beam as beam
from apache_beam.runners.worker.sdk_worker import SdkHarness
import beam_zdl.direct, beam_zdl.worker_pool
print(sorted({m.split('.')[0] for m in sys.modules} & {'pyarrow', 'pymongo', 'bson'}))
print('apache_beam.io.gcp' in sys.modules)
try:
    import pyarrow
    print('imported')
except ModuleNotFoundError as exc:
    print(exc)
"""


def _probe(lean: bool) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "BEAM_ZDL_LEAN_IMPORTS"}
    if lean:
        env["BEAM_ZDL_LEAN_IMPORTS"] = "1"
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                         text=True, check=True).stdout
    return out.strip().splitlines()


def test_lean_imports_leave_out_beams_unused_ios_and_say_why():
    left_out, gcp, pyarrow = _probe(lean=True)
    assert left_out == "[]"
    assert gcp == "False"
    assert "BEAM_ZDL_LEAN_IMPORTS" in pyarrow and "unset" in pyarrow


def test_without_the_setting_nothing_is_left_out():
    left_out, gcp, pyarrow = _probe(lean=False)
    assert "pyarrow" in left_out
    assert gcp == "True"
    assert pyarrow == "imported"
