import subprocess
import sys

import compressor


def test_public_surface_is_deliberate():
    assert sorted(compressor.__all__) == ["CompressResult", "CompressorError", "ToolchainError", "__version__",
                                          "compress"]
    assert callable(compressor.compress)


def test_exporters_import_first_without_a_cycle():
    code = "import exporters.onnx, compressor; assert callable(compressor.compress)"
    subprocess.run([sys.executable, "-c", code], check=True)
