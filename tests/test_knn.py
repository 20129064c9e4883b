"""The k-NN backend that built each graph is recorded in metrics.json, in every mode that builds one."""
from __future__ import annotations

import json

import pytest

import reclip

pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.mark.parametrize("mode, settings, expected", [
    ("reclip", {"epochs": 2, "knn_backend": "faiss"}, {"t": "faiss-flat", "v": "faiss-flat"}),
    ("v-only", {"epochs": 1, "knn_backend": "faiss"}, {"v": "faiss-flat"}),
    ("t-only", {"epochs": 1}, {"t": "torch"}),
    ("transductive", {"knn_backend": "faiss"}, "faiss-flat"),
    ("transclip", {}, "torch"),
])
def test_metrics_json_records_the_knn_backend_of_every_graph(domain, tmp_path, mode, settings, expected):
    model = reclip.load_model("tiny", device="cpu")
    dataset = reclip.load_dataset(str(domain), transform=model.preprocess)
    reclip.ReCLIP(model, mode=mode, k=10, workers=0, **settings).fit(dataset, out=tmp_path / "out")
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    if mode in ("transductive", "transclip"):
        assert metrics["propagation" if mode == "transductive" else "transclip"]["knn_backend"] == expected
    else:
        assert [epoch["knn_backend"] for epoch in metrics["epochs"]] == [expected] * settings["epochs"]
