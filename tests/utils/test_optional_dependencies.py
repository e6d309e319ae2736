"""Without detectron2 the package imports, registers nothing, and its pure parts work."""
import subprocess
import sys

from tests.d2_helpers import ROOT

_WITHOUT_DETECTRON2 = """
import sys
sys.modules["detectron2"] = None  # what an absent package looks like to the import system
import sed_d2
import sed_d2.data.datasets
from sed_d2.data.datasets.builtin_meta import class_names
from sed_d2.models import SEDDecoder
assert not sed_d2.HAS_DETECTRON2
assert not hasattr(sed_d2, "meta_arch") and not hasattr(sed_d2.data.datasets, "builtin")
print(len(class_names("ade20k_150.json")))
"""


def test_package_imports_without_detectron2():
    proc = subprocess.run([sys.executable, "-c", _WITHOUT_DETECTRON2], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["150"]
