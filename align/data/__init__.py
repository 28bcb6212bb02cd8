"""The data layer: read sources (local files or hub ids), normalise chat formats, validate, mix.

    from align.data import DataMixture, DataSource, load_mixture
    mixture = DataMixture(kind="sft", sources=[DataSource("HuggingFaceH4/ultrachat_200k", train_split="train_sft",
                                                          test_split="test_sft", weight=0.5)])
    datasets, report = load_mixture(mixture)   # DatasetDict(train, test), DataReport
    report.as_dict()                           # counts per source and drop reason, for run.json
"""

from .errors import DROP_REASONS, DataError
from .formats import FEATURES
from .mixing import load_mixture
from .report import DataReport
from .spec import DataMixture, DataSource

__all__ = ["DataError", "DataMixture", "DataReport", "DataSource", "DROP_REASONS", "FEATURES", "load_mixture"]
