"""The whole scoring path as one module: image batch -> anomaly maps, image scores, predicted classes.

`ScoringGraph` is what every deployable format runs: `ltad predict` calls it on a torch export and
`ltad export --format onnx` traces it (inside `DeployGraph`) into one ONNX graph, encoder included, so
the formats give the same numbers by construction. Its input is a batch already resized to the
model's square image size with values in [0, 1]; the encoder's mean/std normalisation happens inside.
Always the predicted class (there is no ground truth when deployed), and the text embeddings and
standardisation statistics are the trained buffers.

`DeployGraph` is what the ONNX and OpenVINO exports hold: uint8 RGB images N x S x S x 3 in, the
/255 scaling and the per-class decision inside (thresholds and normalisation as per-class tables), so a
runtime needs no Python around it. The decision is `ltad.inference.export.decide` and the normalised
score `ltad.eval.normalise.normalise`, restated on tensors (models/ imports neither; the tests compare).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ltad.models.ltad import LTAD

OUTPUTS = ("anomaly_map", "pred_score", "pred_class")
DEPLOY_INPUT = "images"
DEPLOY_OUTPUTS = (
    "anomaly_map",
    "pred_score",
    "pred_class",
    "pred_score_normalised",
    "threshold",
    "pred_anomalous",
    "anomaly_map_normalised",
)
"""The deployed graph's outputs, in order (export.json `onnx.outputs` describes each)."""
DECISION_TABLES = ("ltad_threshold", "ltad_below_span", "ltad_above_span")
"""Names of the per-class decision tables in the deployed graph (C float32 each): what `ltad calibrate`
rewrites in a copy of an ONNX or OpenVINO export."""


class ScoringGraph(nn.Module):
    """images B x 3 x S x S in [0, 1] -> (anomaly maps B x S x S, image scores B, class ids B int64)."""

    def __init__(self, model: LTAD) -> None:
        super().__init__()
        if not bool(model.text_ready) or not bool(model.stats_ready):
            raise RuntimeError("the model has no cached text or standardisation statistics: train it first")
        self.model = model.eval()
        self.size = model.cfg.encoder.image_size

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = self.model
        enc = m.encoder
        x = (images.float() - enc.mean) / enc.std
        outs: list[torch.Tensor] = []
        hooks = [mod.register_forward_hook(lambda _m, _i, o: outs.append(o)) for mod, _ in enc._taps]
        try:
            global_emb = enc.clip.encode_image(x)
        finally:
            for h in hooks:
                h.remove()
        patches = torch.cat([enc._to_map(o.float()) for o in outs], dim=1)
        logits = F.normalize(global_emb.float(), dim=-1) @ m.text_class.T
        cls = logits.argmax(dim=-1)  # softmax is monotonic: the same class as LTAD.predict_class
        s_rec, s_sem = m.raw_scores(patches, cls)
        st = m.stats
        fused = m.fuse_scores((s_rec - st[0]) / st[1], (s_sem - st[2]) / st[3], patches, cls)
        maps, scores = m.to_maps(fused, (self.size, self.size))
        return maps, scores, cls


class DeployGraph(nn.Module):
    """uint8 images B x S x S x 3 (RGB) -> `DEPLOY_OUTPUTS`: the scoring path plus the per-class decision.

    `threshold`, `below_span`, `above_span` (C each) are, per class, the decision threshold and the raw
    distances that map to 0.5 below and above it (threshold - min, max - threshold of the class's
    normalisation, at least 1e-12). An image is anomalous when its score >= its predicted class's
    threshold; its normalised score is 0.5 + 0.5 (score - threshold) / span, clipped to [0, 1]."""

    def __init__(
        self,
        scoring: ScoringGraph,
        threshold: torch.Tensor,
        below_span: torch.Tensor,
        above_span: torch.Tensor,
    ) -> None:
        super().__init__()
        self.scoring = scoring
        self.size = scoring.size
        for name, table in zip(DECISION_TABLES, (threshold, below_span, above_span)):
            self.register_buffer(name, table.detach().to(torch.float32).reshape(-1).clone())

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = images.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        maps, scores, cls = self.scoring(x)
        t, below, above = (getattr(self, name)[cls] for name in DECISION_TABLES)
        normalised = self._normalise(scores, t, below, above)
        t3, below3, above3 = (v[:, None, None] for v in (t, below, above))
        return (
            maps,
            scores,
            cls,
            normalised,
            t,
            scores >= t,
            self._normalise(maps, t3, below3, above3),
        )

    @staticmethod
    def _normalise(
        raw: torch.Tensor, t: torch.Tensor, below: torch.Tensor, above: torch.Tensor
    ) -> torch.Tensor:
        span = torch.where(raw < t, below, above)
        return ((raw - t) / span * 0.5 + 0.5).clamp(0.0, 1.0)
