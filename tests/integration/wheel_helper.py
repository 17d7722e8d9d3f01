#!/usr/bin/env python3
"""Test helper for the build tests: a vendored wheel made offline.

  wheel_helper.py DIR GREETING    writes DIR/greet-1.0-py3-none-any.whl, a package
                                  "greet" whose hello() returns GREETING
"""
import base64, hashlib, sys, zipfile

out, greeting = sys.argv[1], sys.argv[2]
files = {
    "greet/__init__.py": "def hello():\n    return %r\n" % greeting,
    "greet-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: greet\nVersion: 1.0\n",
    "greet-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: loom\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
rec = ["%s,sha256=%s,%d" % (n, base64.urlsafe_b64encode(hashlib.sha256(c.encode()).digest())
                            .rstrip(b"=").decode(), len(c)) for n, c in files.items()]
files["greet-1.0.dist-info/RECORD"] = "\n".join(rec + ["greet-1.0.dist-info/RECORD,,"]) + "\n"
with zipfile.ZipFile(out + "/greet-1.0-py3-none-any.whl", "w") as z:
    for n, c in files.items():
        z.writestr(zipfile.ZipInfo(n, (1980, 1, 1, 0, 0, 0)), c)
