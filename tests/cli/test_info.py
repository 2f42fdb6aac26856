"""`clipsearch info` and `errors` through click's CliRunner."""

from __future__ import annotations

import json


def test_info_and_errors_json(run, indexed, tiny_model):
    (indexed / "bad.jpg").write_text("<html><body>not an image</body></html>")
    run("index", indexed)
    info = json.loads(run("info", "--json").output)
    assert info["count"] == 12 and info["dim"] == 512 and info["index_type"] == "flat"
    assert info["model"] == tiny_model and "pretrained" in info
    errors = json.loads(run("errors", "--json").output)
    assert errors == [
        {
            "path": str(indexed / "bad.jpg"),
            "reason": "not an image (an HTML page)",
            "at": errors[0]["at"],
        }
    ]
    assert "bad.jpg: not an image" in run("errors").output
    assert "count" in run("info").output
