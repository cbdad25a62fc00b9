"""SID (SUPERB): VoxCeleb1 identification split (1,251 speakers), accuracy.

Real data, as s3prl's `voxceleb1` recipe: random 8 s training crops (`max_timestep`
128000), batches of 8 x accumulation 4, the linear probe (`Linear(D, 256)`, mean,
`Linear(256, speakers)`), whole utterances in evaluation. The embedded profile keeps whole
utterances and one linear layer after the mean.
"""

from __future__ import annotations

from torch import nn

from tera.corpora import voxceleb1
from tera.downstream.base import max_timestep_crops
from tera.downstream.classification import ClassificationTask, LinearProbe
from tera.downstream.embedded_heads import PooledLinearHead


class SidTask(ClassificationTask):
    """Speaker identification: the speaker of each utterance, among the training speakers."""

    name, header = "sid", "SID Acc %"
    aliases = ("voxceleb1",)
    corpus_part = "voxceleb1"
    seconds_per_step = 0.007

    def examples(self, split):
        return voxceleb1.load_identification(self.root, split)

    def prepare(self, train) -> None:
        self.labels = sorted({u.label for u in train})

    def epoch(self, train, seed):
        return max_timestep_crops(train, self.cfg["datarc"], seed)

    def build_head(self, dim) -> nn.Module:
        projector = self.cfg["modelrc"].get("projector_dim")
        if not projector:
            return PooledLinearHead(dim, len(self.labels))
        return LinearProbe(dim, int(projector), len(self.labels))
