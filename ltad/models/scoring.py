"""The whole scoring path as one module: image batch -> anomaly maps, image scores, predicted classes.

`ScoringGraph` is what both deployable formats run: `ltad predict` calls it on a torch export and
`ltad export --format onnx` traces it into one ONNX graph (encoder included), so both give the same
numbers by construction. Its input is a batch already resized to the model's square image size with
values in [0, 1] (`ltad.inference.predictor.preprocess` does that, once, for both formats); the encoder's
mean/std normalisation happens inside. Always the predicted class (there is no ground truth when
deployed), and the text embeddings and standardisation statistics are the trained buffers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ltad.models.ltad import LTAD

OUTPUTS = ("anomaly_map", "pred_score", "pred_class")


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
